//! Long turns and fan-out: turns that run on after the request that started
//! them returned, and the calls that look at them (`agentkimi_status`,
//! `agentkimi_wait`, `agentkimi_cancel`, `agentkimi_list`, `agentkimi_diff`).
//!
//! A turn this process runs is *live*: its cancellation token, its latest
//! progress and, once it ends, its result stay in memory until a caller
//! collects the result. Everything a live turn produces is also in the
//! store (the turns table), so a result nobody collected before the server
//! stopped is rebuilt from there: only the in-memory extras (the diff as it
//! was at the end of the turn, the commit id) are recomputed or missing.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::{
    FileChanged, MAX_INLINE_DIFF, Progress, SessionError, Sessions, TurnResult, blocking,
    workspace_of,
};
use crate::{
    agent::{self, ToolCallRecord, TurnEvent, TurnStatus},
    config::{Config, Network},
    llm::Usage,
    store::{SessionRecord, SessionState, TurnRecord, now_ms},
    workspace,
};

/// How long `agentkimi_cancel` waits for the turn to stop and commit its
/// work before it answers with the status instead.
const CANCEL_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// How often a wait on a turn run by another process looks at the store.
const STORE_POLL: std::time::Duration = std::time::Duration::from_millis(500);

/// Options a caller may set when starting a session. They are stored with
/// the session and apply to every later turn of it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionOptions {
    /// Model name instead of the server's `AGENTKIMI_MODEL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Wall-clock limit of each turn, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_s: Option<u64>,
    /// Model calls allowed per turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u32>,
    /// Text appended to the system prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// `off` to cut the sandbox off the network when the server allows it;
    /// `on` only when the server already allows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

impl SessionOptions {
    /// Checks the options against the server's settings. A session may be
    /// stricter than the server, never looser.
    ///
    /// # Errors
    ///
    /// [`SessionError::Invalid`] naming the bad option and what to pass.
    pub fn check(&self, config: &Config) -> Result<(), SessionError> {
        if let Some(t) = self.timeout_s
            && !(1..=24 * 3600).contains(&t)
        {
            return Err(SessionError::Invalid(format!(
                "timeout_s {t} is out of range; pass 1 to 86400 seconds"
            )));
        }
        if let Some(n) = self.max_steps
            && !(1..=1000).contains(&n)
        {
            return Err(SessionError::Invalid(format!(
                "max_steps {n} is out of range; pass 1 to 1000"
            )));
        }
        match self.network.as_deref() {
            None | Some("off") => {}
            Some("on") if config.network == Network::On => {}
            Some("on") => {
                return Err(SessionError::Invalid(
                    "network \"on\" refused: this server runs its sandboxes without open network \
                     (AGENTKIMI_NETWORK is off or allowlist), and a call may only make the \
                     policy stricter. \
                     Leave `network` out, or ask whoever runs the server to set \
                     AGENTKIMI_NETWORK=on"
                        .into(),
                ));
            }
            Some(other) => {
                return Err(SessionError::Invalid(format!(
                    "network {other:?} is not a policy; pass \"off\" or \"on\""
                )));
            }
        }
        Ok(())
    }
}

/// What `agentkimi_start` and `agentkimi_send` return: the turn's result
/// when the caller waited, the running turn's status when it did not.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Launched {
    /// The turn ended; its result.
    Finished(TurnResult),
    /// The turn runs on; collect it with `agentkimi_wait`.
    Running(SessionStatus),
}

impl Launched {
    /// The turn result, for callers that always wait.
    ///
    /// # Errors
    ///
    /// [`SessionError::Internal`] when the turn was still running, which a
    /// caller that waited never sees.
    pub fn finished(self) -> Result<TurnResult, SessionError> {
        match self {
            Launched::Finished(r) => Ok(r),
            Launched::Running(s) => Err(SessionError::Internal(format!(
                "turn {} of session {} is still running",
                s.turn, s.session_id
            ))),
        }
    }

    /// The result or status as text.
    pub fn render(&self) -> String {
        match self {
            Launched::Finished(r) => r.render(),
            Launched::Running(s) => s.render(),
        }
    }
}

