//! Creating a session's workspace: checking the user's workdir, then either a
//! linked worktree of the user's repository or a throwaway repository.
//!
//! Both paths create the session branch and the worktree directory fresh and
//! refuse to reuse anything left over, so a session never inherits state it
//! did not make. When a step fails halfway, what was created is removed again.

use std::{
    collections::BTreeSet,
    fs, io,
    path::{Path, PathBuf},
};

use git2::{
    BranchType, ErrorCode, Repository, RepositoryInitOptions, WorktreeAddOptions,
    WorktreePruneOptions,
};

use super::{
    BRANCH_PREFIX, Mode, Workspace, WorkspaceError, git_err, io_err, signature, validate_id,
};

/// Checks a workdir the caller asked for and returns its canonical path.
///
/// The path must exist, be a directory, not be (or be inside) any of the
/// `deny` paths, and be inside the work tree of a non-bare git repository.
/// Paths are compared after resolving symlinks, component by component, so
/// `/home/u/.ssh-backup` is not inside `/home/u/.ssh` and a symlink into a
/// denied directory is still denied. There is no silent fallback to a
/// throwaway repository: a workdir that fails a check is an error. The host
/// should include `$AGENTKIMI_HOME` in `deny`, so that no session can start
/// inside another session's worktree.
///
/// # Errors
///
/// [`WorkspaceError::WorkdirMissing`], [`WorkspaceError::WorkdirNotDirectory`],
/// [`WorkspaceError::WorkdirDenied`], [`WorkspaceError::NotARepository`],
/// [`WorkspaceError::BareRepository`], [`WorkspaceError::InsideGitDir`],
/// [`WorkspaceError::NotOwned`].
pub fn check_workdir(workdir: &Path, deny: &[PathBuf]) -> Result<PathBuf, WorkspaceError> {
    let canonical = canonical_workdir(workdir)?;

    for deny_path in deny {
        // An empty or relative entry (say, from a stray ':' in the variable)
        // must not match everything, and one that does not exist cannot
        // contain an existing directory, so it is compared as written.
        if deny_path.as_os_str().is_empty() {
            continue;
        }
        let deny_canonical = fs::canonicalize(deny_path).unwrap_or_else(|_| deny_path.clone());
        if deny_canonical.is_absolute() && canonical.starts_with(&deny_canonical) {
            return Err(WorkspaceError::WorkdirDenied {
                path: canonical,
                deny: deny_canonical,
            });
        }
    }

    discover(&canonical)?;
    Ok(canonical)
}

/// Resolves the workdir to a canonical directory path.
fn canonical_workdir(workdir: &Path) -> Result<PathBuf, WorkspaceError> {
    let canonical = match fs::canonicalize(workdir) {
        Ok(path) => path,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(WorkspaceError::WorkdirMissing {
                path: workdir.to_path_buf(),
            });
        }
        Err(e) => return Err(io_err("resolve workdir", workdir)(e)),
    };
    if !canonical.is_dir() {
        return Err(WorkspaceError::WorkdirNotDirectory {
            path: workdir.to_path_buf(),
        });
    }
    Ok(canonical)
}

/// The user's repository around a canonical workdir.
struct Discovered {
    repo: Repository,
    /// Canonical work tree of the repository.
    root: PathBuf,
    /// The workdir relative to `root`.
    subdir: PathBuf,
}

