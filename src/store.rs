//! The session store: SQLite in WAL mode under `$AGENTKIMI_HOME`.
//!
//! Three main tables: `sessions` (one row per session: its workspace and
//! state), `messages` (the whole transcript, one row per message, written as
//! it happens so a crash loses at most the message in flight), and `turns`
//! (one row per turn: what was asked, how it ended, what it cost). Two small
//! ones hold the state the model's tools keep per session: `todos` (the
//! TodoWrite list) and `file_reads` (which files the model has read, for the
//! read-before-write rule).
//!
//! Several server processes may share one store (each MCP client starts its
//! own server). SQLite serialises their writes; a per-session *lease* (the
//! pid and start time of the process driving a turn) keeps two processes from
//! running turns on one session at once, and lets a later process reclaim a
//! session whose driver died.

use std::{
    path::Path,
    sync::{Mutex, MutexGuard},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

/// Schema version written to `PRAGMA user_version`. Bump it with a migration
/// step in [`Store::migrate`] whenever the schema changes.
const SCHEMA_VERSION: i64 = 2;

/// Lifecycle of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Accepts turns.
    Active,
    /// `agentkimi_end` ran: the worktree is gone, the branch stays.
    Ended,
}

impl SessionState {
    /// The name stored in the database and shown to people.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Active => "active",
            SessionState::Ended => "ended",
        }
    }

    fn parse(s: &str) -> SessionState {
        if s == "ended" {
            SessionState::Ended
        } else {
            SessionState::Active
        }
    }
}

/// One session as stored.
#[derive(Debug, Clone)]
pub struct SessionRecord {
    /// `kimi-…` identifier, also the worktree and branch name.
    pub id: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Time of the last change, milliseconds since the Unix epoch.
    pub updated_at: i64,
    /// Lifecycle state.
    pub state: SessionState,
    /// The serialised workspace (see `workspace::Workspace`).
    pub workspace: Value,
    /// The `workdir` the caller gave, if any.
    pub workdir: Option<String>,
    /// Model used by this session.
    pub model: String,
    /// Number of turns started so far.
    pub turns: u32,
    /// Turns in a row that failed; reset by a turn that completes.
    pub failed_turns: u32,
}

/// One transcript message as stored: a role and Anthropic-style content
/// blocks, kept verbatim (thinking blocks and tool-call ids included).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// `user` or `assistant`.
    pub role: String,
    /// The content blocks.
    pub content: Value,
}

/// One turn as stored.
#[derive(Debug, Clone, Default)]
pub struct TurnRecord {
    /// Session the turn belongs to.
    pub session_id: String,
    /// Turn number, from 1.
    pub turn: u32,
    /// Start time, milliseconds since the Unix epoch.
    pub started_at: i64,
    /// End time; `None` while running or when the process died mid-turn.
    pub ended_at: Option<i64>,
    /// `running`, `completed`, `step_limit`, `timeout`, `cancelled`,
    /// `failed` or `interrupted`.
    pub status: String,
    /// The prompt or message that started the turn.
    pub prompt: String,
    /// Final assistant text.
    pub summary: String,
    /// Model calls made.
    pub steps: u32,
    /// Tool calls made, as JSON.
    pub tool_calls: Value,
    /// Token usage, as JSON.
    pub usage: Value,
    /// Why the turn stopped early, if it did.
    pub note: Option<String>,
}