/// A turn's result in short, as the status shows it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct LastResult {
    /// Turn number.
    pub turn: u32,
    /// How it ended: `completed`, `step_limit`, `timeout`, `cancelled`,
    /// `failed` or `interrupted`.
    pub status: String,
    /// The start of Kimi's summary.
    pub summary: String,
    /// Why it stopped early, if it did.
    pub note: Option<String>,
}

/// Where a session is and what its turn is doing.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SessionStatus {
    /// Session id.
    pub session_id: String,
    /// `running` (a turn runs), `finished` (a turn ended and its result
    /// waits for agentkimi_wait), `idle` (ready for agentkimi_send) or
    /// `ended`.
    pub state: String,
    /// The running turn, or the last one.
    pub turn: u32,
    /// The model call the running turn is on.
    pub step: Option<u32>,
    /// What the running turn did last, in words.
    pub current: Option<String>,
    /// Tool calls the running turn has made.
    pub tool_calls: Option<u32>,
    /// Seconds the running turn has been going.
    pub running_s: Option<f64>,
    /// Time of the last activity, milliseconds since the Unix epoch.
    pub last_activity_ms: i64,
    /// Seconds since the last activity.
    pub idle_s: f64,
    /// Branch holding the work.
    pub branch: String,
    /// The worktree on the host, while the session is not ended.
    pub worktree: Option<String>,
    /// The `workdir` the session was started with.
    pub workdir: Option<String>,
    /// Turns started so far.
    pub turns: u32,
    /// The last turn that ended, in short.
    pub last_result: Option<LastResult>,
    /// Tokens used by all of the session's turns so far.
    pub session_usage: Usage,
    /// Kimi's todo list as it last wrote it (live during a turn).
    pub todos: Vec<crate::todos::TodoItem>,
    /// What to do next.
    pub message: String,
}

impl SessionStatus {
    /// The status as text.
    pub fn render(&self) -> String {
        let mut s = format!(
            "Session {} · {} · turn {}",
            self.session_id, self.state, self.turn
        );
        if let Some(step) = self.step {
            s.push_str(&format!(" · step {step}"));
        }
        if let Some(secs) = self.running_s {
            s.push_str(&format!(" · {secs:.1} s"));
        }
        s.push_str(&format!("\nBranch: {}\n", self.branch));
        if let Some(c) = &self.current {
            s.push_str(&format!("Now: {c}\n"));
        }
        if let Some(r) = &self.last_result {
            s.push_str(&format!(
                "Last result: turn {} {}: {}\n",
                r.turn, r.status, r.summary
            ));
        }
        if !self.todos.is_empty() {
            s.push_str(&crate::todos::render(&self.todos));
            s.push('\n');
        }
        s.push_str(&format!(
            "Tokens (session): {} in, {} out, {} cached\n{}\n",
            self.session_usage.input_tokens,
            self.session_usage.output_tokens,
            self.session_usage.cache_read_input_tokens,
            self.message
        ));
        s
    }
}

/// One session in `agentkimi_list`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SessionSummary {
    /// Session id.
    pub session_id: String,
    /// `running`, `finished`, `idle` or `ended` (see agentkimi_status).
    pub state: String,
    /// Branch holding the work.
    pub branch: String,
    /// Turns started so far.
    pub turns: u32,
    /// Time of the last activity, milliseconds since the Unix epoch.
    pub last_activity_ms: i64,
    /// The `workdir` the session was started with (none: scratch repository).
    pub workdir: Option<String>,
    /// The worktree on the host, while the session is not ended.
    pub worktree: Option<String>,
    /// Model the session uses.
    pub model: String,
}

/// The result of `agentkimi_list`.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct SessionList {
    /// Sessions, most recently active first.
    pub sessions: Vec<SessionSummary>,
}

impl SessionList {
    /// The list as text.
    pub fn render(&self) -> String {
        if self.sessions.is_empty() {
            return "No sessions. Start one with agentkimi_start.\n".into();
        }
        let mut s = format!("{} session(s):\n", self.sessions.len());
        for x in &self.sessions {
            s.push_str(&format!(
                "- {} {} · {} turn(s) · {} · {}\n",
                x.session_id,
                x.state,
                x.turns,
                x.branch,
                x.workdir.as_deref().unwrap_or("(scratch repository)")
            ));
        }
        s
    }
}

