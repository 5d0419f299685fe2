//! The Glob tool: finds files by name pattern, newest first.
//!
//! The walk follows `rg --files` defaults (hidden files skipped, ignore
//! files respected, `.git` never entered) so Glob and Grep agree on which
//! files exist. The pattern is matched with standard glob rules against the
//! path relative to the search directory: `*` stays within one path
//! component and `**` crosses them, so `*.rs` finds top-level files only and
//! `**/*.rs` finds them at any depth.

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::SystemTime,
};

use globset::GlobBuilder;
use ignore::{DirEntry, WalkBuilder, WalkState};
use serde::Deserialize;
use serde_json::Value;

use super::{
    Outcome, ToolError, ToolResult,
    fsutil::{not_found, resolve},
    input::{Field, Kind, decode, opt, req},
};

/// Most paths Glob lists.
const MAX_RESULTS: usize = 100;

const FIELDS: &[Field] = &[req("pattern", Kind::Str), opt("path", Kind::Str)];

#[derive(Debug, Deserialize)]
struct GlobInput {
    pattern: String,
    path: Option<String>,
}

/// A walker over `base` with the filters rg applies by default, never
/// entering `.git`. Shared with Grep so both tools see the same files.
pub(super) fn standard_walker(base: &Path) -> WalkBuilder {
    let mut builder = WalkBuilder::new(base);
    builder
        .standard_filters(true)
        .follow_links(false)
        // `.git` is hidden and so skipped already; this keeps it out even
        // if the hidden-file rule changes.
        .filter_entry(|entry| entry.file_name() != ".git");
    builder
}

/// Entries a walk must reach before it is worth several threads.
const PARALLEL_FROM: usize = 2000;

/// Whether `base` holds at least [`PARALLEL_FROM`] entries. Starting and
/// stopping the parallel walker costs about a millisecond, several times the
/// whole walk of a small tree, so the search tools walk on one thread unless
/// this says the tree is large; counting stops at the limit, which costs a
/// small fraction of a large tree's walk.
pub(super) fn is_large_tree(base: &Path) -> bool {
    standard_walker(base).build().take(PARALLEL_FROM).count() >= PARALLEL_FROM
}

/// Resolves the optional `path` of a search tool to a directory or file
/// that exists.
pub(super) fn search_base(root: &Path, path: Option<&str>) -> Result<PathBuf, ToolError> {
    let base = match path {
        None | Some("") => root.to_path_buf(),
        Some(p) => resolve(root, p),
    };
    match fs::metadata(&base) {
        Ok(_) => Ok(base),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(ToolError::new(not_found("path", &base)))
        }
        Err(e) => Err(ToolError::new(format!(
            "cannot search {}: {e}",
            base.display()
        ))),
    }
}

/// Runs Glob.
pub(super) fn run(root: &Path, input: &Value) -> ToolResult {
    let args: GlobInput = decode("Glob", input, FIELDS)?;
    if args.pattern.is_empty() {
        return Err(ToolError::new(
            "Glob: `pattern` is empty; give a glob such as **/*.rs",
        ));
    }
    let base = search_base(root, args.path.as_deref())?;
    if !base.is_dir() {
        return Err(ToolError::new(format!(
            "{} is a file, not a directory; give a directory as `path` (or Read the file)",
            base.display()
        )));
    }
    // An absolute pattern names whole paths; a relative one is relative to
    // the search directory.
    let absolute = Path::new(&args.pattern).is_absolute();
    let matcher = GlobBuilder::new(&args.pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| ToolError::new(format!("Glob: invalid pattern {:?}: {e}", args.pattern)))?
        .compile_matcher();

    // The match an entry is, if it is one.
    let visit = |entry: &DirEntry| -> Option<(SystemTime, PathBuf)> {
        if entry.file_type().is_none_or(|t| t.is_dir()) {
            return None;
        }
        let path = entry.path();
        let subject = if absolute {
            path
        } else {
            path.strip_prefix(&base).unwrap_or(path)
        };
        matcher.is_match(subject).then(|| {
            let mtime = entry
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            (mtime, path.to_path_buf())
        })
    };
    let found = Mutex::new(Vec::new());
    let unreadable = AtomicUsize::new(0);
    let record = |entry: Result<DirEntry, ignore::Error>| match entry {
        Ok(entry) => {
            if let Some(hit) = visit(&entry) {
                found
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(hit);
            }
        }
        Err(_) => {
            unreadable.fetch_add(1, Ordering::Relaxed);
        }
    };
    // A large tree is walked on every core, as `rg --files` does; `render`
    // sorts the answer, so the order in which threads find files does not
    // matter.
    if is_large_tree(&base) {
        standard_walker(&base).build_parallel().run(|| {
            let record = &record;
            Box::new(move |entry| {
                record(entry);
                WalkState::Continue
            })
        });
    } else {
        standard_walker(&base).build().for_each(record);
    }
    let found = found.into_inner().unwrap_or_else(PoisonError::into_inner);
    let unreadable = unreadable.into_inner();

    Ok(render(found, unreadable, &args.pattern, &base))
}