/// Handle to the SQLite store. Cheap to share behind an `Arc`.
pub struct Store {
    conn: Mutex<Connection>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) the store at `path` and brings its schema
    /// up to date.
    ///
    /// # Errors
    ///
    /// Fails when the file cannot be opened or was written by a newer
    /// agentkimi (a schema version above ours).
    pub fn open(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)
            .with_context(|| format!("cannot open the session store {}", path.display()))?;
        // WAL lets readers in other server processes proceed while one
        // writes; the busy timeout makes a writer wait for another instead of
        // failing at once.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let store = Store {
            conn: Mutex::new(conn),
        };
        store.migrate()?;
        Ok(store)
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable: every
        // write is a single statement or a transaction that rolled back.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn migrate(&self) -> Result<()> {
        let conn = self.lock();
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            bail!(
                "the session store was written by a newer agentkimi (schema {version}, this one \
                 knows {SCHEMA_VERSION}); upgrade agentkimi or point AGENTKIMI_HOME elsewhere"
            );
        }
        if version < 1 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE IF NOT EXISTS sessions (
                     id TEXT PRIMARY KEY,
                     created_at INTEGER NOT NULL,
                     updated_at INTEGER NOT NULL,
                     state TEXT NOT NULL,
                     workspace TEXT NOT NULL,
                     workdir TEXT,
                     model TEXT NOT NULL,
                     turns INTEGER NOT NULL DEFAULT 0,
                     failed_turns INTEGER NOT NULL DEFAULT 0,
                     lease_pid INTEGER,
                     lease_start INTEGER
                 );
                 CREATE TABLE IF NOT EXISTS messages (
                     session_id TEXT NOT NULL,
                     seq INTEGER NOT NULL,
                     turn INTEGER NOT NULL,
                     role TEXT NOT NULL,
                     content TEXT NOT NULL,
                     PRIMARY KEY (session_id, seq)
                 );
                 CREATE TABLE IF NOT EXISTS turns (
                     session_id TEXT NOT NULL,
                     turn INTEGER NOT NULL,
                     started_at INTEGER NOT NULL,
                     ended_at INTEGER,
                     status TEXT NOT NULL,
                     prompt TEXT NOT NULL,
                     summary TEXT NOT NULL DEFAULT '',
                     steps INTEGER NOT NULL DEFAULT 0,
                     tool_calls TEXT NOT NULL DEFAULT '[]',
                     usage TEXT NOT NULL DEFAULT '{}',
                     note TEXT,
                     PRIMARY KEY (session_id, turn)
                 );
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?;
        }
        if version < 2 {
            // The model's todo list (one JSON array per session); the files
            // it has read, with their state at that moment, so the
            // read-before-write rule holds across turns and restarts; and
            // per-session options (model, limits, instructions, network)
            // chosen on agentkimi_start, reused by every later turn.
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE IF NOT EXISTS todos (
                     session_id TEXT PRIMARY KEY,
                     todos TEXT NOT NULL,
                     updated_at INTEGER NOT NULL
                 );
                 CREATE TABLE IF NOT EXISTS file_reads (
                     session_id TEXT NOT NULL,
                     path TEXT NOT NULL,
                     mtime_ns INTEGER NOT NULL,
                     size INTEGER NOT NULL,
                     PRIMARY KEY (session_id, path)
                 );
                 ALTER TABLE sessions ADD COLUMN options TEXT NOT NULL DEFAULT '{}';
                 PRAGMA user_version = 2;
                 COMMIT;",
            )?;
        }
        Ok(())
    }

    /// The session's todo list as last written by the model's TodoWrite, or
    /// `None` when it never wrote one.
    ///
    /// # Errors
    ///
    /// Database errors or a corrupt row.
    pub fn todos(&self, session_id: &str) -> Result<Option<Value>> {
        let text: Option<String> = self
            .lock()
            .query_row(
                "SELECT todos FROM todos WHERE session_id = ?1",
                params![session_id],
                |r| r.get(0),
            )
            .optional()?;
        text.map(|t| serde_json::from_str(&t).context("a session's todo list is corrupt"))
            .transpose()
    }

    /// Replaces the session's todo list.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn set_todos(&self, session_id: &str, todos: &Value) -> Result<()> {
        self.lock().execute(
            "INSERT INTO todos (session_id, todos, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (session_id) DO UPDATE SET todos = ?2, updated_at = ?3",
            params![session_id, todos.to_string(), now_ms()],
        )?;
        Ok(())
    }

    /// The files the model has read (or written) in the session: path,
    /// modification time in nanoseconds and size at that moment.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn file_reads(&self, session_id: &str) -> Result<Vec<(String, i64, i64)>> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT path, mtime_ns, size FROM file_reads WHERE session_id = ?1")?;
        let rows = stmt
            .query_map(params![session_id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Records that the model has seen `path` in the state given by
    /// `mtime_ns` and `size`, replacing an earlier record.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn record_file_read(
        &self,
        session_id: &str,
        path: &str,
        mtime_ns: i64,
        size: i64,
    ) -> Result<()> {
        self.lock().execute(
            "INSERT INTO file_reads (session_id, path, mtime_ns, size) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (session_id, path) DO UPDATE SET mtime_ns = ?3, size = ?4",
            params![session_id, path, mtime_ns, size],
        )?;
        Ok(())
    }

    /// Records a new session.
    ///
    /// # Errors
    ///
    /// Database errors, including a duplicate id.
    pub fn create_session(&self, rec: &SessionRecord) -> Result<()> {
        self.lock().execute(
            "INSERT INTO sessions (id, created_at, updated_at, state, workspace, workdir, model,
                                   turns, failed_turns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                rec.id,
                rec.created_at,
                rec.updated_at,
                rec.state.as_str(),
                rec.workspace.to_string(),
                rec.workdir,
                rec.model,
                rec.turns,
                rec.failed_turns
            ],
        )?;
        Ok(())
    }

    /// Loads one session, `None` when the id is unknown.
    ///
    /// # Errors
    ///
    /// Database errors or a corrupt row.
    pub fn session(&self, id: &str) -> Result<Option<SessionRecord>> {
        let conn = self.lock();
        let row = conn
            .query_row(
                "SELECT id, created_at, updated_at, state, workspace, workdir, model, turns,
                        failed_turns
                 FROM sessions WHERE id = ?1",
                params![id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, Option<String>>(5)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, u32>(7)?,
                        r.get::<_, u32>(8)?,
                    ))
                },
            )
            .optional()?;
        let Some((id, created_at, updated_at, state, workspace, workdir, model, turns, failed)) =
            row
        else {
            return Ok(None);
        };
        Ok(Some(SessionRecord {
            id,
            created_at,
            updated_at,
            state: SessionState::parse(&state),
            workspace: serde_json::from_str(&workspace)
                .context("a session's workspace record is corrupt")?,
            workdir,
            model,
            turns,
            failed_turns: failed,
        }))
    }

    /// Every session, most recently active first.
    ///
    /// # Errors
    ///
    /// Database errors or a corrupt row.
    pub fn list_sessions(&self) -> Result<Vec<SessionRecord>> {
        let ids: Vec<String> = {
            let conn = self.lock();
            let mut stmt = conn.prepare("SELECT id FROM sessions ORDER BY updated_at DESC")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        // One query per session keeps a single row decoder; the list is
        // small (sessions are created by hand, one per task).
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(rec) = self.session(&id)? {
                out.push(rec);
            }
        }
        Ok(out)
    }

    /// Stores the options a session was started with (a JSON object).
    /// Ids of every session, most recently updated first.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn set_session_options(&self, id: &str, options: &Value) -> Result<()> {
        self.lock().execute(
            "UPDATE sessions SET options = ?2 WHERE id = ?1",
            params![id, options.to_string()],
        )?;
        Ok(())
    }

    /// The options a session was started with; an empty object when none
    /// were given or the session is unknown.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn session_options(&self, id: &str) -> Result<Value> {
        let text: Option<String> = self
            .lock()
            .query_row(
                "SELECT options FROM sessions WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(text
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_else(|| Value::Object(Default::default())))
    }

    /// The recorded token usage of each of a session's turns, as JSON, in
    /// turn order.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn turn_usages(&self, session_id: &str) -> Result<Vec<Value>> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT usage FROM turns WHERE session_id = ?1 ORDER BY turn")?;
        let rows = stmt.query_map(params![session_id], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(serde_json::from_str(&row?).unwrap_or(Value::Null));
        }
        Ok(out)
    }

    /// Every session id, most recently active first.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn session_ids(&self) -> Result<Vec<String>> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT id FROM sessions ORDER BY updated_at DESC, id")?;
        let ids = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(ids)
    }

    /// Marks a session ended.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn end_session(&self, id: &str) -> Result<()> {
        self.lock().execute(
            "UPDATE sessions SET state = 'ended', updated_at = ?2 WHERE id = ?1",
            params![id, now_ms()],
        )?;
        Ok(())
    }

    /// Takes the session's lease for this process, so no other process runs a
    /// turn on it at the same time. Returns `false` when a live process holds
    /// it. A lease held by a process that no longer exists (or whose pid was
    /// reused, told apart by its start time) is taken over.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn acquire_lease(&self, id: &str) -> Result<bool> {
        let me = process_identity(std::process::id());
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let holder: Option<(Option<u32>, Option<i64>)> = tx
            .query_row(
                "SELECT lease_pid, lease_start FROM sessions WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((pid, start)) = holder else {
            bail!("unknown session {id}");
        };
        if let (Some(pid), Some(start)) = (pid, start)
            && process_identity(pid) == Some((pid, start))
        {
            return Ok(false);
        }
        let Some((my_pid, my_start)) = me else {
            bail!("cannot read this process's start time from /proc");
        };
        tx.execute(
            "UPDATE sessions SET lease_pid = ?2, lease_start = ?3 WHERE id = ?1",
            params![id, my_pid, my_start],
        )?;
        tx.commit()?;
        Ok(true)
    }

    /// Gives the session's lease back.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn release_lease(&self, id: &str) -> Result<()> {
        self.lock().execute(
            "UPDATE sessions SET lease_pid = NULL, lease_start = NULL
             WHERE id = ?1 AND lease_pid = ?2",
            params![id, std::process::id()],
        )?;
        Ok(())
    }

    /// Appends one message to the session's transcript and returns its
    /// sequence number.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn append_message(&self, session_id: &str, turn: u32, msg: &StoredMessage) -> Result<i64> {
        let conn = self.lock();
        let seq: i64 = conn.query_row(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM messages WHERE session_id = ?1",
            params![session_id],
            |r| r.get(0),
        )?;
        conn.execute(
            "INSERT INTO messages (session_id, seq, turn, role, content) VALUES (?1, ?2, ?3, ?4, \
             ?5)",
            params![session_id, seq, turn, msg.role, msg.content.to_string()],
        )?;
        Ok(seq)
    }

    /// The whole transcript of a session, oldest first.
    ///
    /// # Errors
    ///
    /// Database errors or a corrupt row.
    pub fn messages(&self, session_id: &str) -> Result<Vec<StoredMessage>> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT role, content FROM messages WHERE session_id = ?1 ORDER BY seq")?;
        let rows = stmt.query_map(params![session_id], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (role, content) = row?;
            out.push(StoredMessage {
                role,
                content: serde_json::from_str(&content)
                    .context("a transcript message is corrupt")?,
            });
        }
        Ok(out)
    }

    /// Starts a turn: bumps the session's turn count and records the turn as
    /// running. Returns the new turn number.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn begin_turn(&self, session_id: &str, prompt: &str) -> Result<u32> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let turn: u32 = tx.query_row(
            "SELECT turns + 1 FROM sessions WHERE id = ?1",
            params![session_id],
            |r| r.get(0),
        )?;
        let now = now_ms();
        tx.execute(
            "UPDATE sessions SET turns = ?2, updated_at = ?3 WHERE id = ?1",
            params![session_id, turn, now],
        )?;
        tx.execute(
            "INSERT INTO turns (session_id, turn, started_at, status, prompt)
             VALUES (?1, ?2, ?3, 'running', ?4)",
            params![session_id, turn, now, prompt],
        )?;
        tx.commit()?;
        Ok(turn)
    }

    /// Records how a turn ended, and keeps the session's count of failed
    /// turns in a row.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn finish_turn(&self, rec: &TurnRecord) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let now = now_ms();
        tx.execute(
            "UPDATE turns SET ended_at = ?3, status = ?4, summary = ?5, steps = ?6,
                              tool_calls = ?7, usage = ?8, note = ?9
             WHERE session_id = ?1 AND turn = ?2",
            params![
                rec.session_id,
                rec.turn,
                rec.ended_at.unwrap_or(now),
                rec.status,
                rec.summary,
                rec.steps,
                rec.tool_calls.to_string(),
                rec.usage.to_string(),
                rec.note
            ],
        )?;
        let failed_sql = if rec.status == "failed" {
            "UPDATE sessions SET failed_turns = failed_turns + 1, updated_at = ?2 WHERE id = ?1"
        } else {
            "UPDATE sessions SET failed_turns = 0, updated_at = ?2 WHERE id = ?1"
        };
        tx.execute(failed_sql, params![rec.session_id, now])?;
        tx.commit()?;
        Ok(())
    }

    /// Marks turns left `running` by a process that died as `interrupted`.
    /// Call with the session's lease held, so no live process owns them.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn mark_interrupted(&self, session_id: &str) -> Result<usize> {
        Ok(self.lock().execute(
            "UPDATE turns SET status = 'interrupted', ended_at = ?2,
                              note = 'the server stopped during this turn'
             WHERE session_id = ?1 AND status = 'running'",
            params![session_id, now_ms()],
        )?)
    }

    /// Ids of active sessions with a turn recorded as running (by this or
    /// another process, alive or dead).
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn sessions_with_running_turns(&self) -> Result<Vec<String>> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT DISTINCT t.session_id FROM turns t JOIN sessions s ON s.id = t.session_id
             WHERE t.status = 'running' AND s.state = 'active'",
        )?;
        let ids = stmt
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(ids)
    }

    /// Every session's id and state.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn session_states(&self) -> Result<Vec<(String, SessionState)>> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT id, state FROM sessions")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    SessionState::parse(&r.get::<_, String>(1)?),
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    /// Loads one turn record.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn turn(&self, session_id: &str, turn: u32) -> Result<Option<TurnRecord>> {
        let conn = self.lock();
        let rec = conn
            .query_row(
                "SELECT started_at, ended_at, status, prompt, summary, steps, tool_calls, usage,
                        note
                 FROM turns WHERE session_id = ?1 AND turn = ?2",
                params![session_id, turn],
                |r| {
                    Ok(TurnRecord {
                        session_id: session_id.to_string(),
                        turn,
                        started_at: r.get(0)?,
                        ended_at: r.get(1)?,
                        status: r.get(2)?,
                        prompt: r.get(3)?,
                        summary: r.get(4)?,
                        steps: r.get(5)?,
                        tool_calls: serde_json::from_str(&r.get::<_, String>(6)?)
                            .unwrap_or(Value::Null),
                        usage: serde_json::from_str(&r.get::<_, String>(7)?).unwrap_or(Value::Null),
                        note: r.get(8)?,
                    })
                },
            )
            .optional()?;
        Ok(rec)
    }
}

