//! Git fixtures for end-to-end tests: a small repository made with the git
//! CLI, and helpers to look at it the way a user would.
//!
//! The server works on repositories through libgit2; the tests deliberately
//! inspect the results through the git CLI instead, so the two can disagree
//! and a bug in one cannot hide behind the same bug in the other.
//!
//! Every command runs isolated from the machine's git configuration (no
//! global or system config, a fixed identity, no signing), so a developer's
//! hooks, templates or `init.defaultBranch` cannot change what a test sees.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use tempfile::TempDir;

/// The fixture's branch name, fixed so tests need not ask.
pub const MAIN_BRANCH: &str = "main";

/// The fixture's README, committed at the base commit.
pub const README: &str = "# Fixture\n\nA repository made by the agentkimi test harness.\n";

/// The fixture's small file, committed at the base commit.
pub const GREETING_PATH: &str = "greeting.txt";

/// The content of [`GREETING_PATH`] at the base commit.
pub const GREETING: &str = "hello from the fixture\n";

/// A `git` command isolated from the machine's configuration.
pub fn git_command() -> Command {
    let mut command = Command::new("git");
    command
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Fixture Author")
        .env("GIT_AUTHOR_EMAIL", "fixture@example.invalid")
        .env("GIT_COMMITTER_NAME", "Fixture Author")
        .env("GIT_COMMITTER_EMAIL", "fixture@example.invalid")
        .args([
            "-c",
            "commit.gpgsign=false",
            "-c",
            "core.hooksPath=/dev/null",
        ]);
    command
}

/// Runs `git -C dir args…` and returns its stdout.
///
/// # Panics
///
/// When git cannot run or exits non-zero; the message has git's stderr.
pub fn git_in(dir: &Path, args: &[&str]) -> String {
    let output = try_git_in(dir, args);
    assert!(
        output.status.success(),
        "git -C {} {} failed ({}):\n{}",
        dir.display(),
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `git -C dir args…` and returns its whole output, success or not.
///
/// # Panics
///
/// When git cannot be started at all.
pub fn try_git_in(dir: &Path, args: &[&str]) -> Output {
    git_command()
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run git (is it installed?): {error}"))
}

/// A git repository in a temporary directory with one commit on
/// [`MAIN_BRANCH`] holding a README and [`GREETING_PATH`]. Removed on drop.
pub struct GitRepo {
    _dir: TempDir,
    path: PathBuf,
}

impl GitRepo {
    /// Creates the repository.
    pub fn new() -> GitRepo {
        let dir = tempfile::Builder::new()
            .prefix("agentkimi-fixture-")
            .tempdir()
            .expect("create a temporary directory for the fixture repository");
        // The canonical path is what the server will report back (it
        // resolves symlinks such as a /tmp link), so tests compare like with
        // like.
        let path = fs::canonicalize(dir.path()).expect("canonicalize the fixture path");

        git_in(&path, &["init", "--quiet", "--initial-branch", MAIN_BRANCH]);
        fs::write(path.join("README.md"), README).expect("write the fixture README");
        fs::write(path.join(GREETING_PATH), GREETING).expect("write the fixture file");
        git_in(&path, &["add", "README.md", GREETING_PATH]);
        git_in(
            &path,
            &["commit", "--quiet", "-m", "Fixture: initial commit"],
        );

        GitRepo { _dir: dir, path }
    }

    /// The repository's root (its working tree), canonical.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs git in the repository and returns its stdout; panics on failure.
    pub fn git(&self, args: &[&str]) -> String {
        git_in(&self.path, args)
    }

    /// `git status --porcelain --untracked-files=all`: empty when the
    /// working tree and index match HEAD and nothing is untracked.
    pub fn status(&self) -> String {
        self.git(&["status", "--porcelain", "--untracked-files=all"])
    }

    /// The commit `HEAD` points at.
    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"]).trim().to_owned()
    }

    /// Whether local branch `name` exists.
    pub fn has_branch(&self, name: &str) -> bool {
        let reference = format!("refs/heads/{name}");
        try_git_in(
            &self.path,
            &["rev-parse", "--verify", "--quiet", &reference],
        )
        .status
        .success()
    }

    /// Subjects of the commits reachable from `rev`, newest first.
    pub fn log_subjects(&self, rev: &str) -> Vec<String> {
        self.git(&["log", "--format=%s", rev, "--"])
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The content of `path` at `rev`, or `None` when it is not there.
    pub fn show_file(&self, rev: &str, path: &str) -> Option<String> {
        let spec = format!("{rev}:{path}");
        let output = try_git_in(&self.path, &["show", &spec]);
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_has_one_clean_commit_with_two_files() {
        let repo = GitRepo::new();

        assert_eq!(repo.status(), "");
        assert_eq!(repo.log_subjects("HEAD"), ["Fixture: initial commit"]);
        assert_eq!(repo.git(&["branch", "--show-current"]).trim(), MAIN_BRANCH);
        assert!(repo.has_branch(MAIN_BRANCH));
        assert!(!repo.has_branch("agentkimi/none"));
        assert_eq!(
            repo.show_file("HEAD", GREETING_PATH).as_deref(),
            Some(GREETING)
        );
        assert_eq!(repo.show_file("HEAD", "README.md").as_deref(), Some(README));
        assert_eq!(repo.show_file("HEAD", "missing.txt"), None);
        assert_eq!(repo.head().len(), 40);
        assert!(repo.path().is_absolute());
    }

    #[test]
    fn status_sees_untracked_files() {
        let repo = GitRepo::new();

        fs::write(repo.path().join("new.txt"), "x").unwrap();

        assert_eq!(repo.status(), "?? new.txt\n");
    }
}