/// Finds the repository whose work tree contains `workdir` (canonical).
///
/// This is the one place that lets libgit2 find a repository by walking up
/// and following `.git` files, which is right here: the workdir belongs to
/// the user, not the model.
fn discover(workdir: &Path) -> Result<Discovered, WorkspaceError> {
    let repo = Repository::discover(workdir).map_err(|source| match source.code() {
        ErrorCode::NotFound => WorkspaceError::NotARepository {
            path: workdir.to_path_buf(),
        },
        ErrorCode::Owner => WorkspaceError::NotOwned {
            path: workdir.to_path_buf(),
        },
        _ => WorkspaceError::Git {
            action: format!("open the repository around {}", workdir.display()),
            source,
        },
    })?;

    let gitdir = fs::canonicalize(repo.path()).map_err(io_err("resolve", repo.path()))?;
    let Some(root) = repo.workdir() else {
        return Err(WorkspaceError::BareRepository { path: gitdir });
    };
    if repo.is_bare() {
        return Err(WorkspaceError::BareRepository { path: gitdir });
    }
    let root = fs::canonicalize(root).map_err(io_err("resolve", root))?;

    // A directory inside `.git` is "inside" the repository as far as
    // discovery goes, but starting the model there would make no sense.
    if workdir.starts_with(&gitdir) {
        return Err(WorkspaceError::InsideGitDir {
            path: workdir.to_path_buf(),
        });
    }
    let subdir = match workdir.strip_prefix(&root) {
        Ok(subdir) => subdir.to_path_buf(),
        Err(_) => {
            return Err(WorkspaceError::NotARepository {
                path: workdir.to_path_buf(),
            });
        }
    };

    Ok(Discovered { repo, root, subdir })
}

/// Names of the filter drivers (`filter.<name>.clean`, `.smudge` or
/// `.process`) configured at any level libgit2 reads for `repo`: system,
/// XDG, global, repository and worktree config, including includes.
fn filter_drivers(repo: &Repository) -> Result<Vec<String>, WorkspaceError> {
    let config = repo
        .config()
        .map_err(git_err("read the repository's configuration"))?;
    let mut entries = config
        .entries(Some(r"^filter\..+\.(clean|smudge|process)$"))
        .map_err(git_err("read the repository's configuration"))?;

    let mut drivers = BTreeSet::new();
    while let Some(entry) = entries.next() {
        let entry = entry.map_err(git_err("read the repository's configuration"))?;
        let name = String::from_utf8_lossy(entry.name_bytes());
        // The regex guarantees the shape `filter.<driver>.<key>`; the driver
        // name itself may contain dots.
        let driver = name
            .strip_prefix("filter.")
            .and_then(|rest| rest.rsplit_once('.'))
            .map(|(driver, _)| driver.to_owned());
        if let Some(driver) = driver {
            drivers.insert(driver);
        }
    }
    Ok(drivers.into_iter().collect())
}