/// The pid and kernel start time of a live process, or `None` when no
/// process has that pid. The start time tells a reused pid from the original.
fn process_identity(pid: u32) -> Option<(u32, i64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses; the
    // fields after the last ')' are plain numbers. starttime is field 22.
    let rest = &stat[stat.rfind(')')? + 1..];
    let start = rest.split_whitespace().nth(19)?.parse().ok()?;
    Some((pid, start))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn session(id: &str) -> SessionRecord {
        SessionRecord {
            id: id.into(),
            created_at: now_ms(),
            updated_at: now_ms(),
            state: SessionState::Active,
            workspace: json!({"worktree": "/w"}),
            workdir: None,
            model: "m".into(),
            turns: 0,
            failed_turns: 0,
        }
    }

    #[test]
    fn transcript_round_trips_verbatim_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        store.create_session(&session("kimi-a")).unwrap();
        let thinking = json!([{"type": "thinking", "thinking": "hm", "signature": "s=="},
                              {"type": "tool_use", "id": "functions.Write:0", "name": "Write",
                               "input": {"file_path": "a"}}]);
        store
            .append_message(
                "kimi-a",
                1,
                &StoredMessage {
                    role: "user".into(),
                    content: json!([{"type":"text","text":"hi"}]),
                },
            )
            .unwrap();
        store
            .append_message(
                "kimi-a",
                1,
                &StoredMessage {
                    role: "assistant".into(),
                    content: thinking.clone(),
                },
            )
            .unwrap();
        drop(store);

        let store = Store::open(&dir.path().join("db")).unwrap();
        let msgs = store.messages("kimi-a").unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[1].content, thinking);
    }

    #[test]
    fn turns_count_and_failures_reset() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        store.create_session(&session("kimi-b")).unwrap();
        let t1 = store.begin_turn("kimi-b", "p1").unwrap();
        store
            .finish_turn(&TurnRecord {
                session_id: "kimi-b".into(),
                turn: t1,
                status: "failed".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(store.session("kimi-b").unwrap().unwrap().failed_turns, 1);
        let t2 = store.begin_turn("kimi-b", "p2").unwrap();
        assert_eq!(t2, 2);
        assert_eq!(store.mark_interrupted("kimi-b").unwrap(), 1);
        assert_eq!(
            store.turn("kimi-b", 2).unwrap().unwrap().status,
            "interrupted"
        );
        store
            .finish_turn(&TurnRecord {
                session_id: "kimi-b".into(),
                turn: t2,
                status: "completed".into(),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(store.session("kimi-b").unwrap().unwrap().failed_turns, 0);
    }

    #[test]
    fn lease_is_exclusive_and_dead_holders_are_reclaimed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        store.create_session(&session("kimi-c")).unwrap();
        assert!(store.acquire_lease("kimi-c").unwrap());

        // A second process's view: the lease is held by a live process (us).
        let other = Store::open(&dir.path().join("db")).unwrap();
        {
            let conn = other.lock();
            let (pid, start): (u32, i64) = conn
                .query_row(
                    "SELECT lease_pid, lease_start FROM sessions WHERE id='kimi-c'",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            assert_eq!(pid, std::process::id());
            assert_eq!(Some((pid, start)), process_identity(pid));
        }

        // A holder whose start time does not match (a dead process whose pid
        // was reused) is taken over.
        other
            .lock()
            .execute(
                "UPDATE sessions SET lease_start = 1 WHERE id = 'kimi-c'",
                [],
            )
            .unwrap();
        assert!(other.acquire_lease("kimi-c").unwrap());
        store.release_lease("kimi-c").unwrap();
        assert!(store.acquire_lease("kimi-c").unwrap());
    }

    #[test]
    fn options_list_and_usages_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        store.create_session(&session("kimi-d")).unwrap();
        store.create_session(&session("kimi-e")).unwrap();
        assert_eq!(store.session_options("kimi-d").unwrap(), json!({}));
        store
            .set_session_options("kimi-d", &json!({"max_steps": 4}))
            .unwrap();
        assert_eq!(
            store.session_options("kimi-d").unwrap(),
            json!({"max_steps": 4})
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
        let t = store.begin_turn("kimi-d", "p").unwrap();
        store
            .finish_turn(&TurnRecord {
                session_id: "kimi-d".into(),
                turn: t,
                status: "completed".into(),
                usage: json!({"input_tokens": 7}),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(
            store.turn_usages("kimi-d").unwrap(),
            vec![json!({"input_tokens": 7})]
        );
        let ids: Vec<String> = store
            .list_sessions()
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        // kimi-d was touched last by its turn.
        assert_eq!(ids, ["kimi-d", "kimi-e"]);
    }

    #[test]
    fn a_version_1_store_is_migrated_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let store = Store::open(&path).unwrap();
            store.create_session(&session("kimi-f")).unwrap();
            let conn = store.lock();
            conn.execute_batch(
                "ALTER TABLE sessions DROP COLUMN options; PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert!(store.session("kimi-f").unwrap().is_some());
        assert_eq!(store.session_options("kimi-f").unwrap(), json!({}));
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = Store::open(&path).err().unwrap();
        assert!(err.to_string().contains("newer agentkimi"));
    }
}
