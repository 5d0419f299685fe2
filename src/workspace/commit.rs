//! Committing a turn: stage the whole working tree the way `git add -A`
//! would, then commit on the session branch if anything changed.

use std::{ffi::OsStr, os::unix::ffi::OsStrExt, path::Path};

use git2::{DiffOptions, ErrorClass, ErrorCode, FileMode, Index, Repository};

use super::{Workspace, WorkspaceError, display_path, git_err, open_repo, safety, signature};

/// Message used when the caller passes one that is empty after cleanup.
const FALLBACK_MESSAGE: &str = "agentkimi: turn\n";

/// Stages everything in the working tree and commits it on the session branch.
///
/// Staging matches `git add -A` on the worktree's own index: new, modified
/// and deleted files, `.gitignore` respected, symlinks stored as links
/// (mode 120000) without being followed. FIFOs, sockets and device nodes are
/// skipped without being opened. Nested repositories and submodule pointers
/// are not staged. A file whose path git refuses to store (a `.git`
/// component in disguise, for example) is left out with a warning in the log
/// instead of failing the whole commit.
///
/// If the staged tree equals the tree of the branch tip, nothing is committed
/// and `Ok(None)` is returned. Otherwise a commit with parent = branch tip,
/// author and committer `agentkimi <agentkimi@localhost>` and the given
/// message (whitespace cleaned up) is written to the session branch, and its
/// hex id returned.
///
/// # Errors
///
/// The errors of reopening the workspace (see
/// [`reopen_check`](super::reopen_check)),
/// [`WorkspaceError::UnsafeGitFile`], [`WorkspaceError::Stage`] when a file
/// cannot be read, and git errors.
pub fn commit_turn(ws: &Workspace, message: &str) -> Result<Option<String>, WorkspaceError> {
    let repo = open_repo(ws)?;
    safety::check_git_files(&ws.worktree)?;

    let mut index = repo.index().map_err(git_err("read the worktree's index"))?;
    stage_all(&repo, &mut index)?;
    index
        .write()
        .map_err(git_err("write the worktree's index"))?;
    let tree_id = index
        .write_tree()
        .map_err(git_err("write the staged tree"))?;

    let branch_ref = ws.branch_ref();
    let tip = repo
        .find_reference(&branch_ref)
        .and_then(|reference| reference.peel_to_commit())
        .map_err(git_err(format!("read the session branch {}", ws.branch)))?;
    if tip.tree_id() == tree_id {
        return Ok(None);
    }

    let tree = repo
        .find_tree(tree_id)
        .map_err(git_err("read the staged tree"))?;
    let sig = signature()?;
    let message = match git2::message_prettify(message, None) {
        Ok(clean) if !clean.trim().is_empty() => clean,
        _ => FALLBACK_MESSAGE.to_owned(),
    };
    // libgit2 moves the branch only if it still points at `tip`, the first
    // parent, so a concurrent update fails instead of being overwritten. The
    // branch is named directly, not through HEAD, so the commit lands on the
    // session branch whatever HEAD says.
    let commit = repo
        .commit(Some(&branch_ref), &sig, &sig, &message, &tree, &[&tip])
        .map_err(git_err(format!("commit on {}", ws.branch)))?;
    tracing::debug!(branch = %ws.branch, commit = %commit, "committed turn");
    Ok(Some(commit.to_string()))
}

/// What to do with one path of the index-to-workdir diff.
enum Action {
    Add(Vec<u8>),
    Remove(Vec<u8>),
}

/// Brings the index in line with the working tree.
///
/// This is what libgit2's `git_index_add_all` does internally (diff the index
/// against the working tree, then add or remove each path), spelled out so
/// that one unstorable path is skipped rather than aborting the commit, and
/// so that directories holding their own repository are never opened to
/// read their HEAD.
fn stage_all(repo: &Repository, index: &mut Index) -> Result<(), WorkspaceError> {
    let mut opts = DiffOptions::new();
    opts.include_untracked(true)
        .recurse_untracked_dirs(true)
        .include_typechange(true)
        .ignore_submodules(true);
    let changes = repo
        .diff_index_to_workdir(Some(index), Some(&mut opts))
        .map_err(git_err("compare the working tree with the index"))?;

    // Collect first: the diff was computed from the index, which must not
    // change underneath it.
    let mut actions = Vec::new();
    for delta in changes.deltas() {
        let new = delta.new_file();
        if !new.exists() {
            if let Some(path) = delta.old_file().path_bytes() {
                actions.push(Action::Remove(path.to_vec()));
            }
            continue;
        }
        let Some(path) = new.path_bytes() else {
            continue;
        };
        if matches!(new.mode(), FileMode::Tree | FileMode::Commit) {
            tracing::warn!(
                path = %display_path(path),
                "left a nested repository out of the turn's commit"
            );
            continue;
        }
        actions.push(Action::Add(path.to_vec()));
    }
    drop(changes);

    for action in actions {
        let (result, path) = match &action {
            Action::Add(path) => (index.add_path(bytes_path(path)), path),
            Action::Remove(path) => (index.remove_path(bytes_path(path)), path),
        };
        let Err(source) = result else {
            continue;
        };
        // Index-class errors are refusals of the path itself ("invalid
        // path"); NotFound means the file vanished. Anything else (cannot
        // read, cannot write objects) must not silently drop work.
        if source.class() == ErrorClass::Index || source.code() == ErrorCode::NotFound {
            tracing::warn!(
                path = %display_path(path),
                error = source.message(),
                "left a file git cannot store out of the turn's commit"
            );
            continue;
        }
        return Err(WorkspaceError::Stage {
            path: display_path(path),
            source,
        });
    }
    Ok(())
}

/// A path from git's bytes, without any re-encoding (paths are bytes on Unix).
fn bytes_path(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}
