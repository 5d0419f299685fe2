//! Worktrees, diffs and commits through git2.
