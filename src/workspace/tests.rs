//! Tests for the workspace module. Fixture repositories are built with the
//! git CLI in temporary directories; the CLI also cross-checks results, but
//! only with plumbing commands (`cat-file`, `ls-tree`, `rev-parse`) that run
//! no filters, textconv or hooks, so the hostile fixtures cannot trigger
//! anything through the test itself.

use std::{
    ffi::OsStr,
    fs,
    os::unix::{ffi::OsStrExt, fs::symlink},
    path::{Path, PathBuf},
    process::Command,
    sync::mpsc,
    time::Duration,
};

use tempfile::TempDir;

use super::*;

/// A git CLI command isolated from the machine's and user's configuration.
fn git_command(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "Fixture")
        .env("GIT_AUTHOR_EMAIL", "fixture@example.com")
        .env("GIT_COMMITTER_NAME", "Fixture")
        .env("GIT_COMMITTER_EMAIL", "fixture@example.com")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE");
    cmd
}

/// Runs git in `dir`, asserts success and returns stdout as bytes.
fn git_bytes(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = git_command(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Runs git in `dir`, asserts success and returns trimmed stdout.
fn git(dir: &Path, args: &[&str]) -> String {
    String::from_utf8_lossy(&git_bytes(dir, args))
        .trim()
        .to_owned()
}

/// Whether `git rev-parse --verify` finds `rev` in `dir`.
fn rev_exists(dir: &Path, rev: &str) -> bool {
    git_command(dir)
        .args(["rev-parse", "--verify", "--quiet", rev])
        .output()
        .unwrap()
        .status
        .success()
}

/// Runs `f` on another thread and fails the test if it takes longer than
/// 30 s, so that a hang shows up as a failure instead of a stuck run.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| panic!("{what} did not finish within 30 s"))
}

/// A temporary "agentkimi home" plus a user repository with one commit.
struct Fixture {
    tmp: TempDir,
    repo: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let tmp = TempDir::new().unwrap();
        let repo = tmp.path().join("repo");
        fs::create_dir_all(repo.join("src")).unwrap();
        git(&repo, &["init", "-q", "-b", "main"]);
        fs::write(repo.join("README.md"), "hello\n").unwrap();
        fs::write(repo.join("src/lib.rs"), "pub fn f() {}\n").unwrap();
        fs::write(repo.join(".gitignore"), "*.log\n").unwrap();
        git(&repo, &["add", "-A"]);
        git(&repo, &["commit", "-q", "-m", "initial"]);
        Fixture { tmp, repo }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn worktrees(&self) -> PathBuf {
        self.path("home/worktrees")
    }

    fn gitdirs(&self) -> PathBuf {
        self.path("home/gitdirs")
    }

    fn linked(&self, id: &str) -> Workspace {
        create_linked(&self.worktrees(), id, &self.repo, false).unwrap()
    }
}

fn file<'a>(diff: &'a Diff, path: &str) -> &'a FileChange {
    diff.files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("{path} not in diff: {:#?}", diff.files))
}

fn has_file(diff: &Diff, path: &str) -> bool {
    diff.files.iter().any(|f| f.path == path)
}

