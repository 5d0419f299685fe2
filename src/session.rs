//! Sessions: what `agentkimi_start`, `agentkimi_send` and `agentkimi_end` do,
//! independent of the transport that asked.
//!
//! A turn runs in its own task, detached from the request that started it:
//! if the request is dropped (a client that disconnects, a transport that
//! gives up), the turn still stops cleanly at its cancellation token and its
//! work is still committed and recorded. Nothing is lost because the caller
//! went away.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::sync::OnceCell;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    agent::{self, CommandRecord, ToolCallRecord, TurnContext, TurnEvent, TurnStatus},
    config::{Config, Network},
    llm::{Provider, Usage},
    sandbox::Profile,
    store::{SessionRecord, SessionState, Store, TurnRecord, now_ms},
    todos::{self, TodoItem},
    workspace::{self, Workspace},
};

mod fanout;

pub use fanout::{DiffPage, Launched, SessionList, SessionOptions, SessionStatus, SessionSummary};
use fanout::{FinishOnDrop, LiveTurn};

/// Largest diff returned inline in a result; a longer one is cut at a line
/// boundary and saved whole to a file.
pub const MAX_INLINE_DIFF: usize = 60_000;

/// Receives one progress line at a time.
pub type Progress = Arc<dyn Fn(String) + Send + Sync>;

/// Why a session operation failed. Each message names the cause and what the
/// caller can do.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The caller passed something unusable.
    #[error("{0}")]
    Invalid(String),
    /// The session exists but cannot take this request now.
    #[error("{0}")]
    Unavailable(String),
    /// The host failed; the message says what happened.
    #[error("{0}")]
    Internal(String),
}

impl From<anyhow::Error> for SessionError {
    fn from(e: anyhow::Error) -> Self {
        SessionError::Internal(format!("{e:#}"))
    }
}

/// One changed file in a result.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct FileChanged {
    /// Path relative to the repository root.
    pub path: String,
    /// `added`, `modified`, `deleted`, `renamed` or `typechange`.
    pub status: String,
    /// Lines added.
    pub additions: usize,
    /// Lines removed.
    pub deletions: usize,
}

/// The result of one turn, as returned to the caller.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct TurnResult {
    /// Session id; pass it to agentkimi_send and agentkimi_end.
    pub session_id: String,
    /// Turn number, from 1.
    pub turn: u32,
    /// How the turn ended.
    pub status: TurnStatus,
    /// Kimi's summary (its final message of the turn).
    pub summary: String,
    /// The test output Kimi quoted in its summary (its last fenced block).
    pub test_output: Option<String>,
    /// Unified diff of the session's work: base commit to working tree,
    /// untracked files included.
    pub diff: String,
    /// Whether `diff` was cut to fit the reply.
    pub diff_truncated: bool,
    /// Where the whole diff was saved when it was cut.
    pub diff_path: Option<String>,
    /// Files changed since the base commit.
    pub files_changed: Vec<FileChanged>,
    /// Branch holding the work.
    pub branch: String,
    /// The session's worktree on the host.
    pub worktree: String,
    /// Commit that recorded this turn's changes, if there were any.
    pub commit: Option<String>,
    /// Model calls made in the turn.
    pub steps: u32,
    /// Tool calls made in the turn, in order.
    pub tool_calls: Vec<ToolCallRecord>,
    /// Shell commands Kimi ran with Bash in the turn, with exit codes.
    pub commands: Vec<CommandRecord>,
    /// Kimi's todo list for the session, as it stands after the turn.
    pub todos: Vec<TodoItem>,
    /// Tokens used in the turn.
    pub usage: Usage,
    /// Tokens used by all of the session's turns so far, this one included.
    pub session_usage: Usage,
    /// Why the turn stopped early, if it did.
    pub note: Option<String>,
    /// Wall-clock time of the turn in milliseconds.
    pub duration_ms: u64,
}

/// The result of ending a session.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct EndResult {
    /// Session id.
    pub session_id: String,
    /// Always true once the call succeeds.
    pub ended: bool,
    /// Branch holding all the work.
    pub branch: String,
    /// Repository holding the branch: the user's repository, or the kept
    /// git dir of a scratch session.
    pub repository: String,
    /// Commits on the branch since the base commit.
    pub commits: usize,
    /// Whether the worktree directory was removed.
    pub worktree_removed: bool,
    /// What to do next, in words.
    pub message: String,
}

