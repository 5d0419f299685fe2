//! agentkimi: an MCP server that hands a coding task to Kimi, runs Kimi as an
//! autonomous agent whose every tool call executes inside a bubblewrap
//! sandbox over a git worktree, and returns Kimi's summary and the diff.
//!
//! The crate is split the way the design splits the product. On the host:
//! `mcp` (the MCP tools), `session` (start, send, end), `agent` (the turn
//! loop), `llm` (model providers), `tools` (what the model is offered, and
//! the host-side gate), `sandbox` (bwrap), `workspace` (git), `store`
//! (SQLite) and `config`; `reads` keeps the read-before-write rule and
//! `todos` the model's task list (TodoWrite, which the host answers
//! itself). Inside the sandbox: `executor`. The two sides share only the
//! wire types in `protocol`.

pub mod agent;
pub mod config;
pub mod executor;
pub mod llm;
pub mod mcp;
pub mod protocol;
pub mod reads;
pub mod sandbox;
pub mod session;
pub mod store;
pub mod todos;
pub mod tools;
pub mod workspace;
