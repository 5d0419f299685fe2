//! The session diff: base commit → working tree, as git-style patch text and
//! a per-file summary.
//!
//! The diff compares the base commit's tree with the files on disk, so it
//! shows everything the session changed whether or not a turn has been
//! committed yet; the index serves as a cache of file stats. Untracked
//! files are included with their content; `.gitignore` is respected as git
//! does. Files above
//! [`MAX_FILE_SIZE`] count as binary so that libgit2 never loads them whole.

use git2::{Delta, DiffFindOptions, DiffOptions, FileMode, Oid, Patch};
use serde::{Deserialize, Serialize};

use super::{Workspace, WorkspaceError, display_path, git_err, open_repo, safety};

/// Files larger than this (either side) are reported as binary and never
/// read whole into memory.
const MAX_FILE_SIZE: i64 = 1 << 20;

/// Most bytes of patch text [`diff`] returns. Beyond it the text stops at a
/// file boundary and [`Diff::truncated`] is set; the per-file summary stays
/// complete. This bounds host memory when a turn rewrites thousands of files.
pub const DIFF_TEXT_LIMIT: usize = 8 << 20;

/// What happened to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// New in the working tree (tracked or not).
    Added,
    /// Content or mode changed.
    Modified,
    /// Gone from the working tree.
    Deleted,
    /// Moved with identical content.
    Renamed,
    /// Changed kind: regular file ↔ symlink.
    TypeChange,
}

impl ChangeKind {
    /// The kind as shown to people and in results (the serde name).
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Modified => "modified",
            ChangeKind::Deleted => "deleted",
            ChangeKind::Renamed => "renamed",
            ChangeKind::TypeChange => "typechange",
        }
    }
}

/// One changed file in a [`Diff`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileChange {
    /// Path relative to the worktree, escaped for display (see
    /// `display_path`): invalid UTF-8 bytes as `\xNN`, control characters and
    /// backslashes escaped. For a deletion, the old path.
    pub path: String,
    /// For a rename, the path before, escaped the same way.
    pub old_path: Option<String>,
    /// What happened.
    pub status: ChangeKind,
    /// Lines added (0 for binary files).
    pub additions: usize,
    /// Lines deleted (0 for binary files).
    pub deletions: usize,
    /// Whether git treats either side as binary (including files above the
    /// size limit).
    pub binary: bool,
}

/// The session's changes since the base commit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diff {
    /// Git-style unified patch: `diff --git` headers, mode lines,
    /// `---`/`+++`, hunks, `Binary files ... differ`. Paths in headers are
    /// quoted the way git quotes them; content that is not UTF-8 is replaced
    /// lossily.
    pub text: String,
    /// One entry per changed file, in path order.
    pub files: Vec<FileChange>,
    /// True when `text` stopped at [`DIFF_TEXT_LIMIT`] before the last file.
    pub truncated: bool,
}

/// Computes the diff from the session's base commit to the working tree.
///
/// Symlinks are diffed as links (their target text) and never followed.
/// FIFOs, sockets and device nodes are skipped without being opened; a
/// tracked file replaced by one shows as deleted. Nested repositories (a
/// directory with its own `.git`) are left out: their files belong to another
/// repository, and [`commit_turn`](super::commit_turn) leaves them out too.
/// Renames are detected only for identical content.
///
/// # Errors
///
/// The errors of reopening the workspace (see
/// [`reopen_check`](super::reopen_check)),
/// [`WorkspaceError::UnsafeGitFile`] when a `.gitignore`, `.gitattributes` or
/// `.gitmodules` is not a regular file, and git errors.
pub fn diff(ws: &Workspace) -> Result<Diff, WorkspaceError> {
    diff_limited(ws, DIFF_TEXT_LIMIT)
}