impl TurnResult {
    /// The result as text, for clients that show only text.
    pub fn render(&self) -> String {
        let mut s = format!(
            "Session {} · turn {} · {} · {} step(s) · {} tool call(s) · {:.1} s\nBranch: {} \
             (worktree {})\n",
            self.session_id,
            self.turn,
            self.status.as_str(),
            self.steps,
            self.tool_calls.len(),
            self.duration_ms as f64 / 1000.0,
            self.branch,
            self.worktree,
        );
        if let Some(note) = &self.note {
            s.push_str(&format!("Note: {note}\n"));
        }
        s.push_str("\n## Summary\n\n");
        s.push_str(if self.summary.is_empty() {
            "(Kimi wrote no summary)"
        } else {
            &self.summary
        });
        s.push_str(&format!(
            "\n\n## Files changed ({})\n\n",
            self.files_changed.len()
        ));
        for f in &self.files_changed {
            s.push_str(&format!(
                "- {} {} (+{} -{})\n",
                f.status, f.path, f.additions, f.deletions
            ));
        }
        if !self.tool_calls.is_empty() {
            s.push_str("\n## Tool calls\n\n");
            for c in &self.tool_calls {
                let outcome = match (&c.error, c.exit_code) {
                    (Some(e), _) => format!("error: {e}"),
                    (None, Some(code)) => format!("exit {code}"),
                    (None, None) => "ok".into(),
                };
                s.push_str(&format!("- {} {} — {}\n", c.name, c.target, outcome));
            }
        }
        if !self.commands.is_empty() {
            s.push_str("\n## Commands\n\n");
            for c in &self.commands {
                let how = match (c.exit_code, c.timed_out, c.background) {
                    (_, _, true) => "started in the background".to_string(),
                    (_, true, _) => "timed out".to_string(),
                    (Some(code), _, _) => format!("exit {code}"),
                    (None, _, _) => "no exit code".to_string(),
                };
                let line = c.command.split_whitespace().collect::<Vec<_>>().join(" ");
                s.push_str(&format!(
                    "- `{line}` — {how}, {:.1} s\n",
                    c.duration_ms as f64 / 1000.0
                ));
            }
        }
        if !self.todos.is_empty() {
            s.push_str("\n## Todos\n\n");
            s.push_str(&todos::render(&self.todos));
            s.push('\n');
        }
        s.push_str("\n## Diff\n\n");
        if self.diff.is_empty() {
            s.push_str("(no changes)\n");
        } else {
            s.push_str("```diff\n");
            s.push_str(&self.diff);
            if !self.diff.ends_with('\n') {
                s.push('\n');
            }
            s.push_str("```\n");
        }
        s.push_str(&format!(
            "\nTokens: {} in, {} out, {} cached (session: {} in, {} out, {} cached)\n",
            self.usage.input_tokens,
            self.usage.output_tokens,
            self.usage.cache_read_input_tokens,
            self.session_usage.input_tokens,
            self.session_usage.output_tokens,
            self.session_usage.cache_read_input_tokens
        ));
        s
    }
}

impl EndResult {
    /// The result as text.
    pub fn render(&self) -> String {
        format!("Session {} ended.\n{}", self.session_id, self.message)
    }
}

/// The session manager shared by every request of one server process.
pub struct Sessions {
    config: Config,
    store: Arc<Store>,
    provider: Result<Arc<Provider>, String>,
    profile: OnceCell<Result<Arc<Profile>, String>>,
    /// Fires when the server shuts down; every running turn's token is a
    /// child of it.
    shutdown: CancellationToken,
    /// The running turn tasks, so shutdown can wait for them to commit.
    tracker: TaskTracker,
    /// Turns this process runs or ran and nobody has collected yet, by
    /// session id.
    live: Mutex<HashMap<String, Arc<LiveTurn>>>,
}

impl Sessions {
    /// Opens the store and builds the provider. A missing key does not stop
    /// the server (it can still list tools and end sessions); turns then
    /// fail with advice.
    ///
    /// # Errors
    ///
    /// When the state directory or store cannot be opened.
    pub fn open(config: Config) -> anyhow::Result<Sessions> {
        for dir in [
            config.home.clone(),
            config.worktrees_dir(),
            config.gitdirs_dir(),
            config.diffs_dir(),
        ] {
            std::fs::create_dir_all(&dir).map_err(|e| {
                anyhow::anyhow!(
                    "cannot create {}: {e}; set AGENTKIMI_HOME to a writable directory",
                    dir.display()
                )
            })?;
        }
        let store = Arc::new(Store::open(&config.db_path())?);
        let provider = Provider::from_config(&config)
            .map(Arc::new)
            .map_err(|e| format!("{e:#}"));
        Ok(Sessions {
            config,
            store,
            provider,
            profile: OnceCell::new(),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            live: Mutex::new(HashMap::new()),
        })
    }

