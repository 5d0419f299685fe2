//! The executor: runs inside the sandbox and executes tool calls.
//!
//! The host starts `agentkimi sandbox-exec --root <worktree>` inside bwrap
//! and speaks the line protocol of [`crate::protocol`] with it: one
//! [`ExecRequest`] per stdin line, one [`ExecResponse`] per stdout line, in
//! order. This module owns that loop ([`run`]) and the dispatch from a tool
//! name to the code that runs it ([`Executor::handle`]); each tool lives in
//! its own submodule.
//!
//! The executor is deliberately plain synchronous std code. It runs once per
//! turn inside a memory-limited sandbox, and an async runtime would buy
//! nothing here: requests arrive one at a time and each is answered before
//! the next is read. The only concurrency is inside Bash, which has to watch
//! a child process, a pipe and a deadline at once.
//!
//! Every tool failure becomes `ok: false` with a message the model can act
//! on; nothing a tool call does can end the loop except the host closing
//! stdin. A panic inside a tool is caught and reported the same way, because
//! losing the executor mid-turn would cost the model all its shell state.

mod bash;
mod edit;
mod fsutil;
mod glob;
mod grep;
mod html;
mod input;
mod ls;
mod read;
mod text;
mod webfetch;
mod write;

use std::{
    io::{self, BufRead, Write},
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Context as _;

use crate::protocol::{ExecMeta, ExecRequest, ExecResponse};

/// Names of the tools [`Executor::handle`] runs, in the order they are
/// listed to the model in error messages.
const TOOL_NAMES: &[&str] = &[
    "Read",
    "Write",
    "Edit",
    "MultiEdit",
    "Glob",
    "Grep",
    "LS",
    "Bash",
    "BashOutput",
    "KillShell",
    "WebFetch",
];

/// Lists the tool names [`Executor::handle`] accepts.
pub fn tool_names() -> &'static [&'static str] {
    TOOL_NAMES
}

/// What a tool produced when it ran: the text for the model and the facts
/// the host records in [`ExecMeta`] (the duration is added by
/// [`Executor::handle`]).
#[derive(Debug, Default)]
struct Outcome {
    output: String,
    exit_code: Option<i32>,
    truncated: bool,
    timed_out: bool,
}

impl Outcome {
    /// An outcome that is only text, with nothing cut.
    fn text(output: impl Into<String>) -> Self {
        Outcome {
            output: output.into(),
            ..Outcome::default()
        }
    }
}

/// A tool call that could not do what was asked. The message is shown to
/// the model as is, so it says what went wrong and what to do instead.
#[derive(Debug)]
struct ToolError(String);

impl ToolError {
    fn new(message: impl Into<String>) -> Self {
        ToolError(message.into())
    }
}

type ToolResult = Result<Outcome, ToolError>;

/// Runs tool calls against one worktree and keeps the state that lives
/// between calls: the shell's working directory and the background shells.
pub struct Executor {
    root: PathBuf,
    shell: bash::ShellState,
}

impl Executor {
    /// Creates an executor for the worktree at `root`, which should be an
    /// absolute path. Relative paths in tool input resolve against it, and
    /// the first Bash command runs in it.
    pub fn new(root: PathBuf) -> Self {
        let shell = bash::ShellState::new(root.clone());
        Executor { root, shell }
    }

    /// Runs one tool call and returns its answer, with the request's `id`.
    ///
    /// Never fails: unknown tools, bad input and tool errors all come back
    /// as `ok: false` with an explanation in `output`.
    pub fn handle(&mut self, req: ExecRequest) -> ExecResponse {
        let started = Instant::now();
        let result = panic::catch_unwind(AssertUnwindSafe(|| self.dispatch(&req))).unwrap_or_else(
            |payload| {
                let what = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown cause".to_string());
                Err(ToolError::new(format!(
                    "internal error in the executor while running {}: {what}; \
                     the call may have partly run, check its effects before retrying",
                    req.tool
                )))
            },
        );
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);

        match result {
            Ok(out) => ExecResponse {
                id: req.id,
                ok: true,
                output: out.output,
                meta: ExecMeta {
                    exit_code: out.exit_code,
                    duration_ms,
                    truncated: out.truncated,
                    timed_out: out.timed_out,
                },
            },
            Err(ToolError(message)) => ExecResponse {
                id: req.id,
                ok: false,
                output: message,
                meta: ExecMeta {
                    duration_ms,
                    ..ExecMeta::default()
                },
            },
        }
    }

    fn dispatch(&mut self, req: &ExecRequest) -> ToolResult {
        let root = self.root.as_path();
        let input = &req.input;
        match req.tool.as_str() {
            "Read" => read::run(root, input),
            "Write" => write::run(root, input),
            "Edit" => edit::run_edit(root, input),
            "MultiEdit" => edit::run_multi_edit(root, input),
            "Glob" => glob::run(root, input),
            "Grep" => grep::run(root, input),
            "LS" => ls::run(root, input),
            "Bash" => self.shell.run(input),
            "BashOutput" => self.shell.output(input),
            "KillShell" => self.shell.kill(input),
            "WebFetch" => webfetch::run(input),
            other => Err(ToolError::new(format!(
                "unknown tool {other}; available: {}",
                TOOL_NAMES.join(", ")
            ))),
        }
    }
}