fn tree_paths(repo: &Path, rev: &str) -> Vec<Vec<u8>> {
    git_bytes(repo, &["ls-tree", "-r", "-z", "--name-only", rev])
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn tree_has(repo: &Path, rev: &str, path: &str) -> bool {
    tree_paths(repo, rev).iter().any(|p| p == path.as_bytes())
}

#[test]
fn linked_worktree_full_flow() {
    let fx = Fixture::new();
    let ws = fx.linked("s1");
    assert_eq!(ws.mode, Mode::Linked);
    assert_eq!(ws.branch, "agentkimi/s1");
    assert_eq!(
        ws.worktree,
        fs::canonicalize(fx.worktrees()).unwrap().join("s1")
    );
    assert_eq!(
        ws.repo_root.as_deref(),
        Some(fs::canonicalize(&fx.repo).unwrap().as_path())
    );
    assert_eq!(ws.base_commit, git(&fx.repo, &["rev-parse", "HEAD"]));
    assert_eq!(ws.subdir, PathBuf::new());
    assert_eq!(
        fs::read_to_string(ws.worktree.join("README.md")).unwrap(),
        "hello\n"
    );
    reopen_check(&ws).unwrap();

    // A change to a tracked file plus a new file in a new directory.
    fs::write(ws.worktree.join("README.md"), "hello world\n").unwrap();
    fs::create_dir(ws.worktree.join("notes")).unwrap();
    fs::write(ws.worktree.join("notes/new.txt"), "one\ntwo\n").unwrap();
    fs::write(ws.worktree.join("debug.log"), "ignored\n").unwrap();

    let d = diff(&ws).unwrap();
    assert!(!d.truncated);
    let readme = file(&d, "README.md");
    assert_eq!(
        (
            readme.status,
            readme.additions,
            readme.deletions,
            readme.binary
        ),
        (ChangeKind::Modified, 1, 1, false)
    );
    let new = file(&d, "notes/new.txt");
    assert_eq!(
        (new.status, new.additions, new.deletions),
        (ChangeKind::Added, 2, 0)
    );
    assert!(!has_file(&d, "debug.log"), "ignored file in diff");
    assert!(
        d.text.contains("diff --git a/README.md b/README.md\n"),
        "{}",
        d.text
    );
    assert!(d.text.contains("-hello\n+hello world\n"), "{}", d.text);
    assert!(
        d.text
            .contains("diff --git a/notes/new.txt b/notes/new.txt\nnew file mode 100644\n")
    );
    assert!(
        d.text
            .contains("--- /dev/null\n+++ b/notes/new.txt\n@@ -0,0 +1,2 @@\n+one\n+two\n")
    );

    let commit = commit_turn(&ws, "turn 1").unwrap().expect("a commit");
    assert_eq!(git(&fx.repo, &["rev-parse", "agentkimi/s1"]), commit);
    assert_eq!(
        git(&fx.repo, &["rev-parse", "agentkimi/s1^"]),
        ws.base_commit
    );
    assert_eq!(
        git(&fx.repo, &["cat-file", "-p", "agentkimi/s1:notes/new.txt"]),
        "one\ntwo"
    );
    assert_eq!(
        git(&fx.repo, &["cat-file", "-p", "agentkimi/s1:README.md"]),
        "hello world"
    );
    assert!(!tree_has(&fx.repo, "agentkimi/s1", "debug.log"));
    assert_eq!(
        git(
            &fx.repo,
            &[
                "log",
                "-1",
                "--format=%an <%ae>|%cn <%ce>|%B",
                "agentkimi/s1"
            ]
        ),
        "agentkimi <agentkimi@localhost>|agentkimi <agentkimi@localhost>|turn 1"
    );
    // The user's own checkout is untouched.
    assert_eq!(
        git(&fx.repo, &["rev-parse", "--abbrev-ref", "HEAD"]),
        "main"
    );
    assert_eq!(
        fs::read_to_string(fx.repo.join("README.md")).unwrap(),
        "hello\n"
    );

    // Nothing changed since: no commit. The diff still spans the session.
    assert_eq!(commit_turn(&ws, "turn 2").unwrap(), None);
    assert_eq!(diff(&ws).unwrap().files, d.files);

    // A deletion in a later turn.
    fs::remove_file(ws.worktree.join("notes/new.txt")).unwrap();
    let second = commit_turn(&ws, "turn 3").unwrap().expect("a commit");
    assert_eq!(git(&fx.repo, &["rev-parse", "agentkimi/s1^"]), commit);
    assert!(!tree_has(&fx.repo, &second, "notes/new.txt"));

    let listed = git(&fx.repo, &["worktree", "list", "--porcelain"]);
    assert!(listed.contains(&*ws.worktree.to_string_lossy()), "{listed}");
    remove(&ws).unwrap();
    assert!(!ws.worktree.exists());
    let listed = git(&fx.repo, &["worktree", "list", "--porcelain"]);
    assert!(
        !listed.contains(&*ws.worktree.to_string_lossy()),
        "{listed}"
    );
    assert!(!ws.gitdir.exists());
    assert_eq!(git(&fx.repo, &["rev-parse", "agentkimi/s1"]), second);
    // Idempotent, and the session can no longer be reopened.
    remove(&ws).unwrap();
    assert!(matches!(
        reopen_check(&ws),
        Err(WorkspaceError::WorktreeMissing { .. })
    ));
}

#[test]
fn linked_worktrees_created_at_once_all_succeed() {
    // Sessions started together on one repository create their worktrees
    // at the same moment; each must get its own.
    let fx = Fixture::new();
    for round in 0..4 {
        let made: Vec<Result<Workspace, WorkspaceError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let (dir, repo) = (fx.worktrees(), fx.repo.clone());
                    scope.spawn(move || create_linked(&dir, &format!("p{round}x{i}"), &repo, false))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for ws in made {
            let ws = ws.unwrap();
            assert!(ws.worktree.join("README.md").is_file());
        }
    }
}

#[test]
fn linked_worktree_from_subdirectory_covers_whole_repo() {
    let fx = Fixture::new();
    let ws = create_linked(&fx.worktrees(), "sub", &fx.repo.join("src"), false).unwrap();
    assert_eq!(ws.subdir, PathBuf::from("src"));
    assert_eq!(ws.start_dir(), ws.worktree.join("src"));
    assert!(ws.worktree.join("README.md").is_file());
    assert!(ws.start_dir().join("lib.rs").is_file());
}

#[test]
fn throwaway_full_flow() {
    let fx = Fixture::new();
    let ws = create_throwaway(&fx.worktrees(), &fx.gitdirs(), "t1").unwrap();
    assert_eq!(ws.mode, Mode::Throwaway);
    assert_eq!(ws.repo_root, None);
    assert_eq!(
        ws.gitdir,
        fs::canonicalize(fx.gitdirs()).unwrap().join("t1")
    );
    let gitdir = ws.gitdir.clone();
    assert_eq!(git(&gitdir, &["rev-parse", "agentkimi/t1"]), ws.base_commit);
    assert_eq!(
        git(
            &gitdir,
            &["log", "-1", "--format=%an <%ae>", "agentkimi/t1"]
        ),
        "agentkimi <agentkimi@localhost>"
    );
    assert_eq!(tree_paths(&gitdir, "agentkimi/t1"), Vec::<Vec<u8>>::new());
    reopen_check(&ws).unwrap();

    fs::write(ws.worktree.join("main.py"), "print('hi')\n").unwrap();
    let d = diff(&ws).unwrap();
    assert_eq!(d.files.len(), 1, "{:#?}", d.files);
    assert_eq!(file(&d, "main.py").status, ChangeKind::Added);
    assert!(d.text.contains("+print('hi')\n"));

    let commit = commit_turn(&ws, "first turn").unwrap().expect("a commit");
    assert_eq!(git(&gitdir, &["rev-parse", "agentkimi/t1"]), commit);
    assert_eq!(
        git(&gitdir, &["cat-file", "-p", "agentkimi/t1:main.py"]),
        "print('hi')"
    );
    assert_eq!(commit_turn(&ws, "again").unwrap(), None);

    remove(&ws).unwrap();
    assert!(!ws.worktree.exists());
    assert!(gitdir.is_dir(), "throwaway git dir must be kept");
    assert_eq!(git(&gitdir, &["rev-parse", "agentkimi/t1"]), commit);
    remove(&ws).unwrap();
}

#[test]
fn check_workdir_errors() {
    let fx = Fixture::new();
    let canonical_repo = fs::canonicalize(&fx.repo).unwrap();
    assert_eq!(check_workdir(&fx.repo, &[]).unwrap(), canonical_repo);
    assert_eq!(
        check_workdir(&fx.repo.join("src"), &[]).unwrap(),
        canonical_repo.join("src")
    );

    let missing = fx.path("nope");
    let err = check_workdir(&missing, &[]).unwrap_err();
    assert!(matches!(err, WorkspaceError::WorkdirMissing { .. }));
    assert!(
        err.to_string()
            .contains("does not exist; pass an existing directory")
    );
    assert!(err.to_string().contains("omit workdir for a scratch repo"));

    let err = check_workdir(&fx.repo.join("README.md"), &[]).unwrap_err();
    assert!(
        matches!(err, WorkspaceError::WorkdirNotDirectory { .. }),
        "{err}"
    );

    // Denied: the path itself, a child, a spelling through a symlink.
    let err = check_workdir(&fx.repo, std::slice::from_ref(&fx.repo)).unwrap_err();
    assert!(matches!(err, WorkspaceError::WorkdirDenied { .. }), "{err}");
    assert!(err.to_string().contains("AGENTKIMI_DENY_PATHS"));
    let err = check_workdir(&fx.repo.join("src"), std::slice::from_ref(&fx.repo)).unwrap_err();
    assert!(matches!(err, WorkspaceError::WorkdirDenied { .. }), "{err}");
    let link = fx.path("link-to-repo");
    symlink(&fx.repo, &link).unwrap();
    let err = check_workdir(&link.join("src"), std::slice::from_ref(&fx.repo)).unwrap_err();
    assert!(matches!(err, WorkspaceError::WorkdirDenied { .. }), "{err}");
    let err = check_workdir(&fx.repo, std::slice::from_ref(&link)).unwrap_err();
    assert!(matches!(err, WorkspaceError::WorkdirDenied { .. }), "{err}");
    // Component-wise, not a string prefix; empty and missing entries deny
    // nothing.
    let sibling = fx.path("repo-other");
    fs::create_dir(&sibling).unwrap();
    git(&sibling, &["init", "-q"]);
    check_workdir(&sibling, std::slice::from_ref(&fx.repo)).unwrap();
    check_workdir(
        &fx.repo,
        &[PathBuf::new(), fx.path("gone"), PathBuf::from("rel")],
    )
    .unwrap();

    let plain = fx.path("plain");
    fs::create_dir(&plain).unwrap();
    let err = check_workdir(&plain, &[]).unwrap_err();
    assert!(
        matches!(err, WorkspaceError::NotARepository { .. }),
        "{err}"
    );

    let bare = fx.path("bare.git");
    fs::create_dir(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare"]);
    let err = check_workdir(&bare, &[]).unwrap_err();
    assert!(
        matches!(err, WorkspaceError::BareRepository { .. }),
        "{err}"
    );

    let err = check_workdir(&fx.repo.join(".git/refs"), &[]).unwrap_err();
    assert!(
        matches!(
            err,
            WorkspaceError::InsideGitDir { .. } | WorkspaceError::BareRepository { .. }
        ),
        "{err}"
    );
}

#[test]
fn filter_drivers_refused_unless_allowed() {
    let fx = Fixture::new();
    git(
        &fx.repo,
        &["config", "filter.lfs.clean", "git-lfs clean -- %f"],
    );
    git(
        &fx.repo,
        &["config", "filter.lfs.smudge", "git-lfs smudge -- %f"],
    );
    git(
        &fx.repo,
        &["config", "filter.Other.v2.process", "other-filter"],
    );

    let err = create_linked(&fx.worktrees(), "f1", &fx.repo, false).unwrap_err();
    match &err {
        WorkspaceError::FilterDrivers { drivers, .. } => {
            assert_eq!(drivers, &["Other.v2".to_owned(), "lfs".to_owned()]);
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(
        err.to_string().contains("AGENTKIMI_ALLOW_FILTERS=1"),
        "{err}"
    );
    assert!(err.to_string().contains("lfs"), "{err}");
    assert!(!rev_exists(&fx.repo, "agentkimi/f1"));
    assert!(!fx.worktrees().join("f1").exists());

    let ws = create_linked(&fx.worktrees(), "f1", &fx.repo, true).unwrap();
    assert!(ws.worktree.join("README.md").is_file());
}

#[test]
fn unborn_head_refused() {
    let tmp = TempDir::new().unwrap();
    let repo = tmp.path().join("empty");
    fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    let err = create_linked(&tmp.path().join("wt"), "u1", &repo, false).unwrap_err();
    assert!(matches!(err, WorkspaceError::UnbornHead { .. }), "{err}");
    assert!(err.to_string().contains("commit something first"), "{err}");
    assert!(!tmp.path().join("wt/u1").exists());
}

#[test]
fn leftovers_and_bad_ids_refused() {
    let fx = Fixture::new();
    fs::create_dir_all(fx.worktrees().join("dup")).unwrap();
    let err = create_linked(&fx.worktrees(), "dup", &fx.repo, false).unwrap_err();
    assert!(matches!(err, WorkspaceError::AlreadyExists { .. }), "{err}");
    assert!(!rev_exists(&fx.repo, "agentkimi/dup"));
    let err = create_throwaway(&fx.worktrees(), &fx.gitdirs(), "dup").unwrap_err();
    assert!(matches!(err, WorkspaceError::AlreadyExists { .. }), "{err}");
    assert!(!fx.gitdirs().join("dup").exists());

    git(&fx.repo, &["branch", "agentkimi/taken"]);
    let err = create_linked(&fx.worktrees(), "taken", &fx.repo, false).unwrap_err();
    assert!(matches!(err, WorkspaceError::BranchExists { .. }), "{err}");
    assert!(!fx.worktrees().join("taken").exists());

    for id in ["", "../x", "a/b", ".hidden", "x..y", "x.lock", "a b", "é"] {
        let err = create_throwaway(&fx.worktrees(), &fx.gitdirs(), id).unwrap_err();
        assert!(
            matches!(err, WorkspaceError::InvalidId { .. }),
            "{id:?}: {err}"
        );
    }
}

#[test]
fn rewritten_dotgit_file_is_ignored() {
    let fx = Fixture::new();
    let ws = fx.linked("dg");
    let marker = fx.path("hook-ran");

    // Another repository with other content and hooks that would leave a
    // marker if anything ran them.
    let evil = fx.path("evil");
    fs::create_dir(&evil).unwrap();
    git(&evil, &["init", "-q", "-b", "main"]);
    fs::write(evil.join("evil.txt"), "evil\n").unwrap();
    git(&evil, &["add", "-A"]);
    git(&evil, &["commit", "-q", "-m", "evil"]);
    let evil_head = git(&evil, &["rev-parse", "HEAD"]);
    for hook in [
        "pre-commit",
        "post-commit",
        "reference-transaction",
        "post-index-change",
    ] {
        let path = evil.join(".git/hooks").join(hook);
        fs::write(&path, format!("#!/bin/sh\ntouch '{}'\n", marker.display())).unwrap();
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }

    fs::write(
        ws.worktree.join(".git"),
        format!("gitdir: {}\n", evil.join(".git").display()),
    )
    .unwrap();
    fs::write(ws.worktree.join("mine.txt"), "mine\n").unwrap();

    let d = diff(&ws).unwrap();
    let paths: Vec<_> = d.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["mine.txt"]);

    let commit = commit_turn(&ws, "turn").unwrap().expect("a commit");
    assert_eq!(git(&fx.repo, &["rev-parse", "agentkimi/dg"]), commit);
    assert_eq!(
        git(&fx.repo, &["cat-file", "-p", "agentkimi/dg:mine.txt"]),
        "mine"
    );
    assert!(tree_has(&fx.repo, "agentkimi/dg", "README.md"));
    assert!(!tree_has(&fx.repo, "agentkimi/dg", ".git"));
    assert_eq!(git(&evil, &["rev-parse", "HEAD"]), evil_head);
    assert!(!rev_exists(&evil, "agentkimi/dg"));
    assert!(!marker.exists(), "a hook ran");

    remove(&ws).unwrap();
    assert!(git(&evil, &["rev-parse", "HEAD"]) == evil_head);
}

#[test]
fn planted_attributes_and_config_run_nothing() {
    let fx = Fixture::new();
    let marker = fx.path("driver-ran");
    let touch = format!("touch '{}'", marker.display());
    // Drivers configured in the user's own repository, so libgit2 would see
    // them if it ran drivers at all (hence allow_filters below).
    for key in [
        "filter.evil.clean",
        "filter.evil.smudge",
        "filter.evil.process",
    ] {
        git(&fx.repo, &["config", key, &touch]);
    }
    git(&fx.repo, &["config", "filter.evil.required", "true"]);
    git(&fx.repo, &["config", "diff.evil.textconv", &touch]);
    git(&fx.repo, &["config", "diff.evil.command", &touch]);
    let ws = create_linked(&fx.worktrees(), "ev", &fx.repo, true).unwrap();

    // The model plants attributes, and replaces the `.git` file with a
    // directory holding a config and hooks of its own.
    fs::write(
        ws.worktree.join(".gitattributes"),
        "* diff=evil filter=evil\n",
    )
    .unwrap();
    fs::remove_file(ws.worktree.join(".git")).unwrap();
    fs::create_dir_all(ws.worktree.join(".git/hooks")).unwrap();
    fs::write(
        ws.worktree.join(".git/config"),
        format!(
            "[core]\n\tfsmonitor = {touch}\n\thooksPath = hooks\n\
             [filter \"evil\"]\n\tclean = {touch}\n\tsmudge = {touch}\n\
             [diff \"evil\"]\n\ttextconv = {touch}\n\tcommand = {touch}\n"
        ),
    )
    .unwrap();
    let hook = ws.worktree.join(".git/hooks/pre-commit");
    fs::write(&hook, format!("#!/bin/sh\n{touch}\n")).unwrap();
    fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    fs::write(ws.worktree.join("README.md"), "changed\n").unwrap();

    let d = diff(&ws).unwrap();
    assert!(d.text.contains("+changed\n"), "{}", d.text);
    assert!(has_file(&d, ".gitattributes"));
    assert!(!d.files.iter().any(|f| f.path.starts_with(".git/")));
    commit_turn(&ws, "turn").unwrap().expect("a commit");
    assert_eq!(
        git(&fx.repo, &["cat-file", "-p", "agentkimi/ev:README.md"]),
        "changed"
    );
    assert!(
        !tree_paths(&fx.repo, "agentkimi/ev")
            .iter()
            .any(|p| p.starts_with(b".git/"))
    );
    assert!(!marker.exists(), "a driver or hook ran");
    remove(&ws).unwrap();
    assert!(!marker.exists(), "a driver or hook ran");
}

#[test]
fn symlink_is_diffed_and_committed_as_link() {
    let fx = Fixture::new();
    let ws = fx.linked("ln");
    symlink("/etc/passwd", ws.worktree.join("pw")).unwrap();

    let d = diff(&ws).unwrap();
    let pw = file(&d, "pw");
    assert_eq!(pw.status, ChangeKind::Added);
    assert!(d.text.contains("new file mode 120000\n"), "{}", d.text);
    assert!(
        d.text
            .contains("+/etc/passwd\n\\ No newline at end of file\n"),
        "{}",
        d.text
    );
    assert!(
        !d.text.contains("root:"),
        "symlink was followed:\n{}",
        d.text
    );

    commit_turn(&ws, "link").unwrap().expect("a commit");
    let entry = git(&fx.repo, &["ls-tree", "agentkimi/ln", "pw"]);
    assert!(entry.starts_with("120000 blob "), "{entry}");
    assert_eq!(
        git(&fx.repo, &["cat-file", "-p", "agentkimi/ln:pw"]),
        "/etc/passwd"
    );
}

#[test]
fn deletions_typechanges_and_renames() {
    let fx = Fixture::new();
    let ws = fx.linked("dt");
    fs::remove_file(ws.worktree.join("src/lib.rs")).unwrap();
    fs::rename(
        ws.worktree.join("README.md"),
        ws.worktree.join("README.txt"),
    )
    .unwrap();

    let d = diff(&ws).unwrap();
    assert_eq!(file(&d, "src/lib.rs").status, ChangeKind::Deleted);
    let renamed = file(&d, "README.txt");
    assert_eq!(renamed.status, ChangeKind::Renamed);
    assert_eq!(renamed.old_path.as_deref(), Some("README.md"));
    assert!(
        d.text
            .contains("rename from README.md\nrename to README.txt\n"),
        "{}",
        d.text
    );
    assert!(d.text.contains("deleted file mode 100644\n"), "{}", d.text);

    // A regular file replaced by a symlink is a type change.
    fs::write(ws.worktree.join("target.txt"), "t\n").unwrap();
    fs::remove_file(ws.worktree.join("README.txt")).unwrap();
    fs::rename(
        ws.worktree.join("target.txt"),
        ws.worktree.join("README.md"),
    )
    .unwrap();
    commit_turn(&ws, "prepare").unwrap().expect("a commit");
    fs::remove_file(ws.worktree.join("README.md")).unwrap();
    symlink("src", ws.worktree.join("README.md")).unwrap();
    let d = diff(&ws).unwrap();
    assert_eq!(
        file(&d, "README.md").status,
        ChangeKind::TypeChange,
        "{:#?}",
        d.files
    );
    commit_turn(&ws, "typechange").unwrap().expect("a commit");
    let entry = git(&fx.repo, &["ls-tree", "agentkimi/dt", "README.md"]);
    assert!(entry.starts_with("120000 "), "{entry}");
    assert!(!tree_has(&fx.repo, "agentkimi/dt", "src/lib.rs"));
}

#[test]
fn fifo_and_special_git_files() {
    let fx = Fixture::new();
    let ws = fx.linked("ff");
    let mkfifo = |path: &Path| {
        let status = Command::new("mkfifo").arg(path).status().unwrap();
        assert!(status.success());
    };
    mkfifo(&ws.worktree.join("pipe"));
    fs::remove_file(ws.worktree.join("README.md")).unwrap();
    mkfifo(&ws.worktree.join("README.md"));
    fs::write(ws.worktree.join("real.txt"), "real\n").unwrap();

    let w = ws.clone();
    let d = within("diff with FIFOs", move || diff(&w)).unwrap();
    assert!(!has_file(&d, "pipe"), "{:#?}", d.files);
    assert_eq!(file(&d, "README.md").status, ChangeKind::Deleted);
    assert_eq!(file(&d, "real.txt").status, ChangeKind::Added);
    let w = ws.clone();
    within("commit with FIFOs", move || commit_turn(&w, "fifo"))
        .unwrap()
        .expect("a commit");
    assert!(!tree_has(&fx.repo, "agentkimi/ff", "pipe"));
    assert!(!tree_has(&fx.repo, "agentkimi/ff", "README.md"));
    assert!(tree_has(&fx.repo, "agentkimi/ff", "real.txt"));

    // A FIFO where libgit2 reads ignore rules would block it in open().
    fs::create_dir(ws.worktree.join("sub")).unwrap();
    mkfifo(&ws.worktree.join("sub/.gitignore"));
    let w = ws.clone();
    let err = within("diff with a FIFO .gitignore", move || diff(&w)).unwrap_err();
    match &err {
        WorkspaceError::UnsafeGitFile { path, kind } => {
            assert_eq!((path.as_str(), *kind), ("sub/.gitignore", "FIFO"));
        }
        other => panic!("unexpected error {other}"),
    }
    assert!(
        err.to_string()
            .contains("Replace it with a regular file or delete it")
    );
    let w = ws.clone();
    let err = within("commit with a FIFO .gitignore", move || {
        commit_turn(&w, "x")
    })
    .unwrap_err();
    assert!(matches!(err, WorkspaceError::UnsafeGitFile { .. }), "{err}");
    fs::remove_file(ws.worktree.join("sub/.gitignore")).unwrap();

    // A symlinked .gitattributes could make the host read outside the
    // worktree.
    symlink("/etc/passwd", ws.worktree.join(".gitattributes")).unwrap();
    let err = diff(&ws).unwrap_err();
    assert!(
        matches!(
            err,
            WorkspaceError::UnsafeGitFile {
                kind: "symbolic link",
                ..
            }
        ),
        "{err}"
    );
    fs::remove_file(ws.worktree.join(".gitattributes")).unwrap();
    diff(&ws).unwrap();

    // libgit2 never reads the worktree's `.git`, so a FIFO there is harmless.
    fs::remove_file(ws.worktree.join(".git")).unwrap();
    mkfifo(&ws.worktree.join(".git"));
    fs::write(ws.worktree.join("later.txt"), "later\n").unwrap();
    let w = ws.clone();
    let d = within("diff with a FIFO .git", move || diff(&w)).unwrap();
    assert!(has_file(&d, "later.txt"));
    let w = ws.clone();
    within("commit with a FIFO .git", move || commit_turn(&w, "later"))
        .unwrap()
        .expect("a commit");
    assert!(tree_has(&fx.repo, "agentkimi/ff", "later.txt"));
}

#[test]
fn odd_file_names_are_committed_and_shown() {
    let fx = Fixture::new();
    let ws = fx.linked("nm");
    let newline = OsStr::from_bytes(b"new\nline.txt");
    let invalid = OsStr::from_bytes(b"bad\xffname.txt");
    fs::write(ws.worktree.join(newline), "nl\n").unwrap();
    fs::write(ws.worktree.join(invalid), "inv\n").unwrap();

    let d = diff(&ws).unwrap();
    assert_eq!(file(&d, "new\\nline.txt").status, ChangeKind::Added);
    assert_eq!(file(&d, "bad\\xffname.txt").status, ChangeKind::Added);
    // Headers quote such paths the way git does, so no header line is forged.
    assert!(
        d.text
            .contains("diff --git \"a/new\\nline.txt\" \"b/new\\nline.txt\"\n"),
        "{}",
        d.text
    );
    assert!(d.text.contains("\"b/bad\\377name.txt\""), "{}", d.text);
    assert!(
        !d.text.lines().any(|l| l.starts_with("line.txt")),
        "{}",
        d.text
    );

    commit_turn(&ws, "names").unwrap().expect("a commit");
    let paths = tree_paths(&fx.repo, "agentkimi/nm");
    assert!(paths.iter().any(|p| p == b"new\nline.txt"), "{paths:?}");
    assert!(paths.iter().any(|p| p == b"bad\xffname.txt"), "{paths:?}");
    let diff_after = diff(&ws).unwrap();
    assert_eq!(diff_after.files, d.files);
}

#[test]
fn nested_repository_and_unstorable_paths_do_not_break_commit() {
    let fx = Fixture::new();
    let ws = fx.linked("nr");
    let nested = ws.worktree.join("nested");
    fs::create_dir(&nested).unwrap();
    git(&nested, &["init", "-q"]);
    fs::write(nested.join("inner.txt"), "inner\n").unwrap();
    // A name libgit2 refuses to store in an index (an NTFS short name for
    // `.git`), next to an ordinary file.
    fs::write(ws.worktree.join("GIT~1"), "sneaky\n").unwrap();
    fs::write(ws.worktree.join("top.txt"), "top\n").unwrap();

    diff(&ws).unwrap();
    commit_turn(&ws, "nested").unwrap().expect("a commit");
    let paths = tree_paths(&fx.repo, "agentkimi/nr");
    assert!(paths.iter().any(|p| p == b"top.txt"), "{paths:?}");
    assert!(!paths.iter().any(|p| p.starts_with(b"nested")), "{paths:?}");
}

#[test]
fn large_files_count_as_binary() {
    let fx = Fixture::new();
    let ws = fx.linked("big");
    let line = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n";
    fs::write(ws.worktree.join("big.txt"), line.repeat(40_000)).unwrap();
    fs::write(ws.worktree.join("small.bin"), [0u8, 1, 2, 3, 0, 255]).unwrap();

    let d = diff(&ws).unwrap();
    let big = file(&d, "big.txt");
    assert!(big.binary && big.additions == 0, "{big:?}");
    assert!(file(&d, "small.bin").binary);
    assert!(
        d.text
            .contains("Binary files /dev/null and b/big.txt differ\n"),
        "{}",
        d.text
    );
    assert!(
        d.text.len() < 10_000,
        "large file content leaked into the diff"
    );

    commit_turn(&ws, "big").unwrap().expect("a commit");
    let size = git(&fx.repo, &["cat-file", "-s", "agentkimi/big:big.txt"]);
    assert_eq!(size, (line.len() * 40_000).to_string());
}

#[test]
fn worktree_replaced_by_symlink_is_only_unlinked() {
    let fx = Fixture::new();
    let ws = fx.linked("sl");
    fs::write(ws.worktree.join("work.txt"), "keep me\n").unwrap();
    let moved = fx.path("moved");
    fs::rename(&ws.worktree, &moved).unwrap();
    symlink(&moved, &ws.worktree).unwrap();

    assert!(matches!(
        reopen_check(&ws),
        Err(WorkspaceError::WorktreeIsSymlink { .. })
    ));
    assert!(matches!(
        diff(&ws),
        Err(WorkspaceError::WorktreeIsSymlink { .. })
    ));
    assert!(matches!(
        commit_turn(&ws, "x"),
        Err(WorkspaceError::WorktreeIsSymlink { .. })
    ));

    remove(&ws).unwrap();
    assert!(
        fs::symlink_metadata(&ws.worktree).is_err(),
        "symlink not removed"
    );
    assert_eq!(
        fs::read_to_string(moved.join("work.txt")).unwrap(),
        "keep me\n"
    );
    assert!(moved.join("README.md").is_file());
    let listed = git(&fx.repo, &["worktree", "list", "--porcelain"]);
    assert!(
        !listed.contains(&*ws.worktree.to_string_lossy()),
        "{listed}"
    );
    assert!(rev_exists(&fx.repo, "agentkimi/sl"));
}

#[test]
fn remove_does_not_follow_symlinks_inside_the_worktree() {
    let fx = Fixture::new();
    let ws = fx.linked("rm");
    let outside = fx.path("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("precious.txt"), "precious\n").unwrap();
    symlink(&outside, ws.worktree.join("escape")).unwrap();
    fs::create_dir_all(ws.worktree.join("ro/inner")).unwrap();
    fs::write(ws.worktree.join("ro/inner/f"), "f").unwrap();
    fs::set_permissions(
        ws.worktree.join("ro"),
        std::os::unix::fs::PermissionsExt::from_mode(0o500),
    )
    .unwrap();

    remove(&ws).unwrap();
    assert!(!ws.worktree.exists());
    assert_eq!(
        fs::read_to_string(outside.join("precious.txt")).unwrap(),
        "precious\n"
    );
}

#[test]
fn reopen_check_reports_missing_gitdir() {
    let fx = Fixture::new();
    let ws = create_throwaway(&fx.worktrees(), &fx.gitdirs(), "gd").unwrap();
    fs::rename(&ws.gitdir, fx.path("elsewhere")).unwrap();
    let err = reopen_check(&ws).unwrap_err();
    assert!(matches!(err, WorkspaceError::GitDirMissing { .. }), "{err}");
}

#[test]
fn workspace_round_trips_through_json() {
    let fx = Fixture::new();
    let ws = fx.linked("js");
    let json = serde_json::to_string(&ws).unwrap();
    assert!(json.contains("\"mode\":\"linked\""), "{json}");
    let back: Workspace = serde_json::from_str(&json).unwrap();
    assert_eq!(back, ws);
}

#[test]
fn display_path_escapes() {
    assert_eq!(display_path(b"plain/path.rs"), "plain/path.rs");
    assert_eq!(display_path(b"a\nb\tc\\d"), "a\\nb\\tc\\\\d");
    assert_eq!(display_path(b"x\xff\xfey"), "x\\xff\\xfey");
    assert_eq!(display_path("é\u{1b}".as_bytes()), "é\\u{1b}");
}

#[test]
fn diff_text_stops_at_the_limit_but_lists_every_file() {
    let fx = Fixture::new();
    let ws = fx.linked("lim");
    for i in 0..5 {
        fs::write(ws.worktree.join(format!("f{i}.txt")), "line\n".repeat(100)).unwrap();
    }
    let full = diff(&ws).unwrap();
    assert!(!full.truncated);
    let limited = diff::diff_limited(&ws, full.text.len() / 2).unwrap();
    assert!(limited.truncated);
    assert!(limited.text.len() <= full.text.len() / 2);
    assert!(full.text.starts_with(&limited.text));
    assert!(limited.text.ends_with("+line\n"), "cut inside a file");
    assert_eq!(limited.files, full.files);
    assert_eq!(limited.files.len(), 5);
}

#[test]
fn workdir_inside_the_users_own_linked_worktree() {
    let fx = Fixture::new();
    let users = fx.path("users-wt");
    git(
        &fx.repo,
        &[
            "worktree",
            "add",
            "-q",
            "-b",
            "feature",
            users.to_str().unwrap(),
        ],
    );
    fs::write(users.join("feature.txt"), "feature\n").unwrap();
    git(&users, &["add", "feature.txt"]);
    git(&users, &["commit", "-q", "-m", "feature"]);

    let ws = create_linked(&fx.worktrees(), "uw", &users, false).unwrap();
    assert_eq!(ws.base_commit, git(&users, &["rev-parse", "HEAD"]));
    assert_eq!(
        ws.repo_root.as_deref(),
        Some(fs::canonicalize(&users).unwrap().as_path())
    );
    assert!(ws.worktree.join("feature.txt").is_file());
    assert!(
        ws.gitdir
            .starts_with(fs::canonicalize(fx.repo.join(".git")).unwrap())
    );

    fs::write(ws.worktree.join("more.txt"), "more\n").unwrap();
    commit_turn(&ws, "more").unwrap().expect("a commit");
    assert_eq!(
        git(&fx.repo, &["cat-file", "-p", "agentkimi/uw:more.txt"]),
        "more"
    );
    remove(&ws).unwrap();
    let listed = git(&fx.repo, &["worktree", "list", "--porcelain"]);
    assert!(listed.contains(&*fs::canonicalize(&users).unwrap().to_string_lossy()));
    assert!(
        !listed.contains(&*ws.worktree.to_string_lossy()),
        "{listed}"
    );
}

#[test]
fn branch_diff_survives_the_worktree() {
    let fx = Fixture::new();
    let ws = fx.linked("s-branchdiff");
    fs::write(ws.worktree.join("README.md"), "hello again\n").unwrap();
    commit_turn(&ws, "turn 1").unwrap();
    // Not committed: the branch diff must not show it.
    fs::write(ws.worktree.join("scratch.txt"), "x\n").unwrap();
    remove(&ws).unwrap();
    assert!(!ws.worktree.exists());

    let d = diff_branch(&ws).unwrap();
    assert_eq!(d.files.len(), 1, "{d:?}");
    assert_eq!(file(&d, "README.md").status, ChangeKind::Modified);
    assert!(d.text.contains("+hello again"), "{}", d.text);
}
