//! agentkimi: an MCP server that hands a coding task to Kimi, runs Kimi as an
//! autonomous agent whose every tool call executes inside a bubblewrap
//! sandbox over a git worktree, and returns Kimi's summary and the diff.
//!
//! The crate is split the way the design splits the product: the host side
//! (`mcp`, `agent`, `llm`, `tools`, `sandbox`, `workspace`, `store`,
//! `config`) and the executor that runs inside the sandbox (`executor`),
//! which share only the wire types in `protocol`.

pub mod executor;
pub mod protocol;
pub mod workspace;
