//! Worktrees, diffs and commits through git2.
//!
//! Each session works in a directory of its own, `$AGENTKIMI_HOME/worktrees/<id>`,
//! on a branch of its own, `agentkimi/<id>`. A session started inside a git
//! repository gets a linked worktree of that repository; a session without a
//! workdir gets a throwaway repository whose git dir lives apart from its work
//! tree, under `$AGENTKIMI_HOME/gitdirs/<id>`. After every turn the host diffs
//! the worktree against the base commit and commits the turn on the session
//! branch; ending the session removes the worktree and keeps the branch.
//!
//! # Why the code is shaped the way it is
//!
//! The worktree's contents are written by the model, which we treat as
//! hostile, and the host runs this code on them outside the sandbox. Three
//! rules follow:
//!
//! - Only libgit2 touches the worktree, never the git CLI. libgit2 runs no
//!   hooks, filter drivers, textconv or external diff programs, so a planted
//!   `.gitattributes` or config cannot make the host run anything.
//! - The worktree's `.git` entry is never read. In a linked worktree it is a
//!   file that names the git dir, and the model can rewrite it to point at any
//!   repository on the host (one with a malicious config, or simply the wrong
//!   history). So every repository handle is opened from the git dir the host
//!   recorded at creation ([`Workspace::gitdir`]), which is never mounted into
//!   the sandbox, and the work tree is then set explicitly (`open_repo`
//!   below).
//! - libgit2 still reads a few files from the work tree by name
//!   (`.gitignore`, `.gitattributes`, `.gitmodules`) and follows symlinks when
//!   it does. A FIFO there would block the host forever, so those names are
//!   checked before every diff and commit (see `safety`).
//!
//! All of this relies on no sandbox running over the worktree while the host
//! diffs, commits or removes it; the host calls these functions between
//! turns, after the turn's sandbox has died.

use std::{
    ffi::OsStr,
    io,
    path::{Path, PathBuf},
};

use git2::{ErrorCode, Repository, RepositoryOpenFlags, Signature};
use serde::{Deserialize, Serialize};

mod commit;
mod create;
mod diff;
mod remove;
mod safety;
#[cfg(test)]
mod tests;

pub use commit::commit_turn;
pub use create::{check_workdir, create_linked, create_throwaway};
pub use diff::{ChangeKind, DIFF_TEXT_LIMIT, Diff, FileChange, diff, diff_branch};
pub use remove::remove;

/// Prefix of every session branch; the full name is `agentkimi/<id>`.
pub const BRANCH_PREFIX: &str = "agentkimi/";

/// Name and email on every commit agentkimi makes. Fixed so that commits never
/// depend on, or leak, the user's git identity.
const SIGNATURE_NAME: &str = "agentkimi";
const SIGNATURE_EMAIL: &str = "agentkimi@localhost";

/// How a session's repository came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A linked worktree of the user's repository; the session branch lives
    /// in the user's repository.
    Linked,
    /// A scratch repository created for the session; its git dir is kept
    /// under `$AGENTKIMI_HOME/gitdirs/<id>` after the session ends.
    Throwaway,
}

/// Everything needed to reopen a session's workspace; stored by the host in
/// SQLite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspace {
    /// Linked worktree or throwaway repository.
    pub mode: Mode,
    /// The work tree the sandbox mounts: `$AGENTKIMI_HOME/worktrees/<id>`.
    pub worktree: PathBuf,
    /// The git dir every repository handle is opened from: for a linked
    /// worktree `<common git dir>/worktrees/<id>`, for a throwaway repository
    /// `$AGENTKIMI_HOME/gitdirs/<id>`. Never mounted into the sandbox.
    pub gitdir: PathBuf,
    /// Linked mode: the work tree of the user's repository. `None` for a
    /// throwaway repository.
    pub repo_root: Option<PathBuf>,
    /// The session branch, `agentkimi/<id>` (short name, without
    /// `refs/heads/`).
    pub branch: String,
    /// Hex id of the commit the session started from; diffs are taken
    /// against it.
    pub base_commit: String,
    /// Where in the worktree the model should start, relative to the
    /// worktree: the workdir's position inside the user's repository. Empty
    /// when the workdir was the repository root, and for throwaway
    /// repositories.
    pub subdir: PathBuf,
}

impl Workspace {
    /// Full reference name of the session branch (`refs/heads/agentkimi/<id>`).
    pub fn branch_ref(&self) -> String {
        format!("refs/heads/{}", self.branch)
    }