/// One page of a session's diff.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct DiffPage {
    /// Session id.
    pub session_id: String,
    /// `worktree` (base commit to the files on disk, uncommitted changes
    /// included) or `branch` (base commit to the branch tip: an ended
    /// session).
    pub source: String,
    /// The one file asked for, if any.
    pub path: Option<String>,
    /// Byte offset of this page in the whole diff.
    pub offset: usize,
    /// Offset of the next page; none on the last page.
    pub next_offset: Option<usize>,
    /// Length of the whole diff (of the one file, when `path` is given).
    pub total_bytes: usize,
    /// The page of unified diff.
    pub text: String,
    /// Files changed since the base commit.
    pub files_changed: Vec<FileChanged>,
    /// Whether the diff stopped before its end because it exceeded the
    /// host's 8 MiB limit.
    pub incomplete: bool,
}

impl DiffPage {
    /// The page as text.
    pub fn render(&self) -> String {
        let mut s = format!(
            "Session {} · diff ({}) bytes {}..{} of {}\n",
            self.session_id,
            self.source,
            self.offset,
            self.offset + self.text.len(),
            self.total_bytes
        );
        if let Some(next) = self.next_offset {
            s.push_str(&format!(
                "More follows: call agentkimi_diff with offset {next}.\n"
            ));
        }
        s.push_str("```diff\n");
        s.push_str(&self.text);
        if !self.text.ends_with('\n') {
            s.push('\n');
        }
        s.push_str("```\n");
        s
    }
}

/// Latest progress of a live turn.
#[derive(Debug, Default)]
struct Activity {
    step: u32,
    current: String,
    tool_calls: u32,
    last_ms: i64,
}

/// A turn this process runs or ran, until its result is collected.
pub(super) struct LiveTurn {
    /// The turn number.
    pub(super) turn: u32,
    cancel: CancellationToken,
    started_ms: i64,
    started: std::time::Instant,
    activity: std::sync::Mutex<Activity>,
    done: watch::Sender<Option<Result<TurnResult, String>>>,
    lines: broadcast::Sender<String>,
}

impl LiveTurn {
    pub(super) fn new(turn: u32, cancel: CancellationToken) -> LiveTurn {
        LiveTurn {
            turn,
            cancel,
            started_ms: now_ms(),
            started: std::time::Instant::now(),
            activity: std::sync::Mutex::new(Activity {
                last_ms: now_ms(),
                current: "Starting".into(),
                ..Activity::default()
            }),
            done: watch::Sender::new(None),
            lines: broadcast::Sender::new(64),
        }
    }

    fn activity(&self) -> std::sync::MutexGuard<'_, Activity> {
        // Activity is plain data, whole after any panic.
        self.activity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records one event of the turn and passes its line on to waiters.
    pub(super) fn event(&self, ev: &TurnEvent, line: &str) {
        {
            let mut a = self.activity();
            match ev {
                TurnEvent::Step(n) => a.step = *n,
                TurnEvent::ToolCall(_) => a.tool_calls += 1,
                TurnEvent::Retry(_) | TurnEvent::Todos(_) => {}
            }
            a.current = line.to_string();
            a.last_ms = now_ms();
        }
        // No receiver is the usual case (nobody waits): not an error.
        let _ = self.lines.send(line.to_string());
    }

    fn result(&self) -> Option<Result<TurnResult, String>> {
        self.done.borrow().clone()
    }
}

/// Marks a live turn finished, also when its task panics or is dropped,
/// so nobody waits for a turn that can no longer end.
pub(super) struct FinishOnDrop(pub(super) Arc<LiveTurn>);

impl FinishOnDrop {
    /// Records the turn's result for waiters.
    pub(super) fn finish(self, result: &Result<TurnResult, SessionError>) {
        let r = result.as_ref().map_err(ToString::to_string).cloned();
        self.0.done.send_replace(Some(r));
        self.0.activity().last_ms = now_ms();
    }
}

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        self.0.done.send_if_modified(|d| {
            if d.is_some() {
                return false;
            }
            *d = Some(Err(
                "the turn stopped unexpectedly (see the server log); its work so far is \
                 committed at the next turn. Send a message to continue"
                    .into(),
            ));
            true
        });
    }
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    format!("{}…", s.chars().take(max).collect::<String>())
}