/// Creates a linked worktree of the repository around `workdir` for session
/// `id`.
///
/// Creates branch `agentkimi/<id>` at the commit HEAD points to, then a linked
/// worktree named `<id>` at `worktrees_dir/<id>` checked out on that branch.
/// The worktree always covers the whole repository; when `workdir` is a
/// subdirectory, [`Workspace::subdir`] says where the model should start.
/// Repositories that configure filter drivers are refused unless
/// `allow_filters` is set (`AGENTKIMI_ALLOW_FILTERS=1`), because libgit2 runs
/// no filter drivers and would check out and commit the unfiltered content.
///
/// # Errors
///
/// Everything [`check_workdir`] reports (without deny paths; check those
/// first), [`WorkspaceError::InvalidId`], [`WorkspaceError::FilterDrivers`],
/// [`WorkspaceError::UnbornHead`], [`WorkspaceError::AlreadyExists`],
/// [`WorkspaceError::BranchExists`], and I/O or git errors. On error nothing
/// created by this call is left behind.
pub fn create_linked(
    worktrees_dir: &Path,
    id: &str,
    workdir: &Path,
    allow_filters: bool,
) -> Result<Workspace, WorkspaceError> {
    validate_id(id)?;
    let workdir = canonical_workdir(workdir)?;
    let Discovered { repo, root, subdir } = discover(&workdir)?;

    if !allow_filters {
        let drivers = filter_drivers(&repo)?;
        if !drivers.is_empty() {
            return Err(WorkspaceError::FilterDrivers {
                repo: root,
                drivers,
            });
        }
    }

    let head = match repo.head() {
        Ok(head) => head,
        Err(e) if matches!(e.code(), ErrorCode::UnbornBranch | ErrorCode::NotFound) => {
            return Err(WorkspaceError::UnbornHead { repo: root });
        }
        Err(e) => return Err(git_err("read HEAD")(e)),
    };
    let base = head
        .peel_to_commit()
        .map_err(git_err("find the commit HEAD points to"))?;

    let worktrees_dir = ensure_dir(worktrees_dir)?;
    let worktree = worktrees_dir.join(id);
    refuse_existing(&worktree)?;
    let admin = repo.commondir().join("worktrees").join(id);
    refuse_existing(&admin)?;
    let branch_name = format!("{BRANCH_PREFIX}{id}");
    if repo.find_branch(&branch_name, BranchType::Local).is_ok() {
        return Err(WorkspaceError::BranchExists {
            branch: branch_name,
            repo: root,
        });
    }

    // libgit2 makes `worktrees/` in the git dir with an exclusive mkdir
    // after checking it is missing, so the first worktrees of a repository
    // created at the same moment would race on it: make it first.
    let admin_parent = repo.commondir().join("worktrees");
    fs::create_dir_all(&admin_parent).map_err(io_err("create", &admin_parent))?;

    let mut branch = repo
        .branch(&branch_name, &base, false)
        .map_err(git_err(format!("create branch {branch_name}")))?;
    let added = {
        let mut opts = WorktreeAddOptions::new();
        opts.reference(Some(branch.get()));
        add_worktree(&repo, id, &worktree, &opts)
    };
    if let Err(source) = added {
        undo_linked(&repo, id, &worktree, &admin);
        if let Err(e) = branch.delete() {
            tracing::warn!(
                branch = %branch_name,
                error = e.message(),
                "could not delete the branch of a failed session"
            );
        }
        return Err(WorkspaceError::Git {
            action: format!("create the worktree {}", worktree.display()),
            source,
        });
    }

    let gitdir = fs::canonicalize(&admin).map_err(io_err("resolve", &admin))?;
    tracing::debug!(
        worktree = %worktree.display(),
        branch = %branch_name,
        "created linked worktree"
    );
    Ok(Workspace {
        mode: Mode::Linked,
        worktree,
        gitdir,
        repo_root: Some(root),
        branch: branch_name,
        base_commit: base.id().to_string(),
        subdir,
    })
}

/// Removes what a failed `git_worktree_add` may have left: the worktree
/// directory and the worktree's metadata. Both were checked not to exist
/// before, so everything there is ours. Failures are logged, not returned:
/// the caller is already reporting the error that matters.
fn undo_linked(repo: &Repository, id: &str, worktree: &Path, admin: &Path) {
    if let Ok(wt) = repo.find_worktree(id) {
        let mut opts = WorktreePruneOptions::new();
        opts.valid(true).locked(true).working_tree(false);
        if let Err(e) = wt.prune(Some(&mut opts)) {
            tracing::warn!(
                error = e.message(),
                "could not prune a half-created worktree"
            );
        }
    }
    for path in [worktree, admin] {
        if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
            && let Err(e) = fs::remove_dir_all(path)
        {
            tracing::warn!(
                path = %path.display(),
                error = %e,
                "could not remove a half-created directory"
            );
        }
    }
}

/// Creates a throwaway repository for session `id`: git dir
/// `gitdirs_dir/<id>`, work tree `worktrees_dir/<id>`, and an empty initial
/// commit on branch `agentkimi/<id>` signed `agentkimi <agentkimi@localhost>`.
///
/// The git dir lives apart from the work tree so that it is never mounted
/// into the sandbox. libgit2 writes a `.git` link file into the work tree;
/// it is never read back (every later open goes through
/// [`Workspace::gitdir`]).
///
/// # Errors
///
/// [`WorkspaceError::InvalidId`], [`WorkspaceError::AlreadyExists`], and I/O
/// or git errors. On error nothing created by this call is left behind.
pub fn create_throwaway(
    worktrees_dir: &Path,
    gitdirs_dir: &Path,
    id: &str,
) -> Result<Workspace, WorkspaceError> {
    validate_id(id)?;
    let worktree = ensure_dir(worktrees_dir)?.join(id);
    let gitdir = ensure_dir(gitdirs_dir)?.join(id);
    create_fresh_dir(&worktree)?;
    if let Err(e) = create_fresh_dir(&gitdir) {
        remove_quietly(&worktree);
        return Err(e);
    }

    let branch = format!("{BRANCH_PREFIX}{id}");
    match init_throwaway(&worktree, &gitdir, &branch) {
        Ok(base_commit) => {
            tracing::debug!(worktree = %worktree.display(), "created throwaway repository");
            Ok(Workspace {
                mode: Mode::Throwaway,
                worktree,
                gitdir,
                repo_root: None,
                branch,
                base_commit,
                subdir: PathBuf::new(),
            })
        }
        Err(e) => {
            remove_quietly(&worktree);
            remove_quietly(&gitdir);
            Err(e)
        }
    }
}