    /// Stops every running turn and waits up to `grace` for each to commit
    /// its work and record how it ended. Called when the client goes away or
    /// the server is told to stop.
    pub async fn shutdown(&self, grace: std::time::Duration) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "turns still running after {} s of shutdown; their sessions will show the turn \
                 as interrupted and commit its work on the next send",
                grace.as_secs()
            );
        }
    }

    /// Recovers sessions whose turn was running in a process that died:
    /// marks the turn interrupted and commits the partial work on the
    /// session branch, so it is on the branch even if the session is never
    /// sent to again. Sessions held by a live process are left alone.
    pub async fn recover(&self) {
        let ids = match self.store.sessions_with_running_turns() {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!("cannot look for interrupted turns: {e:#}");
                return;
            }
        };
        for id in ids {
            match self.recover_one(&id).await {
                Ok(true) => tracing::info!(session = %id, "recovered an interrupted turn"),
                Ok(false) => {}
                Err(e) => tracing::warn!(session = %id, "cannot recover the interrupted turn: {e}"),
            }
        }
    }

    /// Housekeeping: removes the worktrees of ended sessions that are still
    /// on disk, and the leftovers of starts that crashed before recording
    /// their session (a worktree or scratch git dir with no session row,
    /// older than [`LEFTOVER_AGE`], so a start in progress in another
    /// process is never touched). Branches, commits and live sessions are
    /// never touched. With `dry_run`, only reports what it would remove.
    ///
    /// # Errors
    ///
    /// Store errors; a single directory that cannot be removed is reported in
    /// the result instead.
    pub async fn gc(&self, dry_run: bool) -> Result<GcReport, SessionError> {
        let mut report = GcReport::default();
        let worktrees = self.config.worktrees_dir();
        let states = self.store.session_states()?;
        for (id, state) in &states {
            if *state != SessionState::Ended {
                continue;
            }
            let Some(rec) = self.store.session(id)? else {
                continue;
            };
            let ws = workspace_of(&rec)?;
            // Only a directory where this server puts worktrees: a corrupt
            // record must not point housekeeping elsewhere.
            if ws.worktree.parent() != Some(worktrees.as_path())
                || std::fs::symlink_metadata(&ws.worktree).is_err()
            {
                continue;
            }
            let line = format!("{} (session {id} has ended)", ws.worktree.display());
            if dry_run {
                report.removed.push(line);
                continue;
            }
            let home = self.config.home.clone();
            let removal = blocking(move || {
                workspace::remove(&ws)?;
                crate::sandbox::mounts::remove_session_cache(&home, &ws.worktree);
                Ok(())
            });
            match removal.await {
                Ok(()) => report.removed.push(line),
                Err(e) => report.failed.push(format!("{line}: {e}")),
            }
        }
        let known: std::collections::HashSet<&str> =
            states.iter().map(|(id, _)| id.as_str()).collect();
        for dir in [worktrees.clone(), self.config.gitdirs_dir()] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if known.contains(name.as_str()) || !name.starts_with("kimi-") {
                    continue;
                }
                let path = entry.path();
                let Ok(meta) = std::fs::symlink_metadata(&path) else {
                    continue;
                };
                let old_enough = meta
                    .modified()
                    .ok()
                    .and_then(|m| m.elapsed().ok())
                    .is_some_and(|age| age >= LEFTOVER_AGE);
                if !old_enough {
                    continue;
                }
                let line = format!("{} (no session has this id)", path.display());
                if dry_run {
                    report.removed.push(line);
                    continue;
                }
                // Never follow a link: remove the link itself. A linked
                // worktree's registration in its repository is left for
                // `git worktree prune`: without a session row the repository
                // is unknown, and the directory's `.git` is not trusted.
                let removed = if meta.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                match removed {
                    Ok(()) => report.removed.push(line),
                    Err(e) => report.failed.push(format!("{line}: {e}")),
                }
            }
        }
        Ok(report)
    }

    async fn recover_one(&self, id: &str) -> Result<bool, SessionError> {
        if !self.store.acquire_lease(id)? {
            return Ok(false);
        }
        let _lease = Lease {
            store: self.store.clone(),
            id: id.to_string(),
        };
        let Some(rec) = self.store.session(id)? else {
            return Ok(false);
        };
        // Commit first, then record the turn as interrupted: whoever sees
        // "interrupted" can rely on the work being on the branch.
        let ws = workspace_of(&rec)?;
        blocking(move || workspace::commit_turn(&ws, "agentkimi: work of an interrupted turn"))
            .await?;
        Ok(self.store.mark_interrupted(id)? > 0)
    }

    /// The store, for commands that read it directly.
    pub fn store(&self) -> &Store {
        &self.store
    }

    async fn profile(&self) -> Result<Arc<Profile>, SessionError> {
        let p = self
            .profile
            .get_or_init(|| async {
                Profile::prepare(&self.config)
                    .await
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .await;
        p.clone().map_err(SessionError::Unavailable)
    }

    fn provider(&self) -> Result<Arc<Provider>, SessionError> {
        self.provider.clone().map_err(SessionError::Unavailable)
    }

    /// Starts a session with the server's settings and runs its first turn
    /// to the end.
    ///
    /// # Errors
    ///
    /// Bad `workdir`, no key, no sandbox, or a host failure.
    pub async fn start(
        self: &Arc<Self>,
        prompt: &str,
        workdir: Option<&str>,
        cancel: CancellationToken,
        progress: Progress,
    ) -> Result<TurnResult, SessionError> {
        let options = SessionOptions::default();
        self.start_with(prompt, workdir, &options, true, cancel, progress)
            .await?
            .finished()
    }

    /// Starts a session with per-session `options` and runs its first turn.
    /// With `wait` the result is the turn's; without, the call returns as
    /// soon as the turn is running, with its status.
    ///
    /// # Errors
    ///
    /// Bad `workdir` or options, no key, no sandbox, or a host failure.
    pub async fn start_with(
        self: &Arc<Self>,
        prompt: &str,
        workdir: Option<&str>,
        options: &SessionOptions,
        wait: bool,
        cancel: CancellationToken,
        progress: Progress,
    ) -> Result<Launched, SessionError> {
        options.check(&self.config)?;
        // Check everything the turn needs before creating anything, so a
        // refused start leaves no worktree or branch behind.
        self.provider()?;
        self.profile().await?;

        let id = new_session_id();
        let config = self.config.clone();
        let workdir_owned = workdir.map(PathBuf::from);
        let sid = id.clone();
        let ws_started = Instant::now();
        let ws = tokio::task::spawn_blocking(move || -> Result<Workspace, SessionError> {
            match workdir_owned {
                Some(dir) => {
                    if !dir.is_absolute() {
                        return Err(SessionError::Invalid(format!(
                            "workdir {} is not an absolute path; pass the full path of a \
                             directory inside a git repository",
                            dir.display()
                        )));
                    }
                    // The state directory is always denied: a session
                    // must not work inside another session's worktree or
                    // the store.
                    let mut deny = config.deny_paths.clone();
                    deny.push(std::fs::canonicalize(&config.home).unwrap_or(config.home.clone()));
                    workspace::check_workdir(&dir, &deny)
                        .map_err(|e| SessionError::Invalid(e.to_string()))?;
                    workspace::create_linked(
                        &config.worktrees_dir(),
                        &sid,
                        &dir,
                        config.allow_filters,
                    )
                    .map_err(|e| SessionError::Invalid(e.to_string()))
                }
                None => workspace::create_throwaway(
                    &config.worktrees_dir(),
                    &config.gitdirs_dir(),
                    &sid,
                )
                .map_err(|e| SessionError::Internal(e.to_string())),
            }
        })
        .await
        .map_err(|e| SessionError::Internal(format!("workspace task failed: {e}")))??;
        agent::log_timing("worktree", ws_started);

        let rec = SessionRecord {
            id: id.clone(),
            created_at: now_ms(),
            updated_at: now_ms(),
            state: SessionState::Active,
            workspace: serde_json::to_value(&ws)
                .map_err(|e| SessionError::Internal(e.to_string()))?,
            workdir: workdir.map(str::to_string),
            model: options
                .model
                .clone()
                .unwrap_or_else(|| self.config.model.clone()),
            turns: 0,
            failed_turns: 0,
        };
        let store_started = Instant::now();
        let created = self.store.create_session(&rec).and_then(|()| {
            self.store
                .set_session_options(&id, &serde_json::to_value(options).unwrap_or_default())
        });
        agent::log_timing("store", store_started);
        if let Err(e) = created {
            // Without a record nobody could find or end this session: undo
            // the worktree rather than orphan it (the branch keeps nothing
            // yet, it points at the base commit).
            let _ = workspace::remove(&ws);
            return Err(e.into());
        }
        tracing::info!(session = %id, workdir = ?workdir, "session started");
        self.launch(rec, ws, prompt.to_string(), wait, cancel, progress)
            .await
    }

    /// Runs a follow-up turn on an existing session to the end.
    ///
    /// # Errors
    ///
    /// Unknown or ended session, a session busy with another turn, too many
    /// failed turns, or a host failure.
    pub async fn send(
        self: &Arc<Self>,
        id: &str,
        message: &str,
        cancel: CancellationToken,
        progress: Progress,
    ) -> Result<TurnResult, SessionError> {
        self.send_with(id, message, true, cancel, progress)
            .await?
            .finished()
    }

    /// Runs a follow-up turn; with `wait: false` returns as soon as it runs.
    ///
    /// # Errors
    ///
    /// As [`Sessions::send`].
    pub async fn send_with(
        self: &Arc<Self>,
        id: &str,
        message: &str,
        wait: bool,
        cancel: CancellationToken,
        progress: Progress,
    ) -> Result<Launched, SessionError> {
        let rec = self.active_session(id)?;
        if rec.failed_turns >= 3 {
            return Err(SessionError::Unavailable(format!(
                "session {id} refused: its last {} turns failed (see the notes of those results). \
                 Check the provider settings with `agentkimi doctor`, then start a new session; \
                 the work so far is on branch agentkimi/{id}",
                rec.failed_turns
            )));
        }
        self.provider()?;
        self.profile().await?;
        let ws = workspace_of(&rec)?;
        self.launch(rec, ws, message.to_string(), wait, cancel, progress)
            .await
    }

    fn active_session(&self, id: &str) -> Result<SessionRecord, SessionError> {
        let Some(rec) = self.store.session(id)? else {
            return Err(SessionError::Invalid(format!(
                "unknown session {id:?}; use the session_id returned by agentkimi_start, or start \
                 a new session"
            )));
        };
        if rec.state == SessionState::Ended {
            return Err(SessionError::Unavailable(format!(
                "session {id} has ended; its work is on branch agentkimi/{id}. Start a new \
                 session to continue"
            )));
        }
        Ok(rec)
    }

    /// Runs a turn in a detached task (see the module doc), registered as
    /// live so agentkimi_status, agentkimi_wait and agentkimi_cancel can see
    /// it. With `wait` it waits for the turn and hands over its result;
    /// without, it returns the running turn's status at once. `cancel` (the
    /// request's token) stops the turn only when the caller waits for it.
    async fn launch(
        self: &Arc<Self>,
        rec: SessionRecord,
        ws: Workspace,
        text: String,
        wait: bool,
        cancel: CancellationToken,
        progress: Progress,
    ) -> Result<Launched, SessionError> {
        if !self.store.acquire_lease(&rec.id)? {
            return Err(SessionError::Unavailable(format!(
                "session {} is busy with another turn; collect it with agentkimi_wait or stop it \
                 with agentkimi_cancel, then send again",
                rec.id
            )));
        }
        let lease = Lease {
            store: self.store.clone(),
            id: rec.id.clone(),
        };
        // With the lease held no other process starts a turn here, so the
        // stored count plus one is the number begin_turn will hand out.
        let turns = self
            .store
            .session(&rec.id)?
            .map_or(rec.turns, |fresh| fresh.turns);
        // The turn stops on agentkimi_cancel or the server's shutdown and,
        // when the caller waits for it, when its request is cancelled.
        let turn_cancel = self.shutdown.child_token();
        if wait {
            let watch = turn_cancel.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => watch.cancel(),
                    _ = watch.cancelled() => {}
                }
            });
        }
        let live = Arc::new(LiveTurn::new(turns + 1, turn_cancel.clone()));
        self.register_live(&rec.id, live.clone());
        let progress: Progress = if wait { progress } else { Arc::new(|_| {}) };

        let id = rec.id.clone();
        let this = self.clone();
        let task = self.tracker.spawn(async move {
            let _lease = lease;
            // Ends the watcher above once the turn is over.
            let _done = turn_cancel.clone().drop_guard();
            let guard = FinishOnDrop(live.clone());
            let result = this
                .run_turn(rec, ws, text, turn_cancel, progress, Some(live))
                .await;
            guard.finish(&result);
            result
        });
        if !wait {
            return Ok(Launched::Running(self.status(&id).await?));
        }
        let result = task
            .await
            .map_err(|e| SessionError::Internal(format!("the turn task failed: {e}")))?;
        self.collect_live(&id, turns + 1);
        result.map(Launched::Finished)
    }

    async fn run_turn(
        &self,
        rec: SessionRecord,
        ws: Workspace,
        text: String,
        cancel: CancellationToken,
        progress: Progress,
        live: Option<Arc<LiveTurn>>,
    ) -> Result<TurnResult, SessionError> {
        let started = Instant::now();
        let provider = self.provider()?;
        let id = rec.id.clone();
        let options = self.options_of(&id);
        let mut profile = self.profile().await?;
        if options.network.as_deref() == Some("off") && profile.network() != Network::Off {
            profile = Arc::new(
                profile
                    .without_network()
                    .map_err(|e| SessionError::Unavailable(e.to_string()))?,
            );
        }

        // A turn left running by a process that died: record it, and put its
        // partial work on the branch before anything else happens.
        let interrupted = self.store.mark_interrupted(&id)?;
        if interrupted > 0 {
            let ws2 = ws.clone();
            let msg = "agentkimi: work of an interrupted turn".to_string();
            blocking(move || workspace::commit_turn(&ws2, &msg)).await?;
        }
        {
            let ws2 = ws.clone();
            blocking(move || workspace::reopen_check(&ws2)).await?;
        }

        let store_started = Instant::now();
        let turn = self.store.begin_turn(&id, &text)?;
        agent::log_timing("store", store_started);
        let span = tracing::info_span!("turn", session = %id, turn);
        let _enter = span.enter();
        tracing::info!("turn started");

        let start_dir = ws.worktree.join(&ws.subdir);
        let mut system = agent::system_prompt(&ws.worktree, &start_dir, profile.network());
        if let Some(extra) = options.instructions.as_deref() {
            system.push_str("\n\nInstructions from the caller for this session:\n");
            system.push_str(extra);
        }
        let on_event = |ev: TurnEvent| {
            let ev = relative_to(ev, &ws.worktree);
            let line = describe(&ev);
            if let Some(live) = &live {
                live.event(&ev, &line);
            }
            progress(line)
        };
        let ctx = TurnContext {
            provider: &provider,
            profile: &profile,
            store: &self.store,
            session_id: &id,
            turn,
            worktree: &ws.worktree,
            start_dir: &start_dir,
            model: &rec.model,
            max_tokens: self.config.max_tokens,
            max_steps: options.max_steps.unwrap_or(self.config.max_steps),
            timeout: options
                .timeout_s
                .map_or(self.config.turn_timeout, Duration::from_secs),
            gate: self.config.gate,
            context_tokens: self.config.context_tokens,
            cancel,
            on_event: &on_event,
        };
        let outcome = agent::run_turn(&ctx, &system, &text).await;
        drop(_enter);

        // Record the work on the branch, then describe it.
        let message = commit_message(turn, &text, &outcome.summary);
        let ws2 = ws.clone();
        let phase = Instant::now();
        let commit = blocking(move || workspace::commit_turn(&ws2, &message)).await;
        agent::log_timing("commit", phase);
        let ws2 = ws.clone();
        let phase = Instant::now();
        let diff = blocking(move || workspace::diff(&ws2)).await;
        agent::log_timing("diff", phase);

        let mut note = outcome.note.clone();
        let commit = match commit {
            Ok(c) => c,
            Err(e) => {
                append_note(
                    &mut note,
                    &format!("the host could not commit this turn's changes: {e}"),
                );
                None
            }
        };
        let (diff_text, files) = match diff {
            Ok(d) => (d.text, d.files),
            Err(e) => {
                append_note(
                    &mut note,
                    &format!("the host could not compute the diff: {e}"),
                );
                (String::new(), Vec::new())
            }
        };
        let (diff, diff_truncated, diff_path) = self.fit_diff(&id, turn, diff_text)?;

        let record = TurnRecord {
            session_id: id.clone(),
            turn,
            started_at: 0,
            ended_at: Some(now_ms()),
            status: outcome.status.as_str().to_string(),
            prompt: text,
            summary: outcome.summary.clone(),
            steps: outcome.steps,
            tool_calls: serde_json::to_value(&outcome.tool_calls).unwrap_or_default(),
            usage: serde_json::to_value(outcome.usage).unwrap_or_default(),
            note: note.clone(),
        };
        let store_started = Instant::now();
        self.store.finish_turn(&record)?;
        agent::log_timing("store", store_started);
        let session_usage = self.session_usage(&id);

        Ok(TurnResult {
            session_id: id,
            turn,
            status: outcome.status,
            test_output: agent::test_output(&outcome.summary),
            summary: outcome.summary,
            diff,
            diff_truncated,
            diff_path,
            files_changed: files
                .into_iter()
                .map(|f| FileChanged {
                    path: f.path,
                    status: f.status.as_str().to_string(),
                    additions: f.additions,
                    deletions: f.deletions,
                })
                .collect(),
            branch: ws.branch.clone(),
            worktree: ws.worktree.display().to_string(),
            commit,
            steps: outcome.steps,
            tool_calls: outcome.tool_calls,
            commands: outcome.commands,
            todos: outcome.todos,
            usage: outcome.usage,
            session_usage,
            note,
            duration_ms: started.elapsed().as_millis() as u64,
        })
    }

    /// Cuts a diff that is too long for a reply, saving it whole first.
    fn fit_diff(
        &self,
        id: &str,
        turn: u32,
        diff: String,
    ) -> Result<(String, bool, Option<String>), SessionError> {
        if diff.len() <= MAX_INLINE_DIFF {
            return Ok((diff, false, None));
        }
        let path = self
            .config
            .diffs_dir()
            .join(format!("{id}-turn{turn}.diff"));
        let tmp = path.with_extension("diff.tmp");
        std::fs::write(&tmp, &diff)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| {
                SessionError::Internal(format!("cannot save the diff to {}: {e}", path.display()))
            })?;
        let mut cut = MAX_INLINE_DIFF;
        while !diff.is_char_boundary(cut) {
            cut -= 1;
        }
        let cut = diff[..cut].rfind('\n').map(|i| i + 1).unwrap_or(cut);
        let mut shown = diff[..cut].to_string();
        shown.push_str(&format!(
            "[diff cut at {cut} of {} bytes; the whole diff is in {}]\n",
            diff.len(),
            path.display()
        ));
        Ok((shown, true, Some(path.display().to_string())))
    }

    /// Ends a session: commits what is left, removes the worktree, keeps the
    /// branch.
    ///
    /// # Errors
    ///
    /// Unknown session, a turn still running, or a host failure (then the
    /// session stays active and nothing is removed).
    pub async fn end(self: &Arc<Self>, id: &str) -> Result<EndResult, SessionError> {
        let Some(rec) = self.store.session(id)? else {
            return Err(SessionError::Invalid(format!(
                "unknown session {id:?}; use the session_id returned by agentkimi_start"
            )));
        };
        let ws = workspace_of(&rec)?;
        let repository = match &ws.repo_root {
            Some(r) => r.display().to_string(),
            None => ws.gitdir.display().to_string(),
        };
        if rec.state == SessionState::Ended {
            let ws2 = ws.clone();
            let commits = blocking(move || workspace::commits_since_base(&ws2))
                .await
                .unwrap_or(0);
            return Ok(end_result(
                &rec.id,
                &ws,
                repository,
                commits,
                "The session had already ended.",
            ));
        }
        if !self.store.acquire_lease(id)? {
            return Err(SessionError::Unavailable(format!(
                "session {id} is running a turn; collect it with agentkimi_wait or stop it with \
                 agentkimi_cancel before ending the session"
            )));
        }
        let _lease = Lease {
            store: self.store.clone(),
            id: id.to_string(),
        };
        self.store.mark_interrupted(id)?;

        let ws2 = ws.clone();
        let home = self.config.home.clone();
        let commits = blocking(move || {
            // Anything not yet on the branch (an interrupted turn's work)
            // is committed before the worktree goes away.
            workspace::commit_turn(&ws2, "agentkimi: final state at session end")?;
            let n = workspace::commits_since_base(&ws2)?;
            workspace::remove(&ws2)?;
            crate::sandbox::mounts::remove_session_cache(&home, &ws2.worktree);
            Ok(n)
        })
        .await?;
        self.store.end_session(id)?;
        tracing::info!(session = %id, commits, "session ended");
        Ok(end_result(&rec.id, &ws, repository, commits, ""))
    }
}