/// [`diff`] with the text limit as a parameter, so tests can reach it.
pub(super) fn diff_limited(ws: &Workspace, text_limit: usize) -> Result<Diff, WorkspaceError> {
    let repo = open_repo(ws)?;
    safety::check_git_files(&ws.worktree)?;

    let base = Oid::from_str(&ws.base_commit)
        .and_then(|oid| repo.find_commit(oid))
        .and_then(|commit| commit.tree())
        .map_err(git_err(format!("read the base commit {}", ws.base_commit)))?;
    let mut opts = DiffOptions::new();
    opts.include_untracked(true)
        .recurse_untracked_dirs(true)
        .show_untracked_content(true)
        .include_typechange(true)
        // Submodule status would open the repository a submodule directory
        // points to, which the model controls.
        .ignore_submodules(true)
        .max_size(MAX_FILE_SIZE);
    // Through the index, for its stat cache: without it every tracked file
    // is read and hashed, which on a large repository costs seconds for a
    // one-line change. The index is the host's (the sandbox never sees the
    // git dir), `commit_turn` keeps it equal to the last commit, and libgit2
    // still hashes any file whose size, mtime or ctime moved, so the result
    // is the same base → working tree diff, and the same files the commit
    // takes.
    let changes = repo
        .diff_tree_to_workdir_with_index(Some(&base), Some(&mut opts))
        .map_err(git_err("diff the worktree against the base commit"))?;
    collect(changes, text_limit)
}

/// The diff from the session's base commit to the tip of its branch: what
/// the session's turns committed. Unlike [`diff`] it needs no worktree, so it
/// works for ended sessions; uncommitted changes are not in it.
///
/// # Errors
///
/// [`WorkspaceError::Git`] when the repository, the base commit or the
/// branch cannot be read.
pub fn diff_branch(ws: &Workspace) -> Result<Diff, WorkspaceError> {
    let repo = super::open_branch_repo(ws)?;
    let base = Oid::from_str(&ws.base_commit)
        .and_then(|oid| repo.find_commit(oid))
        .and_then(|commit| commit.tree())
        .map_err(git_err(format!("read the base commit {}", ws.base_commit)))?;
    let tip = repo
        .find_reference(&ws.branch_ref())
        .and_then(|r| r.peel_to_tree())
        .map_err(git_err(format!("read the session branch {}", ws.branch)))?;
    let mut opts = DiffOptions::new();
    opts.include_typechange(true)
        .ignore_submodules(true)
        .max_size(MAX_FILE_SIZE);
    let changes = repo
        .diff_tree_to_tree(Some(&base), Some(&tip), Some(&mut opts))
        .map_err(git_err("diff the session branch against the base commit"))?;
    collect(changes, DIFF_TEXT_LIMIT)
}

/// Renders `changes` as patch text (up to `text_limit` bytes) and a per-file
/// summary.
fn collect(mut changes: git2::Diff<'_>, text_limit: usize) -> Result<Diff, WorkspaceError> {
    // Similarity scoring would read both sides of every candidate whole, with
    // no size limit; comparing object ids only costs a streamed hash.
    let mut find = DiffFindOptions::new();
    find.renames(true)
        .for_untracked(true)
        .exact_match_only(true);
    changes
        .find_similar(Some(&mut find))
        .map_err(git_err("detect renamed files"))?;

    let mut out = Diff::default();
    for idx in 0..changes.deltas().len() {
        let Some(delta) = changes.get_delta(idx) else {
            continue;
        };
        let Some(status) = change_kind(delta.status()) else {
            continue;
        };
        // Diffing through the index blends base → index with index → working
        // tree, and libgit2 reports a kind change in the second half as a
        // plain modification: tell it from the two sides' modes instead.
        let is_link = |mode: FileMode| mode == FileMode::Link;
        let status = match status {
            ChangeKind::Modified
                if is_link(delta.old_file().mode()) != is_link(delta.new_file().mode()) =>
            {
                ChangeKind::TypeChange
            }
            other => other,
        };
        // An untracked directory shows up as one entry when it holds its own
        // repository; it has no content to show and libgit2 cannot load it.
        if matches!(delta.new_file().mode(), FileMode::Tree | FileMode::Commit) {
            continue;
        }
        let old = delta.old_file().path_bytes().unwrap_or_default();
        let new = delta.new_file().path_bytes().unwrap_or(old);
        let (path, old_path) = match status {
            ChangeKind::Deleted => (display_path(old), None),
            ChangeKind::Renamed => (display_path(new), Some(display_path(old))),
            _ => (display_path(new), None),
        };

        let patch = Patch::from_diff(&changes, idx).map_err(|source| WorkspaceError::Git {
            action: format!("diff {path}"),
            source,
        })?;
        let Some(mut patch) = patch else {
            continue;
        };
        let (_, additions, deletions) =
            patch.line_stats().map_err(|source| WorkspaceError::Git {
                action: format!("count the changed lines of {path}"),
                source,
            })?;
        let binary = patch.delta().flags().is_binary();
        if !out.truncated {
            let text = if unread_new_file(&patch.delta()) {
                new_binary_file_patch(new, delta.new_file().mode())
            } else {
                let buf = patch.to_buf().map_err(|source| WorkspaceError::Git {
                    action: format!("render the patch of {path}"),
                    source,
                })?;
                String::from_utf8_lossy(&buf).into_owned()
            };
            if out.text.len() + text.len() <= text_limit {
                out.text.push_str(&text);
            } else {
                out.truncated = true;
            }
        }

        out.files.push(FileChange {
            path,
            old_path,
            status,
            additions: if binary { 0 } else { additions },
            deletions: if binary { 0 } else { deletions },
            binary,
        });
    }
    Ok(out)
}

