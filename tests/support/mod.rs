//! Support code for the end-to-end tests: a scripted mock of the model API
//! ([`mock_model`]), a client that drives the real server over MCP stdio
//! ([`mcp`]), and git fixtures ([`git`]).
//!
//! Each module carries its own self-tests, which need neither the server nor
//! the network, so the harness is known to work before the tests that use
//! it can run.

// A toolkit shared by every test file that declares `mod support;`: a
// helper one file does not call is still used by another, so unused-item
// warnings here would be noise.
#![allow(dead_code)]

pub mod git;
pub mod mcp;
pub mod mock_model;