fn last_result_of(r: &TurnResult) -> LastResult {
    LastResult {
        turn: r.turn,
        status: r.status.as_str().into(),
        summary: cut(&r.summary, 500),
        note: r.note.clone(),
    }
}

impl Sessions {
    pub(super) fn register_live(&self, id: &str, live: Arc<LiveTurn>) {
        self.live_map().insert(id.to_string(), live);
    }

    /// Forgets a live turn whose result was handed to a caller.
    pub(super) fn collect_live(&self, id: &str, turn: u32) {
        let mut map = self.live_map();
        if map.get(id).is_some_and(|l| l.turn == turn) {
            map.remove(id);
        }
    }

    fn live_map(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Arc<LiveTurn>>> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn live_entry(&self, id: &str) -> Option<Arc<LiveTurn>> {
        self.live_map().get(id).cloned()
    }

    /// The options the session was started with (defaults when unreadable:
    /// the server's settings).
    pub(super) fn options_of(&self, id: &str) -> SessionOptions {
        self.store
            .session_options(id)
            .ok()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }

    /// Tokens used by all recorded turns of a session.
    /// The session's stored todo list; empty when it has none or it cannot
    /// be read (a status must still answer).
    fn todos_of(&self, id: &str) -> Vec<crate::todos::TodoItem> {
        self.store
            .todos(id)
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }

    pub(super) fn session_usage(&self, id: &str) -> Usage {
        let mut total = Usage::default();
        for v in self.store.turn_usages(id).unwrap_or_default() {
            if let Ok(u) = serde_json::from_value::<Usage>(v) {
                total.add(&u);
            }
        }
        total
    }

    fn record(&self, id: &str) -> Result<SessionRecord, SessionError> {
        self.store.session(id)?.ok_or_else(|| {
            SessionError::Invalid(format!(
                "unknown session {id:?}; agentkimi_list shows the sessions this server knows"
            ))
        })
    }

    /// The session's state and what its turn is doing.
    ///
    /// # Errors
    ///
    /// Unknown session, or a store failure.
    pub async fn status(&self, id: &str) -> Result<SessionStatus, SessionError> {
        let rec = self.record(id)?;
        let ws = workspace_of(&rec)?;
        let ended = rec.state == SessionState::Ended;
        let mut st = SessionStatus {
            session_id: rec.id.clone(),
            state: if ended { "ended" } else { "idle" }.into(),
            turn: rec.turns,
            step: None,
            current: None,
            tool_calls: None,
            running_s: None,
            last_activity_ms: rec.updated_at,
            idle_s: 0.0,
            branch: ws.branch.clone(),
            worktree: (!ended).then(|| ws.worktree.display().to_string()),
            workdir: rec.workdir.clone(),
            turns: rec.turns,
            last_result: None,
            session_usage: self.session_usage(id),
            todos: self.todos_of(id),
            message: String::new(),
        };

        let live = self.live_entry(id);
        match live.as_ref().map(|l| (l, l.result())) {
            Some((l, None)) => {
                let a = l.activity();
                st.state = "running".into();
                st.turn = l.turn;
                st.step = Some(a.step);
                st.current = Some(a.current.clone());
                st.tool_calls = Some(a.tool_calls);
                st.running_s = Some(l.started.elapsed().as_secs_f64());
                st.last_activity_ms = a.last_ms.max(l.started_ms);
                st.message = format!(
                    "Turn {} is running. Collect its result with agentkimi_wait, look at it \
                     with agentkimi_status, or stop it with agentkimi_cancel.",
                    l.turn
                );
            }
            Some((l, Some(result))) => {
                st.state = "finished".into();
                st.turn = l.turn;
                st.last_activity_ms = l.activity().last_ms;
                match &result {
                    Ok(r) => st.last_result = Some(last_result_of(r)),
                    Err(e) => {
                        st.last_result = Some(LastResult {
                            turn: l.turn,
                            status: "failed".into(),
                            summary: String::new(),
                            note: Some(e.clone()),
                        })
                    }
                }
                st.message = format!(
                    "Turn {} ended; collect its whole result (summary and diff) with \
                     agentkimi_wait.",
                    l.turn
                );
            }
            None => {
                if rec.turns > 0
                    && let Some(t) = self.store.turn(id, rec.turns)?
                {
                    if t.status == "running" {
                        st.state = "running".into();
                        st.message = "A turn of this session is recorded as running, but not \
                                      by this server process: another agentkimi process runs \
                                      it, or one stopped during it (then the next \
                                      agentkimi_send records it as interrupted and commits \
                                      its partial work)."
                            .into();
                    } else {
                        st.last_result = Some(LastResult {
                            turn: t.turn,
                            status: t.status.clone(),
                            summary: cut(&t.summary, 500),
                            note: t.note.clone(),
                        });
                    }
                }
                if st.message.is_empty() {
                    st.message = if ended {
                        format!(
                            "The session has ended; its work is on branch {}. agentkimi_diff \
                             still shows it.",
                            ws.branch
                        )
                    } else {
                        "Ready for agentkimi_send; agentkimi_wait returns the last turn's \
                         result."
                            .into()
                    };
                }
            }
        }
        st.idle_s = ((now_ms() - st.last_activity_ms).max(0) as f64) / 1000.0;
        Ok(st)
    }

    /// Waits up to `timeout` for the session's turn to end and returns its
    /// result, or the status when it is still running. Progress lines of the
    /// turn go to `progress` while waiting. A turn that ended earlier is
    /// answered at once: from memory if this process ran it, else from the
    /// store.
    ///
    /// # Errors
    ///
    /// Unknown session, a turn that failed before it could run (the message
    /// says why), or a store failure.
    pub async fn wait(
        &self,
        id: &str,
        timeout: std::time::Duration,
        progress: Progress,
    ) -> Result<Launched, SessionError> {
        if let Some(live) = self.live_entry(id) {
            let mut rx = live.done.subscribe();
            let mut lines = live.lines.subscribe();
            let done = async move {
                let _ = rx.wait_for(Option::is_some).await;
            };
            tokio::pin!(done);
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    () = &mut done => break,
                    line = lines.recv() => {
                        if let Ok(line) = line {
                            progress(line);
                        }
                    }
                    () = &mut deadline => return Ok(Launched::Running(self.status(id).await?)),
                }
            }
            let result = live.result();
            self.collect_live(id, live.turn);
            return match result {
                Some(Ok(r)) => Ok(Launched::Finished(r)),
                Some(Err(e)) => Err(SessionError::Unavailable(e)),
                None => Ok(Launched::Running(self.status(id).await?)),
            };
        }

        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let rec = self.record(id)?;
            if rec.turns == 0 {
                return Ok(Launched::Running(self.status(id).await?));
            }
            let Some(t) = self.store.turn(id, rec.turns)? else {
                return Ok(Launched::Running(self.status(id).await?));
            };
            if t.status != "running" {
                return Ok(Launched::Finished(self.result_from_store(&rec, t).await?));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Launched::Running(self.status(id).await?));
            }
            tokio::time::sleep(STORE_POLL).await;
        }
    }

    /// Stops the session's running turn. The turn commits its partial work
    /// and its result (status `cancelled`) is returned.
    ///
    /// # Errors
    ///
    /// Unknown session, no running turn in this process, or a store failure.
    pub async fn cancel(&self, id: &str) -> Result<Launched, SessionError> {
        let rec = self.record(id)?;
        let Some(live) = self.live_entry(id) else {
            let running = rec.turns > 0
                && self
                    .store
                    .turn(id, rec.turns)?
                    .is_some_and(|t| t.status == "running");
            return Err(SessionError::Unavailable(if running {
                format!(
                    "session {id}'s running turn is not run by this server process, so it \
                     cannot be cancelled from here; cancel it through the client that started \
                     it"
                )
            } else {
                format!(
                    "session {id} has no running turn, so there is nothing to cancel; \
                     agentkimi_status shows its state"
                )
            }));
        };
        live.cancel.cancel();
        tracing::info!(session = %id, turn = live.turn, "turn cancelled by the caller");
        self.wait(id, CANCEL_GRACE, Arc::new(|_| {})).await
    }

    /// Every session this store knows, most recently active first.
    ///
    /// # Errors
    ///
    /// Store failures.
    pub async fn list(&self) -> Result<SessionList, SessionError> {
        let mut sessions = Vec::new();
        for rec in self.store.list_sessions()? {
            let Ok(ws) = workspace_of(&rec) else {
                continue;
            };
            let ended = rec.state == SessionState::Ended;
            let state = match self.live_entry(&rec.id).map(|l| l.result().is_some()) {
                Some(false) => "running",
                Some(true) => "finished",
                None if ended => "ended",
                None if rec.turns > 0
                    && self
                        .store
                        .turn(&rec.id, rec.turns)?
                        .is_some_and(|t| t.status == "running") =>
                {
                    "running"
                }
                None => "idle",
            };
            sessions.push(SessionSummary {
                session_id: rec.id.clone(),
                state: state.into(),
                branch: ws.branch.clone(),
                turns: rec.turns,
                last_activity_ms: rec.updated_at,
                workdir: rec.workdir.clone(),
                worktree: (!ended).then(|| ws.worktree.display().to_string()),
                model: rec.model.clone(),
            });
        }
        Ok(SessionList { sessions })
    }

    /// One page of the session's diff, whole or of one file. A session with
    /// a worktree is diffed against its files on disk (uncommitted changes
    /// included); an ended one from its base commit to its branch tip.
    ///
    /// # Errors
    ///
    /// Unknown session, a path the diff does not touch, an offset past the
    /// end, or a git failure.
    pub async fn diff_page(
        &self,
        id: &str,
        path: Option<&str>,
        offset: usize,
    ) -> Result<DiffPage, SessionError> {
        let rec = self.record(id)?;
        let (source, d) = self.current_diff(&rec).await?;
        let files: Vec<FileChanged> = d.files.iter().map(file_changed).collect();
        let text = match path {
            None => d.text,
            Some(p) => file_section(&d.text, p).ok_or_else(|| {
                SessionError::Invalid(format!(
                    "the diff of session {id} does not touch {p:?}; the changed files are: {}",
                    if files.is_empty() {
                        "none".to_string()
                    } else {
                        files
                            .iter()
                            .map(|f| f.path.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ))
            })?,
        };
        if offset > text.len() || !text.is_char_boundary(offset) {
            return Err(SessionError::Invalid(format!(
                "offset {offset} is not a page start of this diff ({} bytes); pass 0 or a \
                 next_offset from an earlier page",
                text.len()
            )));
        }
        let mut end = (offset + MAX_INLINE_DIFF).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        if end < text.len()
            && let Some(nl) = text[offset..end].rfind('\n')
        {
            end = offset + nl + 1;
        }
        Ok(DiffPage {
            session_id: rec.id,
            source: source.into(),
            path: path.map(str::to_string),
            offset,
            next_offset: (end < text.len()).then_some(end),
            total_bytes: text.len(),
            text: text[offset..end].to_string(),
            files_changed: files,
            incomplete: d.truncated,
        })
    }

    async fn current_diff(
        &self,
        rec: &SessionRecord,
    ) -> Result<(&'static str, workspace::Diff), SessionError> {
        let ws = workspace_of(rec)?;
        if rec.state != SessionState::Ended && ws.worktree.is_dir() {
            Ok(("worktree", blocking(move || workspace::diff(&ws)).await?))
        } else {
            Ok((
                "branch",
                blocking(move || workspace::diff_branch(&ws)).await?,
            ))
        }
    }

    /// Rebuilds a turn's result from its record, with the session's diff as
    /// it is now.
    async fn result_from_store(
        &self,
        rec: &SessionRecord,
        t: TurnRecord,
    ) -> Result<TurnResult, SessionError> {
        let ws = workspace_of(rec)?;
        let mut note = t.note.clone();
        let (diff_text, files) = match self.current_diff(rec).await {
            Ok((_, d)) => (d.text, d.files.iter().map(file_changed).collect()),
            Err(e) => {
                super::append_note(
                    &mut note,
                    &format!("the host could not compute the diff: {e}"),
                );
                (String::new(), Vec::new())
            }
        };
        let (diff, diff_truncated, diff_path) = self.fit_diff(&rec.id, t.turn, diff_text)?;
        // "interrupted" is a stored status the agent never returns: the
        // process died, which the caller sees as a failed turn with a note.
        let status: TurnStatus =
            serde_json::from_value(serde_json::Value::String(t.status.clone()))
                .unwrap_or(TurnStatus::Failed);
        if t.status == "interrupted" && note.is_none() {
            note = Some("the server stopped during this turn".into());
        }
        let tool_calls: Vec<ToolCallRecord> =
            serde_json::from_value(t.tool_calls).unwrap_or_default();
        Ok(TurnResult {
            session_id: rec.id.clone(),
            turn: t.turn,
            status,
            test_output: agent::test_output(&t.summary),
            summary: t.summary,
            diff,
            diff_truncated,
            diff_path,
            files_changed: files,
            branch: ws.branch.clone(),
            worktree: ws.worktree.display().to_string(),
            commit: None,
            steps: t.steps,
            // A stored turn keeps its tool calls; the shell commands are
            // the Bash calls among them (their target is the command line,
            // shortened).
            commands: tool_calls
                .iter()
                .filter(|c| c.name == "Bash")
                .map(|c| agent::CommandRecord {
                    command: c.target.clone(),
                    exit_code: c.exit_code,
                    duration_ms: c.duration_ms,
                    timed_out: false,
                    background: false,
                })
                .collect(),
            todos: self.todos_of(&rec.id),
            tool_calls,
            usage: serde_json::from_value(t.usage).unwrap_or_default(),
            session_usage: self.session_usage(&rec.id),
            note,
            duration_ms: t
                .ended_at
                .map_or(0, |e| u64::try_from(e - t.started_at).unwrap_or(0)),
        })
    }
}

fn file_changed(f: &workspace::FileChange) -> FileChanged {
    FileChanged {
        path: f.path.clone(),
        status: f.status.as_str().to_string(),
        additions: f.additions,
        deletions: f.deletions,
    }
}

/// The part of a patch about one file: from its `diff --git` header to the
/// next one. Matches the old or the new path.
fn file_section(text: &str, path: &str) -> Option<String> {
    let path = path.trim_start_matches("./");
    let old = format!("diff --git a/{path} ");
    let new = format!(" b/{path}");
    let mut out = String::new();
    let mut inside = false;
    for line in text.split_inclusive('\n') {
        if let Some(header) = line.strip_prefix("diff --git ").map(|_| line.trim_end()) {
            inside = header.starts_with(&old) || header.ends_with(&new);
        }
        if inside {
            out.push_str(line);
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_section_picks_one_file() {
        let text = "diff --git a/a.rs b/a.rs\n+1\ndiff --git a/src/b.rs b/src/b.rs\n+2\n+3\n";
        assert_eq!(
            file_section(text, "src/b.rs").as_deref(),
            Some("diff --git a/src/b.rs b/src/b.rs\n+2\n+3\n")
        );
        assert_eq!(
            file_section(text, "a.rs").as_deref(),
            Some("diff --git a/a.rs b/a.rs\n+1\n")
        );
        assert_eq!(file_section(text, "b.rs"), None);
    }

    #[test]
    fn options_may_tighten_but_not_loosen_the_network() {
        let mut config =
            Config::from_lookup(|k| (k == "AGENTKIMI_HOME").then(|| "/nonexistent".into()))
                .unwrap();
        config.network = Network::Off;
        let on = SessionOptions {
            network: Some("on".into()),
            ..SessionOptions::default()
        };
        let e = on.check(&config).unwrap_err().to_string();
        assert!(e.contains("only make the policy stricter"), "{e}");
        let off = SessionOptions {
            network: Some("off".into()),
            ..SessionOptions::default()
        };
        off.check(&config).unwrap();
        config.network = Network::On;
        on.check(&config).unwrap();
        off.check(&config).unwrap();
        let bad = SessionOptions {
            max_steps: Some(0),
            ..SessionOptions::default()
        };
        assert!(
            bad.check(&config)
                .unwrap_err()
                .to_string()
                .contains("max_steps")
        );
    }
}