/// Initializes the throwaway repository and makes its empty initial commit;
/// returns the commit's hex id.
fn init_throwaway(worktree: &Path, gitdir: &Path, branch: &str) -> Result<String, WorkspaceError> {
    let mut opts = RepositoryInitOptions::new();
    opts.bare(false)
        .no_reinit(true)
        .no_dotgit_dir(true)
        // The system's template dir may hold sample hooks; libgit2 never runs
        // hooks, but there is no reason to copy them either.
        .external_template(false)
        .workdir_path(worktree)
        .initial_head(branch);
    let repo = Repository::init_opts(gitdir, &opts).map_err(git_err(format!(
        "create a repository in {}",
        gitdir.display()
    )))?;

    let tree_id = repo
        .treebuilder(None)
        .and_then(|builder| builder.write())
        .map_err(git_err("write the empty tree"))?;
    let tree = repo
        .find_tree(tree_id)
        .map_err(git_err("read the empty tree"))?;
    let sig = signature()?;
    let commit = repo
        .commit(
            Some(&format!("refs/heads/{branch}")),
            &sig,
            &sig,
            "agentkimi: start of session\n",
            &tree,
            &[],
        )
        .map_err(git_err("make the initial commit"))?;
    Ok(commit.to_string())
}

/// Creates `dir` and its parents if needed and returns its canonical path.
fn ensure_dir(dir: &Path) -> Result<PathBuf, WorkspaceError> {
    fs::create_dir_all(dir).map_err(io_err("create directory", dir))?;
    fs::canonicalize(dir).map_err(io_err("resolve", dir))
}

/// Fails with [`WorkspaceError::AlreadyExists`] if anything (even a dangling
/// symlink) is at `path`.
fn refuse_existing(path: &Path) -> Result<(), WorkspaceError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Err(WorkspaceError::AlreadyExists {
            path: path.to_path_buf(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("inspect", path)(e)),
    }
}

/// How often a worktree add refused as "already checked out" is retried,
/// and how long to wait between tries.
const ADD_RETRIES: u32 = 100;
const ADD_RETRY_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// Adds the linked worktree, retrying libgit2's spurious "already checked
/// out". The branch is brand new, so nothing has it checked out; but
/// libgit2's check opens every linked worktree of the repository and counts
/// one it cannot open yet (another session's, being created this moment)
/// as a match. The check runs before the add creates anything, so trying
/// again is safe, and the other worktree is complete within milliseconds.
fn add_worktree(
    repo: &Repository,
    id: &str,
    worktree: &Path,
    opts: &WorktreeAddOptions<'_>,
) -> Result<git2::Worktree, git2::Error> {
    let mut tries = 0;
    loop {
        match repo.worktree(id, worktree, Some(opts)) {
            Err(e) if e.message().contains("already checked out") && tries < ADD_RETRIES => {
                tries += 1;
                std::thread::sleep(ADD_RETRY_WAIT);
            }
            other => return other,
        }
    }
}

/// Creates exactly `dir`, failing if anything is already there.
fn create_fresh_dir(dir: &Path) -> Result<(), WorkspaceError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(WorkspaceError::AlreadyExists {
            path: dir.to_path_buf(),
        }),
        Err(e) => Err(io_err("create directory", dir)(e)),
    }
}

/// Removes a directory this module just created, logging failures.
fn remove_quietly(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir) {
        tracing::warn!(
            path = %dir.display(),
            error = %e,
            "could not remove a half-created directory"
        );
    }
}