fn render(
    mut found: Vec<(SystemTime, PathBuf)>,
    unreadable: usize,
    pattern: &str,
    base: &Path,
) -> Outcome {
    let mut notes = Vec::new();
    if unreadable > 0 {
        notes.push(format!(
            "({unreadable} director{} could not be read and {} skipped)",
            if unreadable == 1 { "y" } else { "ies" },
            if unreadable == 1 { "was" } else { "were" }
        ));
    }
    if found.is_empty() {
        let mut output = "No files found".to_string();
        if !pattern.contains('/') {
            output.push_str(&format!(
                " (the pattern is matched against paths relative to {}, so {pattern:?} only \
                 matches files directly in it; use \"**/{pattern}\" to search subdirectories)",
                base.display()
            ));
        }
        for note in notes {
            output.push('\n');
            output.push_str(&note);
        }
        return Outcome::text(output);
    }

    found.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let total = found.len();
    let mut lines: Vec<String> = found
        .iter()
        .take(MAX_RESULTS)
        .map(|(_, p)| p.display().to_string())
        .collect();
    let truncated = total > MAX_RESULTS;
    if truncated {
        lines.push(format!(
            "({} more not shown; narrow the pattern)",
            total - MAX_RESULTS
        ));
    }
    lines.extend(notes);
    Outcome {
        output: lines.join("\n"),
        truncated,
        ..Outcome::default()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn set_mtime(path: &Path, secs: u64) {
        let file = fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
            .unwrap();
    }

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join(".git")).unwrap();
        fs::write(root.join(".git/config.rs"), "").unwrap();
        for (name, secs) in [
            ("a.rs", 100),
            ("src/b.rs", 300),
            ("src/deep/c.rs", 200),
            ("target/gen.rs", 400),
            (".hidden/h.rs", 500),
            ("notes.txt", 600),
        ] {
            let path = root.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, "").unwrap();
            set_mtime(&path, secs);
        }
        fs::write(root.join(".gitignore"), "target/\n").unwrap();
        dir
    }

    fn glob(root: &Path, input: Value) -> Outcome {
        run(root, &input).unwrap()
    }

    #[test]
    fn newest_first_respecting_ignores() {
        let dir = tree();
        let d = dir.path().display();
        let out = glob(dir.path(), json!({"pattern": "**/*.rs"}));
        assert_eq!(
            out.output,
            format!("{d}/src/b.rs\n{d}/src/deep/c.rs\n{d}/a.rs")
        );

        let out = glob(dir.path(), json!({"pattern": "*.rs"}));
        assert_eq!(out.output, format!("{d}/a.rs"));

        let out = glob(dir.path(), json!({"pattern": "*.rs", "path": "src"}));
        assert_eq!(out.output, format!("{d}/src/b.rs"));

        let out = glob(dir.path(), json!({"pattern": format!("{d}/src/**/*.rs")}));
        assert_eq!(out.output, format!("{d}/src/b.rs\n{d}/src/deep/c.rs"));
    }

    /// `rg --files -g <glob>` run in `root`: relative paths, sorted, or
    /// `None` when rg is not installed.
    fn rg_files(root: &Path, glob: &str) -> Option<Vec<String>> {
        let out = std::process::Command::new("rg")
            .args(["--no-config", "--files", "-g", glob])
            .current_dir(root)
            .env_remove("RIPGREP_CONFIG_PATH")
            .output()
            .ok()?;
        let mut lines: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.trim_start_matches("./").to_string())
            .collect();
        lines.sort();
        Some(lines)
    }

    /// Glob's paths relative to `root`, sorted.
    fn glob_files(root: &Path, pattern: &str) -> Vec<String> {
        let out = glob(root, json!({"pattern": pattern}));
        if out.output == "No files found" {
            return Vec::new();
        }
        let prefix = format!("{}/", root.display());
        let mut lines: Vec<String> = out
            .output
            .lines()
            .map(|l| l.strip_prefix(&prefix).unwrap_or(l).to_string())
            .collect();
        lines.sort();
        lines
    }

    #[test]
    fn agrees_with_rg_files() {
        let dir = tree();
        let root = dir.path();
        for (name, content) in [
            ("src/deep/test_x.py", ""),
            ("src/deep/.env", ""),
            ("docs/guide.md", ""),
            ("docs/api/index.md", ""),
            ("src/gen/out.rs", ""),
        ] {
            fs::create_dir_all(root.join(name).parent().unwrap()).unwrap();
            fs::write(root.join(name), content).unwrap();
        }
        fs::write(root.join("src/.gitignore"), "gen/\n").unwrap();

        // Patterns with a slash are anchored at the search directory in both
        // tools, so they must list exactly the same files.
        for pattern in [
            "**/*.rs",
            "src/**/*.rs",
            "src/*.rs",
            "**/test_*.py",
            "docs/**",
            "**/*.{md,py}",
            "**/deep/[a-z]*",
            "target/**",
        ] {
            let Some(expected) = rg_files(root, pattern) else {
                eprintln!("rg is not installed; skipping the comparison");
                return;
            };
            assert_eq!(glob_files(root, pattern), expected, "pattern {pattern}");
        }
        assert!(!glob_files(root, "**/*.rs").is_empty());

        // Without a slash they differ on purpose: rg's -g matches the name at
        // any depth (gitignore rules), Glob matches the path relative to the
        // search directory, so `*.rs` means top-level files only.
        assert_eq!(glob_files(root, "*.rs"), ["a.rs"]);
        assert_eq!(
            rg_files(root, "*.rs").unwrap(),
            ["a.rs", "src/b.rs", "src/deep/c.rs"]
        );
        // And a glob that names a hidden file explicitly makes rg list it;
        // Glob skips hidden files whatever the pattern (LS shows them).
        assert_eq!(rg_files(root, "**/.env").unwrap(), ["src/deep/.env"]);
        assert!(glob_files(root, "**/.env").is_empty());
    }

    #[test]
    fn large_trees_give_the_same_answers_on_every_core() {
        let dir = tree();
        let root = dir.path();
        let d = root.display();
        assert!(!is_large_tree(root));
        fs::create_dir(root.join("many")).unwrap();
        for i in 0..PARALLEL_FROM {
            let text = if i % 500 == 7 { "needle\n" } else { "hay\n" };
            fs::write(root.join(format!("many/f{i:04}.txt")), text).unwrap();
        }
        fs::write(root.join("target/needle.txt"), "needle\n").unwrap();
        assert!(is_large_tree(root));

        // The same answer as the small tree's, ignores and order included.
        let out = glob(root, json!({"pattern": "**/*.rs"}));
        assert_eq!(
            out.output,
            format!("{d}/src/b.rs\n{d}/src/deep/c.rs\n{d}/a.rs")
        );
        let mut found: Vec<String> = glob(root, json!({"pattern": "many/f000*.txt"}))
            .output
            .lines()
            .map(str::to_string)
            .collect();
        found.sort();
        let expected: Vec<String> = (0..10).map(|i| format!("{d}/many/f000{i}.txt")).collect();
        assert_eq!(found, expected);

        // Grep's files_with_matches takes the parallel walk too.
        let out = super::super::grep::run(root, &json!({"pattern": "needle"})).unwrap();
        let mut found: Vec<&str> = out.output.lines().collect();
        found.sort();
        let expected: Vec<String> = [7, 507, 1007, 1507]
            .iter()
            .map(|i| format!("{d}/many/f{i:04}.txt"))
            .collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn no_match_and_errors() {
        let dir = tree();
        let d = dir.path().display();
        let out = glob(dir.path(), json!({"pattern": "*.py"}));
        assert_eq!(
            out.output,
            format!(
                "No files found (the pattern is matched against paths relative to {d}, so \
                 \"*.py\" only matches files directly in it; use \"**/*.py\" to search \
                 subdirectories)"
            )
        );
        let out = glob(dir.path(), json!({"pattern": "src/*.py"}));
        assert_eq!(out.output, "No files found");

        let err = run(dir.path(), &json!({"pattern": "a[", "path": "src"})).unwrap_err();
        assert!(
            err.0.starts_with("Glob: invalid pattern \"a[\": "),
            "{}",
            err.0
        );
        let err = run(dir.path(), &json!({"pattern": "*", "path": "nope"})).unwrap_err();
        assert_eq!(err.0, format!("path not found: {d}/nope"));
    }

    #[test]
    fn caps_at_100() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..130 {
            let path = dir.path().join(format!("f{i:03}.txt"));
            fs::write(&path, "").unwrap();
            set_mtime(&path, 1000 + i);
        }
        let out = glob(dir.path(), json!({"pattern": "*.txt"}));
        let lines: Vec<&str> = out.output.lines().collect();
        assert_eq!(lines.len(), 101);
        assert!(lines[0].ends_with("/f129.txt"));
        assert_eq!(lines[100], "(30 more not shown; narrow the pattern)");
        assert!(out.truncated);
    }
}