/// Whether `delta` is a new file whose content libgit2 never read because it
/// is above the size limit. libgit2 leaves its object id unset and then
/// renders it as a mode change between two empty sides.
fn unread_new_file(delta: &git2::DiffDelta<'_>) -> bool {
    matches!(delta.status(), Delta::Added | Delta::Untracked)
        && delta.new_file().id().is_zero()
        && delta.old_file().id().is_zero()
        && !matches!(delta.new_file().mode(), FileMode::Unreadable)
}

/// The patch git prints for a new binary file, without the `index` line
/// (which would need the file hashed just for display).
fn new_binary_file_patch(path: &[u8], mode: FileMode) -> String {
    let a = quote_path("a/", path);
    let b = quote_path("b/", path);
    format!(
        "diff --git {a} {b}\nnew file mode {:o}\nBinary files /dev/null and {b} differ\n",
        u32::from(mode)
    )
}

/// `prefix` + `path` quoted the way git quotes paths in patch headers: left
/// bare when printable ASCII without `"` or `\`, otherwise in double quotes
/// with C escapes and octal for every other byte.
fn quote_path(prefix: &str, path: &[u8]) -> String {
    let full: Vec<u8> = prefix.bytes().chain(path.iter().copied()).collect();
    let plain = |b: u8| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\';
    if full.iter().all(|&b| plain(b)) {
        return String::from_utf8_lossy(&full).into_owned();
    }
    let mut out = String::from("\"");
    for b in full {
        match b {
            b'\x07' => out.push_str("\\a"),
            b'\x08' => out.push_str("\\b"),
            b'\t' => out.push_str("\\t"),
            b'\n' => out.push_str("\\n"),
            b'\x0b' => out.push_str("\\v"),
            b'\x0c' => out.push_str("\\f"),
            b'\r' => out.push_str("\\r"),
            b'"' | b'\\' => {
                out.push('\\');
                out.push(char::from(b));
            }
            b if plain(b) => out.push(char::from(b)),
            b => out.push_str(&format!("\\{b:03o}")),
        }
    }
    out.push('"');
    out
}

/// Maps libgit2's delta status to ours; `None` for entries that are not
/// changes (unmodified, ignored, unreadable, conflicted).
fn change_kind(status: Delta) -> Option<ChangeKind> {
    match status {
        Delta::Added | Delta::Untracked | Delta::Copied => Some(ChangeKind::Added),
        Delta::Modified => Some(ChangeKind::Modified),
        Delta::Deleted => Some(ChangeKind::Deleted),
        Delta::Renamed => Some(ChangeKind::Renamed),
        Delta::Typechange => Some(ChangeKind::TypeChange),
        Delta::Unmodified | Delta::Ignored | Delta::Unreadable | Delta::Conflicted => None,
    }
}