    /// The directory the model should start in: the worktree joined with
    /// [`Workspace::subdir`].
    pub fn start_dir(&self) -> PathBuf {
        self.worktree.join(&self.subdir)
    }
}

/// Everything that can go wrong in this module. Each message names the cause
/// and what the user can do about it.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// The session id cannot be used in a branch or directory name.
    #[error(
        "session id {id:?} cannot name a branch and a directory; use 1 to 64 ASCII letters, \
         digits, '-', '_' or '.', starting with a letter or digit"
    )]
    InvalidId {
        /// The rejected id.
        id: String,
    },

    /// The workdir does not exist.
    #[error(
        "workdir {} does not exist; pass an existing directory inside a git repository, or omit \
         workdir for a scratch repo",
        path.display()
    )]
    WorkdirMissing {
        /// The workdir as given.
        path: PathBuf,
    },

    /// The workdir exists but is not a directory.
    #[error(
        "workdir {} is not a directory; pass a directory inside a git repository, or omit \
         workdir for a scratch repo",
        path.display()
    )]
    WorkdirNotDirectory {
        /// The workdir as given.
        path: PathBuf,
    },

    /// The workdir is, or is inside, a path the user excluded.
    #[error(
        "workdir {} is inside {}, which AGENTKIMI_DENY_PATHS excludes; pass a directory outside \
         it",
        path.display(),
        deny.display()
    )]
    WorkdirDenied {
        /// The canonical workdir.
        path: PathBuf,
        /// The canonical deny path that contains it.
        deny: PathBuf,
    },

    /// The workdir is not inside any git repository.
    #[error(
        "workdir {} is not inside a git repository; run `git init` and commit there first, or \
         omit workdir for a scratch repo",
        path.display()
    )]
    NotARepository {
        /// The canonical workdir.
        path: PathBuf,
    },

    /// The workdir belongs to a bare repository, which has no work tree.
    #[error(
        "{} is a bare git repository, which has no work tree to branch from; pass a directory \
         inside a non-bare clone",
        path.display()
    )]
    BareRepository {
        /// The repository's git dir.
        path: PathBuf,
    },

    /// The workdir is inside a git dir rather than a work tree.
    #[error(
        "workdir {} is inside a git directory, not a work tree; pass a directory of the work tree",
        path.display()
    )]
    InsideGitDir {
        /// The canonical workdir.
        path: PathBuf,
    },

    /// libgit2 refused the repository because another user owns it.
    #[error(
        "the git repository at {} is owned by another user, so git refuses to open it; run \
         agentkimi as its owner or list it in git's safe.directory",
        path.display()
    )]
    NotOwned {
        /// The path that was being opened.
        path: PathBuf,
    },

    /// The repository has no commit to branch from.
    #[error(
        "the git repository at {} has no commit yet; commit something first (for example `git \
         commit --allow-empty -m init`), then start the session again",
        repo.display()
    )]
    UnbornHead {
        /// The repository's work tree.
        repo: PathBuf,
    },

    /// The repository configures filter drivers that libgit2 will not run.
    #[error(
        "the git repository at {} configures git filter drivers ({}); agentkimi checks files out \
         and commits them without running filters, so filtered files (Git LFS, for example) \
         would be stored wrongly. Set AGENTKIMI_ALLOW_FILTERS=1 to use this repository anyway",
        repo.display(),
        drivers.join(", ")
    )]
    FilterDrivers {
        /// The repository's work tree.
        repo: PathBuf,
        /// Names of the configured drivers (`lfs`, ...).
        drivers: Vec<String>,
    },

    /// A directory the session would create already exists.
    #[error(
        "{} already exists and agentkimi will not reuse it; start the session with a new id or \
         remove the leftover directory",
        path.display()
    )]
    AlreadyExists {
        /// The existing path.
        path: PathBuf,
    },

    /// The session branch already exists in the repository.
    #[error(
        "branch {branch} already exists in {}; start the session with a new id or delete the \
         branch",
        repo.display()
    )]
    BranchExists {
        /// Short branch name.
        branch: String,
        /// The repository's work tree.
        repo: PathBuf,
    },

    /// The worktree directory is gone.
    #[error(
        "worktree {} no longer exists; this session cannot continue, start a new one (the \
         session branch keeps every committed turn)",
        path.display()
    )]
    WorktreeMissing {
        /// The recorded worktree path.
        path: PathBuf,
    },

    /// The worktree path has been replaced by a symbolic link.
    #[error(
        "worktree {} has been replaced by a symbolic link, which agentkimi refuses to follow; end \
         this session (the session branch keeps every committed turn)",
        path.display()
    )]
    WorktreeIsSymlink {
        /// The recorded worktree path.
        path: PathBuf,
    },

    /// The worktree path exists but is not a directory.
    #[error(
        "worktree {} is no longer a directory; end this session (the session branch keeps every \
         committed turn)",
        path.display()
    )]
    WorktreeNotDirectory {
        /// The recorded worktree path.
        path: PathBuf,
    },

    /// The git dir recorded for the session is gone.
    #[error(
        "git directory {} no longer exists (was the repository moved or the worktree pruned?); \
         this session cannot continue, start a new one",
        path.display()
    )]
    GitDirMissing {
        /// The recorded git dir.
        path: PathBuf,
    },

    /// A file libgit2 reads by name is not a regular file.
    #[error(
        "{path} in the worktree is a {kind}, not a regular file; git would read it on the host, \
         so agentkimi refuses to diff or commit the worktree. Replace it with a regular file or \
         delete it"
    )]
    UnsafeGitFile {
        /// Path relative to the worktree, escaped for display.
        path: String,
        /// What it is instead ("symbolic link", "FIFO", ...).
        kind: &'static str,
    },

    /// One file could not be staged for the turn's commit.
    #[error(
        "could not stage {path} for the turn's commit: {}; make the file readable or delete it",
        source.message()
    )]
    Stage {
        /// Path relative to the worktree, escaped for display.
        path: String,
        /// The libgit2 error.
        source: git2::Error,
    },

    /// A libgit2 operation failed.
    #[error("git could not {action}: {}", source.message())]
    Git {
        /// What was being done, phrased to follow "could not".
        action: String,
        /// The libgit2 error.
        source: git2::Error,
    },

    /// A file system operation failed.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What was being done, phrased to follow "could not".
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