fn end_result(
    id: &str,
    ws: &Workspace,
    repository: String,
    commits: usize,
    prefix: &str,
) -> EndResult {
    let git = match &ws.repo_root {
        Some(_) => format!("git -C {repository}"),
        None => format!("git --git-dir {repository}"),
    };
    let message = format!(
        "{prefix}{}The work is on branch {} in {repository} ({commits} commit(s)). Review it with \
         `{git} log -p {}..{}`; merge it with `git merge {}` in your repository, or delete it with \
         `{git} branch -D {}`.",
        if prefix.is_empty() { "" } else { " " },
        ws.branch,
        &ws.base_commit[..ws.base_commit.len().min(12)],
        ws.branch,
        ws.branch,
        ws.branch,
    );
    EndResult {
        session_id: id.to_string(),
        ended: true,
        branch: ws.branch.clone(),
        repository,
        commits,
        worktree_removed: true,
        message,
    }
}

/// How old an unrecorded worktree or git dir must be before housekeeping
/// treats it as the leftover of a crashed start.
pub const LEFTOVER_AGE: std::time::Duration = std::time::Duration::from_secs(600);

/// What housekeeping removed, and what it could not.
#[derive(Debug, Default, Serialize)]
pub struct GcReport {
    /// One line per removed directory.
    pub removed: Vec<String>,
    /// One line per directory that could not be removed, with the reason.
    pub failed: Vec<String>,
}

