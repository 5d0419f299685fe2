//! The read-before-write rule: which files the model has seen in a session,
//! and in what state.
//!
//! Write must not replace, and Edit and MultiEdit must not change, a file the
//! model has not Read in this session, or one that changed since it read it
//! (by a Bash command, a tool run, or a person between turns). That keeps
//! the model from clobbering content it never saw. The executor lives for
//! one turn only, so the ledger is kept on the host: loaded from the store at
//! the start of a turn, checked before a write reaches the sandbox, and
//! updated (in memory and in the store) after every successful Read, Write,
//! Edit and MultiEdit.
//!
//! The sandbox mounts the worktree at its host path, so the host can stat
//! the very file the executor touched. A file's state is its modification
//! time (nanoseconds) and size; a change that keeps both (a rewrite of the
//! same length within the file system's timestamp resolution) goes
//! unnoticed, as it would in any mtime-based check.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
};

use serde_json::Value;

use crate::store::Store;

/// The state of a file when the model last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    /// Modification time in nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Size in bytes.
    pub size: i64,
}

impl FileStamp {
    /// The current state of the regular file at `path`, or `None` when it
    /// does not exist or is not a regular file.
    pub fn of(path: &Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok()?;
        if !meta.is_file() {
            return None;
        }
        Some(FileStamp {
            mtime_ns: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            size: i64::try_from(meta.size()).unwrap_or(i64::MAX),
        })
    }
}

/// The tools whose success means the model has seen the file's content.
const SEEING_TOOLS: &[&str] = &["Read", "Write", "Edit", "MultiEdit"];
/// The tools that change an existing file and so need a prior Read.
const WRITING_TOOLS: &[&str] = &["Write", "Edit", "MultiEdit"];

/// The files the model has seen in one session.
#[derive(Debug, Default)]
pub struct ReadLedger {
    seen: HashMap<PathBuf, FileStamp>,
}

