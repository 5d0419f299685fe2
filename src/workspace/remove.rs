//! Ending a session: removing the worktree directory and, for a linked
//! worktree, git's metadata about it. The session branch and its commits
//! stay, in the user's repository or in the throwaway git dir.

use std::{
    ffi::OsStr,
    fs::{self, Permissions},
    io,
    os::unix::fs::PermissionsExt,
    path::Path,
};

use git2::{Config, ErrorCode, Repository, RepositoryOpenFlags, WorktreePruneOptions};

use super::{Mode, Workspace, WorkspaceError, git_err, io_err};

/// Removes the session's worktree and keeps its branch.
///
/// The worktree directory is deleted without following symlinks. If the
/// worktree path itself has been replaced by a symlink (or anything else
/// that is not a directory), only that entry is unlinked and whatever it
/// points to is left alone. For a linked worktree, git's metadata for it
/// (`<common git dir>/worktrees/<id>`) is then pruned, so `git worktree list`
/// no longer shows it. A throwaway repository's git dir is kept, because the
/// branch lives there, and turned into a bare repository so that git tools
/// can still read and fetch from it without a work tree.
///
/// Removing an already removed workspace succeeds.
///
/// # Errors
///
/// [`WorkspaceError::Io`] when the directory cannot be removed (then the
/// metadata is left in place, so that `git worktree list` still shows the
/// leftover), and git errors from pruning.
pub fn remove(ws: &Workspace) -> Result<(), WorkspaceError> {
    remove_worktree_dir(&ws.worktree)?;
    match ws.mode {
        Mode::Linked => prune_metadata(ws)?,
        Mode::Throwaway => make_bare(&ws.gitdir)?,
    }
    tracing::debug!(worktree = %ws.worktree.display(), "removed worktree");
    Ok(())
}

/// Deletes the worktree directory, or just the entry in its place.
fn remove_worktree_dir(path: &Path) -> Result<(), WorkspaceError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("inspect", path)(e)),
    };
    if !meta.is_dir() {
        // `symlink_metadata` does not follow links, so a symlink lands here
        // and is unlinked, never recursed into.
        return fs::remove_file(path).map_err(io_err("remove", path));
    }

    // std's remove_dir_all works relative to directory handles and does not
    // follow symlinks inside the tree, so links planted by the model are
    // unlinked, not followed.
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            // The model may have made directories read-only (some build tools
            // do); the files are ours, so restore write access and retry.
            make_dirs_writable(path);
            fs::remove_dir_all(path).map_err(io_err("remove the worktree", path))
        }
        Err(e) => Err(io_err("remove the worktree", path)(e)),
    }
}

/// Gives the owner full access to every real directory under `root`, so that
/// their entries can be deleted. Best effort: errors surface in the retry.
fn make_dirs_writable(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let _ = fs::set_permissions(&dir, Permissions::from_mode(0o700));
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            // `file_type` does not follow symlinks, so only real directories
            // are changed.
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
}

/// Prunes git's record of the linked worktree from the main repository.
fn prune_metadata(ws: &Workspace) -> Result<(), WorkspaceError> {
    if fs::symlink_metadata(&ws.gitdir).is_err() {
        return Ok(());
    }
    // The worktree's git dir is `<common git dir>/worktrees/<name>`; that
    // layout is libgit2's and git's, so the common dir and the name follow.
    let name = ws.gitdir.file_name().and_then(OsStr::to_str);
    let common = ws.gitdir.parent().and_then(Path::parent);
    let (Some(name), Some(common)) = (name, common) else {
        return Ok(());
    };

    let flags = RepositoryOpenFlags::NO_SEARCH | RepositoryOpenFlags::NO_DOTGIT;
    let repo = Repository::open_ext(common, flags, std::iter::empty::<&OsStr>()).map_err(
        git_err(format!("open the repository at {}", common.display())),
    )?;
    let worktree = match repo.find_worktree(name) {
        Ok(worktree) => worktree,
        Err(e) if e.code() == ErrorCode::NotFound => return Ok(()),
        Err(e) => return Err(git_err(format!("find worktree {name}"))(e)),
    };
    // The directory is already gone; `valid` and `locked` make the prune go
    // ahead even if someone locked the worktree, `working_tree(false)` keeps
    // libgit2 from deleting any directory itself.
    let mut opts = WorktreePruneOptions::new();
    opts.valid(true).locked(true).working_tree(false);
    worktree
        .prune(Some(&mut opts))
        .map_err(git_err(format!("prune worktree {name}")))
}

/// Marks a throwaway git dir as bare once its work tree is gone. Without this,
/// its `core.worktree` names a missing directory and the git CLI refuses to
/// run in it ("Invalid path").
fn make_bare(gitdir: &Path) -> Result<(), WorkspaceError> {
    let config_path = gitdir.join("config");
    if !config_path.is_file() {
        return Ok(());
    }
    // The config file is opened directly: opening the repository would make
    // libgit2 resolve the missing work tree.
    let mut config =
        Config::open(&config_path).map_err(git_err(format!("open {}", config_path.display())))?;
    config
        .set_bool("core.bare", true)
        .map_err(git_err(format!("update {}", config_path.display())))?;
    match config.remove("core.worktree") {
        Ok(()) => Ok(()),
        Err(e) if e.code() == ErrorCode::NotFound => Ok(()),
        Err(e) => Err(git_err(format!("update {}", config_path.display()))(e)),
    }
}
