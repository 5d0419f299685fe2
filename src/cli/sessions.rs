//! `agentkimi sessions list|show|diff|end|gc`: the sessions in the store,
//! seen and tidied from the terminal.
//!
//! `end` goes through `session::Sessions` like `agentkimi_end`, so it
//! commits what is left and keeps the branch. `gc` is the server's own
//! start-up housekeeping (`Sessions::gc`), run on demand: it removes only
//! what no session needs, and never a branch or a live session's worktree.

use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use agentkimi::{
    config::Config,
    llm::Usage,
    session::Sessions,
    store::{SessionRecord, SessionState, Store},
    workspace::{self, Workspace},
};

use super::{LogTo, Paint, init_logging, runtime};

/// What to do with sessions.
#[derive(Subcommand)]
pub enum SessionsCommand {
    /// List sessions, most recent first.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one session: its turns, with token usage per turn and in total.
    Show {
        /// The session id (`kimi-…`).
        id: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the session's diff from its base commit to its worktree.
    Diff {
        /// The session id.
        id: String,
    },
    /// End a session: commit what is left, remove the worktree, keep the
    /// branch.
    End {
        /// The session id.
        id: String,
    },
    /// Remove worktree directories no session needs (never branches or
    /// active sessions).
    Gc {
        /// Only say what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Runs a `sessions` subcommand.
///
/// # Errors
///
/// Unknown session, a store that cannot be opened, or a git failure.
pub fn sessions(command: SessionsCommand) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let _guard = init_logging(&config, LogTo::FileOnly);
    let paint = Paint::for_stdout();
    match command {
        SessionsCommand::List { json } => {
            let store = open_store(&config)?;
            list(&store, json)
        }
        SessionsCommand::Show { id, json } => {
            let store = open_store(&config)?;
            show(&store, &id, json, paint)
        }
        SessionsCommand::Diff { id } => {
            let store = open_store(&config)?;
            let rec = find(&store, &id)?;
            let ws = workspace_of(&rec)?;
            if rec.state == SessionState::Ended || !ws.worktree.exists() {
                bail!(
                    "session {id} has ended and its worktree is gone; its work is on branch {}: \
                     see it with `{} diff {}..{}`",
                    ws.branch,
                    git_command(&ws),
                    &ws.base_commit[..ws.base_commit.len().min(12)],
                    ws.branch
                );
            }
            let diff = workspace::diff(&ws).map_err(|e| anyhow::anyhow!("{e}"))?;
            if diff.text.is_empty() {
                eprintln!("session {id} has no changes");
            }
            print!("{}", paint.diff(&diff.text));
            Ok(())
        }
        SessionsCommand::End { id } => runtime()?.block_on(async move {
            let sessions = Arc::new(Sessions::open(config)?);
            let r = sessions
                .end(&id)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            println!("{}", r.render());
            Ok(())
        }),
        SessionsCommand::Gc { dry_run } => runtime()?.block_on(async move {
            let sessions = Sessions::open(config)?;
            let report = sessions
                .gc(dry_run)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let verb = if dry_run { "would remove" } else { "removed" };
            for line in &report.removed {
                println!("{verb} {line}");
            }
            for line in &report.failed {
                eprintln!("could not remove {line}");
            }
            if report.removed.is_empty() && report.failed.is_empty() {
                println!("nothing to remove");
            }
            if !report.failed.is_empty() {
                bail!("{} entries could not be removed", report.failed.len());
            }
            Ok(())
        }),
    }
}

fn open_store(config: &Config) -> anyhow::Result<Store> {
    if !config.db_path().exists() {
        bail!(
            "no sessions yet: {} does not exist (is AGENTKIMI_HOME the one the server uses?)",
            config.db_path().display()
        );
    }
    Store::open(&config.db_path())
}

fn find(store: &Store, id: &str) -> anyhow::Result<SessionRecord> {
    store.session(id)?.with_context(|| {
        format!("unknown session {id:?}; `agentkimi sessions list` shows the sessions")
    })
}

fn workspace_of(rec: &SessionRecord) -> anyhow::Result<Workspace> {
    serde_json::from_value(rec.workspace.clone())
        .with_context(|| format!("session {} has a corrupt workspace record", rec.id))
}

fn git_command(ws: &Workspace) -> String {
    match &ws.repo_root {
        Some(root) => format!("git -C {}", root.display()),
        None => format!("git --git-dir {}", ws.gitdir.display()),
    }
}

fn time_of(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second]Z"
    ))
    .unwrap_or_else(|_| ms.to_string())
}

