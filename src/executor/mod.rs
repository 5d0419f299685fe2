//! The executor: runs inside the sandbox and executes tool calls.