/// Shorthand for turning a git2 error into [`WorkspaceError::Git`].
fn git_err(action: impl Into<String>) -> impl FnOnce(git2::Error) -> WorkspaceError {
    let action = action.into();
    move |source| WorkspaceError::Git { action, source }
}

/// Shorthand for turning an I/O error into [`WorkspaceError::Io`].
fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> WorkspaceError {
    let path = path.to_path_buf();
    move |source| WorkspaceError::Io {
        action,
        path,
        source,
    }
}

/// The fixed identity of every agentkimi commit, stamped with the current
/// time.
fn signature() -> Result<Signature<'static>, WorkspaceError> {
    Signature::now(SIGNATURE_NAME, SIGNATURE_EMAIL).map_err(git_err("build the commit signature"))
}

/// Checks that a session id is safe as a directory name, a worktree name and
/// the last component of a branch name.
///
/// Narrower than what git accepts on purpose: the id ends up in paths and
/// refs, and a narrow alphabet rules out traversal (`..`), lock-file clashes
/// (`.lock`) and quoting problems in one step.
fn validate_id(id: &str) -> Result<(), WorkspaceError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.starts_with(|c: char| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !id.contains("..")
        && !id.ends_with(".lock")
        && !id.ends_with('.');
    if ok {
        Ok(())
    } else {
        Err(WorkspaceError::InvalidId { id: id.to_owned() })
    }
}

/// Verifies that a session can be reopened: the worktree still exists and is
/// a real directory (not a symbolic link), the git dir exists, and the
/// session branch is still there.
///
/// The host calls this before starting a turn on a stored session.
///
/// # Errors
///
/// [`WorkspaceError::WorktreeMissing`], [`WorkspaceError::WorktreeIsSymlink`],
/// [`WorkspaceError::WorktreeNotDirectory`], [`WorkspaceError::GitDirMissing`],
/// or [`WorkspaceError::Git`] when the repository or branch cannot be read.
pub fn reopen_check(ws: &Workspace) -> Result<(), WorkspaceError> {
    let repo = open_repo(ws)?;
    repo.find_reference(&ws.branch_ref())
        .map_err(git_err(format!("find the session branch {}", ws.branch)))?;
    Ok(())
}