fn list(store: &Store, json: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for id in store.session_ids()? {
        let Some(rec) = store.session(&id)? else {
            continue;
        };
        let branch = workspace_of(&rec)
            .map(|ws| ws.branch)
            .unwrap_or_else(|_| "?".into());
        rows.push((rec, branch));
    }
    if json {
        let v: Vec<Value> = rows
            .iter()
            .map(|(r, branch)| {
                json!({
                    "session_id": r.id,
                    "state": r.state.as_str(),
                    "turns": r.turns,
                    "model": r.model,
                    "branch": branch,
                    "workdir": r.workdir,
                    "created_at": time_of(r.created_at),
                    "updated_at": time_of(r.updated_at),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no sessions");
        return Ok(());
    }
    println!(
        "{:<17}  {:<6}  {:>5}  {:<20}  workdir",
        "SESSION", "STATE", "TURNS", "UPDATED"
    );
    for (r, _) in rows {
        println!(
            "{:<17}  {:<6}  {:>5}  {:<20}  {}",
            r.id,
            r.state.as_str(),
            r.turns,
            time_of(r.updated_at),
            r.workdir.as_deref().unwrap_or("(throwaway)")
        );
    }
    Ok(())
}

fn show(store: &Store, id: &str, json: bool, paint: Paint) -> anyhow::Result<()> {
    let rec = find(store, id)?;
    let ws = workspace_of(&rec)?;
    let mut total = Usage::default();
    let mut turns = Vec::new();
    for n in 1..=rec.turns {
        let Some(t) = store.turn(id, n)? else {
            continue;
        };
        let usage: Usage = serde_json::from_value(t.usage.clone()).unwrap_or_default();
        total.add(&usage);
        turns.push((t, usage));
    }
    if json {
        let v = json!({
            "session_id": rec.id,
            "state": rec.state.as_str(),
            "model": rec.model,
            "branch": ws.branch,
            "worktree": ws.worktree,
            "workdir": rec.workdir,
            "created_at": time_of(rec.created_at),
            "updated_at": time_of(rec.updated_at),
            "usage": total,
            "turns": turns.iter().map(|(t, u)| json!({
                "turn": t.turn,
                "status": t.status,
                "prompt": t.prompt,
                "summary": t.summary,
                "steps": t.steps,
                "tool_calls": t.tool_calls.as_array().map_or(0, Vec::len),
                "usage": u,
                "note": t.note,
                "started_at": time_of(t.started_at),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{} · {} · model {}",
        paint.bold(&rec.id),
        rec.state.as_str(),
        rec.model
    );
    println!("branch   {} ({})", ws.branch, git_command(&ws));
    println!("worktree {}", ws.worktree.display());
    println!(
        "started  {} · updated {}",
        time_of(rec.created_at),
        time_of(rec.updated_at)
    );
    for (t, u) in &turns {
        let first_line = t.prompt.lines().next().unwrap_or("");
        println!(
            "\n{} {} · {} step(s) · {} tool call(s) · tokens {} in / {} out / {} cached",
            paint.bold(&format!("Turn {}", t.turn)),
            t.status,
            t.steps,
            t.tool_calls.as_array().map_or(0, Vec::len),
            u.input_tokens,
            u.output_tokens,
            u.cache_read_input_tokens
        );
        println!("  asked: {first_line}");
        if let Some(line) = t.summary.lines().next() {
            println!("  said:  {line}");
        }
        if let Some(note) = &t.note {
            println!("  note:  {note}");
        }
    }
    println!(
        "\nSession tokens: {} in / {} out / {} cached",
        total.input_tokens, total.output_tokens, total.cache_read_input_tokens
    );
    Ok(())
}