/// Gives the session's lease back when dropped, also when the turn panics.
struct Lease {
    store: Arc<Store>,
    id: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Err(e) = self.store.release_lease(&self.id) {
            tracing::warn!(session = %self.id, "cannot release the session lease: {e:#}");
        }
    }
}

fn workspace_of(rec: &SessionRecord) -> Result<Workspace, SessionError> {
    serde_json::from_value(rec.workspace.clone()).map_err(|e| {
        SessionError::Internal(format!(
            "session {} has a corrupt workspace record: {e}",
            rec.id
        ))
    })
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, workspace::WorkspaceError> + Send + 'static,
) -> Result<T, SessionError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SessionError::Internal(format!("git task failed: {e}")))?
        .map_err(|e| SessionError::Internal(e.to_string()))
}

fn append_note(note: &mut Option<String>, extra: &str) {
    *note = Some(match note.take() {
        Some(n) => format!("{n}; {extra}"),
        None => extra.to_string(),
    });
}

fn commit_message(turn: u32, prompt: &str, summary: &str) -> String {
    let title: String = prompt
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(60)
        .collect();
    let body: String = summary.chars().take(2000).collect();
    format!("agentkimi turn {turn}: {title}\n\n{body}\n")
}

/// A new session id: `kimi-` and 12 hex digits.
pub fn new_session_id() -> String {
    format!("kimi-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// `ev` with a tool call's target shown relative to the worktree: the model
/// passes absolute paths, and "Edit src/lib.rs" reads better than the full
/// path under the state directory.
fn relative_to(ev: TurnEvent, worktree: &std::path::Path) -> TurnEvent {
    match ev {
        TurnEvent::ToolCall(mut c) => {
            let root = format!("{}/", worktree.display());
            c.target = c.target.replace(&root, "");
            if c.target == root.trim_end_matches('/') {
                c.target = ".".into();
            }
            TurnEvent::ToolCall(c)
        }
        other => other,
    }
}

/// One line a person understands, for progress notifications.
pub fn describe(ev: &TurnEvent) -> String {
    match ev {
        TurnEvent::Step(n) => format!("Kimi is thinking (step {n})"),
        TurnEvent::Retry(msg) => format!("Retrying the model request: {msg}"),
        TurnEvent::Todos(list) => todos::progress_line(list),
        TurnEvent::ToolCall(c) => {
            let secs = c.duration_ms as f64 / 1000.0;
            match (&c.error, c.exit_code) {
                (Some(e), _) => format!("{} {} — error: {e}", c.name, c.target),
                (None, Some(code)) => {
                    format!("{}: {} — exit {code}, {secs:.1} s", c.name, c.target)
                }
                (None, None) => format!("{} {}", c.name, c.target),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_distinct_and_branch_safe() {
        let a = new_session_id();
        let b = new_session_id();
        assert_ne!(a, b);
        assert!(a.starts_with("kimi-") && a.len() == 17);
        assert!(a[5..].chars().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn progress_lines_read_like_a_log() {
        let rec = ToolCallRecord {
            name: "Bash".into(),
            target: "cargo test".into(),
            ok: true,
            error: None,
            exit_code: Some(0),
            duration_ms: 3200,
        };
        assert_eq!(
            describe(&TurnEvent::ToolCall(rec)),
            "Bash: cargo test — exit 0, 3.2 s"
        );
    }
}