/// Counts the commits on the session branch since the base commit.
///
/// Works after the session ended too: it opens the repository that holds the
/// branch (the user's repository, or the kept throwaway git dir), not the
/// worktree, which may be gone.
///
/// # Errors
///
/// [`WorkspaceError::Git`] when the repository or branch cannot be read.
pub fn commits_since_base(ws: &Workspace) -> Result<usize, WorkspaceError> {
    let repo = open_branch_repo(ws)?;
    let tip = repo
        .refname_to_id(&ws.branch_ref())
        .map_err(git_err(format!("find the session branch {}", ws.branch)))?;
    let base = git2::Oid::from_str(&ws.base_commit).map_err(git_err("read the base commit id"))?;
    let mut walk = repo.revwalk().map_err(git_err("walk the session branch"))?;
    walk.push(tip).map_err(git_err("walk the session branch"))?;
    walk.hide(base)
        .map_err(git_err("walk the session branch"))?;
    Ok(walk.filter(Result::is_ok).count())
}

/// Checks that the worktree is a real directory, not a symbolic link or
/// anything else the model may have swapped in.
fn check_worktree_dir(worktree: &Path) -> Result<(), WorkspaceError> {
    let meta = match std::fs::symlink_metadata(worktree) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(WorkspaceError::WorktreeMissing {
                path: worktree.to_path_buf(),
            });
        }
        Err(e) => return Err(io_err("inspect", worktree)(e)),
    };
    if meta.file_type().is_symlink() {
        return Err(WorkspaceError::WorktreeIsSymlink {
            path: worktree.to_path_buf(),
        });
    }
    if !meta.is_dir() {
        return Err(WorkspaceError::WorktreeNotDirectory {
            path: worktree.to_path_buf(),
        });
    }
    Ok(())
}

/// Opens the session's repository the only trustworthy way: from the git dir
/// recorded at creation, with the work tree set explicitly.
///
/// The worktree's own `.git` entry is written by the model and could name any
/// repository on the host, so it is never consulted. `NO_SEARCH` and
/// `NO_DOTGIT` stop libgit2 from walking up the tree or looking for a `.git`
/// below the given path, and not passing `FROM_ENV` keeps `GIT_DIR` and
/// friends out of it. For a linked worktree the git dir is
/// `<common git dir>/worktrees/<id>`, which holds the worktree's HEAD and
/// index and points at the common objects and refs; for a throwaway
/// repository it is `gitdirs/<id>`. Setting the work tree with
/// `update_gitlink = false` leaves the worktree's `.git` untouched.
/// Opens the repository that holds the session branch (the user's
/// repository, or the kept throwaway git dir) without its work tree, so it
/// works after the session's worktree is gone.
fn open_branch_repo(ws: &Workspace) -> Result<Repository, WorkspaceError> {
    let flags = RepositoryOpenFlags::NO_SEARCH;
    let (path, flags) = match (&ws.mode, &ws.repo_root) {
        // The user's own repository: trusted, opened as git would.
        (Mode::Linked, Some(root)) => (root.as_path(), flags),
        _ => (ws.gitdir.as_path(), flags | RepositoryOpenFlags::NO_DOTGIT),
    };
    Repository::open_ext(path, flags, std::iter::empty::<&OsStr>()).map_err(git_err(format!(
        "open the repository at {}",
        path.display()
    )))
}

fn open_repo(ws: &Workspace) -> Result<Repository, WorkspaceError> {
    check_worktree_dir(&ws.worktree)?;
    if !ws.gitdir.is_dir() {
        return Err(WorkspaceError::GitDirMissing {
            path: ws.gitdir.clone(),
        });
    }

    let flags = RepositoryOpenFlags::NO_SEARCH | RepositoryOpenFlags::NO_DOTGIT;
    let repo = Repository::open_ext(&ws.gitdir, flags, std::iter::empty::<&OsStr>()).map_err(
        |source| match source.code() {
            ErrorCode::Owner => WorkspaceError::NotOwned {
                path: ws.gitdir.clone(),
            },
            _ => WorkspaceError::Git {
                action: format!("open the session repository at {}", ws.gitdir.display()),
                source,
            },
        },
    )?;
    repo.set_workdir(&ws.worktree, false)
        .map_err(git_err("set the session work tree"))?;
    Ok(repo)
}

/// Renders a path from git (arbitrary bytes) for people and models: valid
/// UTF-8 stays as is, invalid bytes become `\xNN`, and control characters and
/// backslashes are escaped so that a newline in a file name cannot forge an
/// extra line in a listing.
pub(crate) fn display_path(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => out.extend(c.escape_unicode()),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}