/// Serves the executor protocol on stdin/stdout for the worktree at `root`.
///
/// Reads one [`ExecRequest`] JSON object per line (blank lines are skipped),
/// answers each with one [`ExecResponse`] line, and flushes after every
/// answer so the host never waits on a buffer. A line that is not a valid
/// request is answered with id 0 and `ok: false`, and the loop goes on.
///
/// # Errors
///
/// Returns an error when stdin cannot be read or stdout cannot be written
/// for a reason other than the host having gone away; returns `Ok` at the
/// end of stdin or when stdout's reader has closed it.
pub fn run(root: &Path) -> anyhow::Result<()> {
    // In allowlist mode the host mounts its egress proxy's socket and names
    // it here; tools reach it through a forwarder on this sandbox's loopback.
    if let Some(socket) = std::env::var_os(crate::sandbox::proxy::SOCKET_ENV)
        && let Err(e) = crate::sandbox::proxy::spawn_forwarder(Path::new(&socket))
    {
        eprintln!(
            "cannot start the proxy forwarder on 127.0.0.1:{}: {e}; network requests will fail",
            crate::sandbox::proxy::SANDBOX_PORT
        );
    }
    let mut executor = Executor::new(root.to_path_buf());
    serve(&mut executor, io::stdin().lock(), io::stdout().lock())
}

/// The loop of [`run`] over any reader and writer.
fn serve(
    executor: &mut Executor,
    mut input: impl BufRead,
    mut output: impl Write,
) -> anyhow::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .context("reading a request from stdin")?;
        if n == 0 {
            return Ok(());
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }

        let response = match serde_json::from_slice::<ExecRequest>(&line) {
            Ok(req) => executor.handle(req),
            Err(e) => ExecResponse {
                id: 0,
                ok: false,
                output: format!(
                    "malformed request line ({e}); expected a JSON object \
                     {{\"id\": <integer>, \"tool\": <string>, \"input\": <object>}}"
                ),
                meta: ExecMeta::default(),
            },
        };

        let written = serde_json::to_writer(&mut output, &response)
            .map_err(io::Error::from)
            .and_then(|()| output.write_all(b"\n"))
            .and_then(|()| output.flush());
        match written {
            Ok(()) => {}
            // The host closed our stdout: it is done with us, so stop quietly.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e).context("writing a response to stdout"),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn call(ex: &mut Executor, tool: &str, input: serde_json::Value) -> ExecResponse {
        ex.handle(ExecRequest {
            id: 7,
            tool: tool.to_string(),
            input,
        })
    }

    #[test]
    fn unknown_tool_lists_available_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut ex = Executor::new(dir.path().to_path_buf());
        let resp = call(&mut ex, "Frobnicate", json!({}));
        assert_eq!(resp.id, 7);
        assert!(!resp.ok);
        assert_eq!(
            resp.output,
            "unknown tool Frobnicate; available: Read, Write, Edit, MultiEdit, Glob, Grep, LS, \
             Bash, BashOutput, KillShell, WebFetch"
        );
    }

    #[test]
    fn bad_input_names_field_and_type() {
        let dir = tempfile::tempdir().unwrap();
        let mut ex = Executor::new(dir.path().to_path_buf());

        let resp = call(&mut ex, "Read", json!({}));
        assert!(!resp.ok);
        assert_eq!(
            resp.output,
            "Read: missing required field `file_path` (a string)"
        );

        let resp = call(&mut ex, "Read", json!({"file_path": "a", "offset": "10"}));
        assert!(!resp.ok);
        assert_eq!(
            resp.output,
            "Read: field `offset` must be a non-negative integer, got the string \"10\""
        );

        let resp = call(&mut ex, "Read", json!("a.txt"));
        assert!(!resp.ok);
        assert!(resp.output.starts_with("Read: input must be a JSON object"));
    }

    #[test]
    fn serve_answers_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "hi\n").unwrap();
        let mut ex = Executor::new(dir.path().to_path_buf());
        let input = concat!(
            "{\"id\": 1, \"tool\": \"Read\", \"input\": {\"file_path\": \"a.txt\"}}\n",
            "\n",
            "not json\n",
            "{\"id\": 2, \"tool\": \"Nope\", \"input\": {}}",
        );
        let mut out = Vec::new();
        serve(&mut ex, input.as_bytes(), &mut out).unwrap();

        let responses: Vec<ExecResponse> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(responses.len(), 3);
        assert_eq!((responses[0].id, responses[0].ok), (1, true));
        assert_eq!(responses[0].output, "     1\thi");
        assert_eq!((responses[1].id, responses[1].ok), (0, false));
        assert!(responses[1].output.starts_with("malformed request line ("));
        assert_eq!((responses[2].id, responses[2].ok), (2, false));
    }

    #[test]
    fn tool_names_match_dispatch() {
        let dir = tempfile::tempdir().unwrap();
        let mut ex = Executor::new(dir.path().to_path_buf());
        for name in tool_names() {
            let resp = call(&mut ex, name, json!({}));
            assert!(
                !resp.output.starts_with("unknown tool"),
                "{name} is listed but not dispatched"
            );
        }
    }
}