impl ReadLedger {
    /// Loads the session's ledger from the store and completes it from the
    /// transcript.
    ///
    /// The transcript pass covers sessions stored before the ledger existed
    /// and a crash between a tool result and its ledger record: every
    /// successful Read, Write, Edit or MultiEdit in `messages` whose file is
    /// not in the store yet counts as seen in the file's current state.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn load(
        store: &Store,
        session_id: &str,
        worktree: &Path,
        messages: &[crate::llm::Message],
    ) -> anyhow::Result<ReadLedger> {
        let mut ledger = ReadLedger::default();
        for (path, mtime_ns, size) in store.file_reads(session_id)? {
            ledger
                .seen
                .insert(PathBuf::from(path), FileStamp { mtime_ns, size });
        }

        let mut calls: HashMap<&str, (&str, &str)> = HashMap::new();
        for message in messages {
            for block in &message.content {
                match block["type"].as_str() {
                    Some("tool_use") => {
                        if let (Some(id), Some(name), Some(path)) = (
                            block["id"].as_str(),
                            block["name"].as_str(),
                            block["input"]["file_path"].as_str(),
                        ) && SEEING_TOOLS.contains(&name)
                        {
                            calls.insert(id, (name, path));
                        }
                    }
                    Some("tool_result") if block["is_error"] != Value::Bool(true) => {
                        let Some((_, path)) =
                            block["tool_use_id"].as_str().and_then(|id| calls.get(id))
                        else {
                            continue;
                        };
                        let key = key(worktree, path);
                        if ledger.seen.contains_key(&key) {
                            continue;
                        }
                        if let Some(stamp) = FileStamp::of(&key) {
                            store.record_file_read(
                                session_id,
                                &key.to_string_lossy(),
                                stamp.mtime_ns,
                                stamp.size,
                            )?;
                            ledger.seen.insert(key, stamp);
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(ledger)
    }

    /// Checks a call before it runs. Returns a refusal for the model when
    /// `tool` would change an existing file the model has not read, or one
    /// that changed since it read it; `None` otherwise.
    pub fn check(&self, tool: &str, input: &Value, worktree: &Path) -> Option<String> {
        if !WRITING_TOOLS.contains(&tool) {
            return None;
        }
        let file_path = input["file_path"].as_str()?;
        let key = key(worktree, file_path);
        // A file that does not exist yet needs no Read: Write creates it,
        // and Edit reports it missing itself.
        let now = FileStamp::of(&key)?;
        match self.seen.get(&key) {
            None => Some(format!(
                "{tool} refused: {} exists and you have not read it in this session. Read it \
                 first (Read with file_path {file_path:?}), then repeat the {tool} call, so you \
                 do not overwrite content you have not seen.",
                key.display()
            )),
            Some(seen) if *seen != now => Some(format!(
                "{tool} refused: {} changed since you last read it (by a command, a tool or a \
                 person). Read it again to see its current content, then repeat the {tool} \
                 call.",
                key.display()
            )),
            Some(_) => None,
        }
    }

    /// Records the file of a successful Read, Write, Edit or MultiEdit as
    /// seen in its current state, in memory and in the store.
    ///
    /// # Errors
    ///
    /// Database errors.
    pub fn record(
        &mut self,
        store: &Store,
        session_id: &str,
        tool: &str,
        input: &Value,
        worktree: &Path,
    ) -> anyhow::Result<()> {
        if !SEEING_TOOLS.contains(&tool) {
            return Ok(());
        }
        let Some(file_path) = input["file_path"].as_str() else {
            return Ok(());
        };
        let key = key(worktree, file_path);
        let Some(stamp) = FileStamp::of(&key) else {
            return Ok(());
        };
        store.record_file_read(
            session_id,
            &key.to_string_lossy(),
            stamp.mtime_ns,
            stamp.size,
        )?;
        self.seen.insert(key, stamp);
        Ok(())
    }
}

/// The ledger's key for a path from tool input: resolved as the executor
/// resolves it (relative to the worktree), then canonicalised when the file
/// exists, so `a.txt`, `./a.txt`, its absolute path and a link to it are one
/// entry. A path that does not exist is kept lexically with `.` removed.
fn key(worktree: &Path, file_path: &str) -> PathBuf {
    let joined = if Path::new(file_path).is_absolute() {
        PathBuf::from(file_path)
    } else {
        worktree.join(file_path)
    };
    std::fs::canonicalize(&joined).unwrap_or_else(|_| {
        joined
            .components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::llm::Message;

    fn setup() -> (tempfile::TempDir, Store, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).unwrap();
        let wt = std::fs::canonicalize(dir.path()).unwrap().join("wt");
        std::fs::create_dir_all(&wt).unwrap();
        (dir, store, wt)
    }

    /// Sets a file's content and a distinct mtime, so a change is visible
    /// even on file systems with coarse timestamps.
    fn put(path: &Path, content: &str, secs: i64) {
        std::fs::write(path, content).unwrap();
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    #[test]
    fn writes_need_a_read_and_a_fresh_one() {
        let (_d, store, wt) = setup();
        put(&wt.join("a.txt"), "one\n", 1_000);
        let mut ledger = ReadLedger::default();
        let write = json!({"file_path": "a.txt", "content": "x"});

        let refusal = ledger.check("Write", &write, &wt).unwrap();
        assert!(refusal.starts_with(&format!(
            "Write refused: {} exists and you have not read it",
            wt.join("a.txt").display()
        )));
        for tool in ["Edit", "MultiEdit"] {
            assert!(ledger.check(tool, &write, &wt).is_some(), "{tool}");
        }
        // New files and other tools pass.
        assert!(
            ledger
                .check("Write", &json!({"file_path": "new.txt"}), &wt)
                .is_none()
        );
        assert!(ledger.check("Read", &write, &wt).is_none());

        // A Read through another spelling of the path counts.
        let abs = json!({"file_path": wt.join("./a.txt").to_str().unwrap()});
        ledger.record(&store, "s", "Read", &abs, &wt).unwrap();
        assert!(ledger.check("Write", &write, &wt).is_none());

        // A change behind the model's back needs a new Read.
        put(&wt.join("a.txt"), "two, longer\n", 2_000);
        let refusal = ledger.check("Edit", &write, &wt).unwrap();
        assert!(
            refusal.contains("changed since you last read it"),
            "{refusal}"
        );

        // The model's own write keeps the file seen.
        ledger.record(&store, "s", "Read", &write, &wt).unwrap();
        put(&wt.join("a.txt"), "three\n", 3_000);
        ledger.record(&store, "s", "Write", &write, &wt).unwrap();
        assert!(ledger.check("Edit", &write, &wt).is_none());
    }

    #[test]
    fn the_ledger_survives_in_the_store_and_is_rebuilt_from_the_transcript() {
        let (_d, store, wt) = setup();
        put(&wt.join("a.txt"), "a\n", 1_000);
        put(&wt.join("b.txt"), "b\n", 1_000);
        put(&wt.join("c.txt"), "c\n", 1_000);
        let mut first = ReadLedger::default();
        first
            .record(&store, "s", "Read", &json!({"file_path": "a.txt"}), &wt)
            .unwrap();

        // A changed file stays stale after a reload: the stored stamp wins.
        put(&wt.join("a.txt"), "a changed\n", 2_000);
        let transcript = vec![
            Message {
                role: "assistant".into(),
                content: vec![
                    json!({
                        "type": "tool_use",
                        "id": "t1",
                        "name": "Read",
                        "input": {
                            "file_path": "b.txt"
                        }
                    }),
                    json!({
                        "type": "tool_use",
                        "id": "t2",
                        "name": "Read",
                        "input": {
                            "file_path": "c.txt"
                        }
                    }),
                    json!({
                        "type": "tool_use",
                        "id": "t3",
                        "name": "Read",
                        "input": {
                            "file_path": "a.txt"
                        }
                    }),
                ],
            },
            Message {
                role: "user".into(),
                content: vec![
                    json!({
                        "type": "tool_result",
                        "tool_use_id": "t1",
                        "content": "ok",
                        "is_error": false
                    }),
                    json!({
                        "type": "tool_result",
                        "tool_use_id": "t2",
                        "content": "no",
                        "is_error": true
                    }),
                    json!({
                        "type": "tool_result",
                        "tool_use_id": "t3",
                        "content": "ok",
                        "is_error": false
                    }),
                ],
            },
        ];
        let ledger = ReadLedger::load(&store, "s", &wt, &transcript).unwrap();
        let w = |p: &str| json!({"file_path": p, "content": ""});
        assert!(
            ledger
                .check("Write", &w("a.txt"), &wt)
                .unwrap()
                .contains("changed since")
        );
        assert!(ledger.check("Write", &w("b.txt"), &wt).is_none());
        assert!(
            ledger
                .check("Write", &w("c.txt"), &wt)
                .unwrap()
                .contains("not read it")
        );
        // Another session shares nothing.
        let other = ReadLedger::load(&store, "other", &wt, &[]).unwrap();
        assert!(other.check("Write", &w("b.txt"), &wt).is_some());
    }
}
