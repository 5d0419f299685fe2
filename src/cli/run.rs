//! `agentkimi run "task"`: one turn in the terminal.
//!
//! Progress goes to stderr: on a terminal, a spinner whose line shows the
//! current step or tool call, with each finished tool call printed above
//! it; elsewhere (a pipe, a CI log) one plain line per event. The result
//! goes to stdout — the summary and the diff, or with `--json` the same
//! `TurnResult` an MCP client gets — so `agentkimi run … --json | jq` works.
//!
//! Ctrl-C cancels the turn the way an MCP cancellation does: the turn stops,
//! its work is committed to the session branch, and the result says so.

use std::{
    io::{IsTerminal, Write},
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use agentkimi::{
    agent::TurnStatus,
    config::Config,
    session::{Progress, Sessions, TurnResult},
};

use super::{LogTo, Paint, init_logging, runtime};

/// Runs one turn and prints its result. The exit code is 0 when the turn
/// completed and 1 otherwise (the result is printed either way).
///
/// # Errors
///
/// Bad settings or workdir, no key, no sandbox: whatever stops the turn
/// from starting.
pub fn run(task: &str, workdir: Option<PathBuf>, json: bool) -> anyhow::Result<ExitCode> {
    let config = Config::from_env()?;
    let _guard = init_logging(&config, LogTo::FileOnly);
    let workdir = workdir
        .map(|dir| {
            std::fs::canonicalize(&dir).with_context(|| {
                format!(
                    "--workdir {} does not exist; pass a directory inside a git repository",
                    dir.display()
                )
            })
        })
        .transpose()?;
    let workdir = workdir.as_ref().map(|d| d.display().to_string());

    let result = runtime()?.block_on(async move {
        let sessions = Arc::new(Sessions::open(config)?);
        let (bar, progress) = progress_display();
        let cancel = CancellationToken::new();
        let on_interrupt = cancel.clone();
        let bar2 = bar.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                let line = "Interrupted: stopping the turn and saving its work…";
                match &bar2 {
                    Some(bar) => bar.println(line),
                    None => eprintln!("{line}"),
                }
                on_interrupt.cancel();
            }
        });
        let result = sessions
            .start(task, workdir.as_deref(), cancel, progress)
            .await;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        result.map_err(|e| anyhow::anyhow!("{e}"))
    })?;

    let mut out = std::io::stdout().lock();
    if json {
        let text = serde_json::to_string_pretty(&result)?;
        writeln!(out, "{text}").or_else(ignore_broken_pipe)?;
    } else {
        write!(out, "{}", render(&result, Paint::for_stdout())).or_else(ignore_broken_pipe)?;
    }
    Ok(if result.status == TurnStatus::Completed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A reader that closed the pipe (`| head`) has what it wanted.
fn ignore_broken_pipe(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(e)
    }
}

/// The spinner on a terminal, plain lines elsewhere.
fn progress_display() -> (Option<ProgressBar>, Progress) {
    if !std::io::stderr().is_terminal() {
        return (None, Arc::new(|line: String| eprintln!("{line}")));
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner:.cyan} {elapsed:>4} {wide_msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar.set_message("Starting the session…");
    let shown = bar.clone();
    let progress: Progress = Arc::new(move |line: String| {
        // Model steps replace each other on the spinner line; tool calls
        // are history worth keeping on screen.
        if !line.starts_with("Kimi is thinking") && !line.starts_with("Retrying") {
            shown.println(format!("  {line}"));
        }
        shown.set_message(line);
    });
    (Some(bar), progress)
}

/// The result for a person: what happened, the summary, the files, the
/// diff, and how to continue.
fn render(r: &TurnResult, paint: Paint) -> String {
    let mut s = String::new();
    let status = match r.status {
        TurnStatus::Completed => paint.wrap("32", r.status.as_str()),
        _ => paint.wrap("33", r.status.as_str()),
    };
    s.push_str(&format!(
        "{} · {status} · {} step(s) · {} tool call(s) · {:.1} s · {} in / {} out / {} cached \
         tokens\n",
        paint.bold(&r.session_id),
        r.steps,
        r.tool_calls.len(),
        r.duration_ms as f64 / 1000.0,
        r.usage.input_tokens,
        r.usage.output_tokens,
        r.usage.cache_read_input_tokens,
    ));
    if let Some(note) = &r.note {
        s.push_str(&format!("{} {note}\n", paint.wrap("33", "Note:")));
    }
    s.push_str(&format!("\n{}\n", paint.bold("Summary")));
    s.push_str(if r.summary.is_empty() {
        "(Kimi wrote no summary)"
    } else {
        &r.summary
    });
    s.push('\n');
    if !r.files_changed.is_empty() {
        s.push_str(&format!(
            "\n{} ({})\n",
            paint.bold("Files changed"),
            r.files_changed.len()
        ));
        for f in &r.files_changed {
            s.push_str(&format!(
                "  {:<9} {} ({}{})\n",
                f.status,
                f.path,
                paint.wrap("32", &format!("+{}", f.additions)),
                paint.wrap("31", &format!(" -{}", f.deletions)),
            ));
        }
        s.push_str(&format!("\n{}\n", paint.bold("Diff")));
        s.push_str(&paint.diff(&r.diff));
        if !r.diff.ends_with('\n') {
            s.push('\n');
        }
    } else {
        s.push_str("\nNo files changed.\n");
    }
    s.push_str(&format!(
        "\nThe work is on branch {} (worktree {}).\nContinue it from an MCP client with \
         agentkimi_send, see it with `agentkimi sessions diff {id}`, and end it with \
         `agentkimi sessions end {id}`.\n",
        r.branch,
        r.worktree,
        id = r.session_id,
    ));
    s
}
