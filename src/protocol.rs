//! The wire protocol between the host and the executor.
//!
//! The host writes one [`ExecRequest`] per line to the executor's stdin and
//! reads one [`ExecResponse`] per line from its stdout. The executor answers
//! requests in order; an `id` ties each answer to its request so the host can
//! notice a desynchronised stream and kill the sandbox rather than guess.
//!
//! Everything in this module crosses the sandbox boundary, so the host treats
//! every [`ExecResponse`] as untrusted data: it is shown to the model and to
//! the user, never interpreted as a command.

use serde::{Deserialize, Serialize};

/// Largest line the host accepts from the executor. A response longer than
/// this means the executor is broken or hostile; the host ends the sandbox.
pub const MAX_RESPONSE_LINE: usize = 4 * 1024 * 1024;

/// One tool call for the executor to run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Sequence number chosen by the host, echoed in the response.
    pub id: u64,
    /// Tool name as offered to the model (`Read`, `Write`, `Bash`, ...).
    pub tool: String,
    /// The tool input exactly as the model sent it (already checked by the
    /// host-side gate).
    pub input: serde_json::Value,
}

/// The executor's answer to one [`ExecRequest`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecResponse {
    /// The `id` of the request this answers.
    pub id: u64,
    /// `false` when the tool call failed; `output` then says why, in words
    /// the model can act on.
    pub ok: bool,
    /// Text returned to the model as the tool result.
    pub output: String,
    /// Facts about the call for the host's records.
    #[serde(default)]
    pub meta: ExecMeta,
}

/// Facts about one executed tool call, recorded by the host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecMeta {
    /// Exit code of a shell command, when one ran to completion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Wall-clock time the executor spent on the call.
    #[serde(default)]
    pub duration_ms: u64,
    /// Whether output was cut to fit the output cap.
    #[serde(default)]
    pub truncated: bool,
    /// Whether a shell command was killed because it hit its timeout.
    #[serde(default)]
    pub timed_out: bool,
}
