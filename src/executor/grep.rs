//! The Grep tool: regex search over files with ripgrep's semantics.
//!
//! It is built from the crates ripgrep itself is made of (`ignore` for the
//! walk, `grep-regex` for matching, `grep-searcher` for reading files), set
//! up the way `rg` sets them up by default, so the model gets the behaviour
//! it knows from `rg`: ignore files respected, hidden and binary files
//! skipped, `^`/`$` anchored at line boundaries.
//!
//! Content and count searches run on one thread and stop as soon as the
//! output is full or `head_limit` is reached, which keeps both memory and
//! time bounded on a large tree; they visit files in path order so their
//! output is stable between calls. `files_with_matches` lists newest files
//! first instead, because recently changed files are usually the ones the
//! model is looking for; since it sorts its answer anyway, it searches a
//! large tree on every core, as `rg` does. Output paths are absolute, like Glob's.

use std::{
    io,
    path::Path,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::SystemTime,
};

use grep_regex::{RegexMatcher, RegexMatcherBuilder};
use grep_searcher::{BinaryDetection, Searcher, SearcherBuilder, Sink, SinkContext, SinkMatch};
use ignore::{WalkBuilder, WalkState, overrides::OverrideBuilder, types::TypesBuilder};
use serde::Deserialize;
use serde_json::Value;

use super::{
    Outcome, ToolError, ToolResult,
    glob::{is_large_tree, search_base, standard_walker},
    input::{Field, Kind, decode, opt, req},
    text::{CappedText, MAX_LINE_CHARS, cut_line, edit_distance, strip_eol},
};

/// Largest output Grep returns, in characters.
const OUTPUT_CAP: usize = 30_000;
/// Most context lines shown before or after a match.
const MAX_CONTEXT: u64 = 1000;

const FIELDS: &[Field] = &[
    req("pattern", Kind::Str),
    opt("path", Kind::Str),
    opt("glob", Kind::Str),
    opt("type", Kind::Str),
    opt("output_mode", Kind::Str),
    opt("-i", Kind::Bool),
    opt("-n", Kind::Bool),
    opt("-A", Kind::UInt),
    opt("-B", Kind::UInt),
    opt("-C", Kind::UInt),
    opt("multiline", Kind::Bool),
    opt("head_limit", Kind::UInt),
];

#[derive(Debug, Deserialize)]
struct GrepInput {
    pattern: String,
    path: Option<String>,
    glob: Option<String>,
    #[serde(rename = "type")]
    file_type: Option<String>,
    output_mode: Option<String>,
    #[serde(rename = "-i")]
    ignore_case: Option<bool>,
    #[serde(rename = "-n")]
    line_numbers: Option<bool>,
    #[serde(rename = "-A")]
    after: Option<u64>,
    #[serde(rename = "-B")]
    before: Option<u64>,
    #[serde(rename = "-C")]
    context: Option<u64>,
    multiline: Option<bool>,
    head_limit: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Content,
    FilesWithMatches,
    Count,
}

/// Runs Grep.
pub(super) fn run(root: &Path, input: &Value) -> ToolResult {
    let args: GrepInput = decode("Grep", input, FIELDS)?;
    let mode = match args.output_mode.as_deref() {
        None | Some("files_with_matches") => Mode::FilesWithMatches,
        Some("content") => Mode::Content,
        Some("count") => Mode::Count,
        Some(other) => {
            return Err(ToolError::new(format!(
                "Grep: `output_mode` must be \"content\", \"files_with_matches\" or \"count\", \
                 got {other:?}"
            )));
        }
    };
    let multiline = args.multiline.unwrap_or(false);
    let base = search_base(root, args.path.as_deref())?;
    let matcher = build_matcher(&args.pattern, args.ignore_case.unwrap_or(false), multiline)?;

    // The searcher buffers the before-context, so an absurd -B could hold a
    // whole file in memory; no useful answer needs more than this.
    let lines = |n: u64| n.min(MAX_CONTEXT) as usize;
    let context = args.context.unwrap_or(0);
    let (before, after) = if mode == Mode::Content {
        (
            lines(args.before.unwrap_or(context)),
            lines(args.after.unwrap_or(context)),
        )
    } else {
        (0, 0)
    };
    let mut searcher = SearcherBuilder::new()
        .line_number(true)
        .multi_line(multiline)
        .binary_detection(BinaryDetection::quit(b'\x00'))
        .before_context(before)
        .after_context(after)
        .build();

    let mut walker = standard_walker(&base);
    walker.sort_by_file_name(|a, b| a.cmp(b));
    if let Some(glob) = args.glob.as_deref().filter(|g| !g.is_empty()) {
        // Like rg run from the worktree root, a glob with a slash is taken
        // relative to the root, whatever `path` is.
        let mut overrides = OverrideBuilder::new(root);
        overrides
            .add(glob)
            .map_err(|e| ToolError::new(format!("Grep: invalid glob {glob:?}: {e}")))?;
        let overrides = overrides
            .build()
            .map_err(|e| ToolError::new(format!("Grep: invalid glob {glob:?}: {e}")))?;
        walker.overrides(overrides);
    }
    if let Some(name) = args.file_type.as_deref().filter(|t| !t.is_empty()) {
        walker.types(file_types(name)?);
    }

    let mut out = Collector {
        mode,
        line_numbers: args.line_numbers.unwrap_or(false),
        with_context: before > 0 || after > 0,
        text: CappedText::new(OUTPUT_CAP),
        emitted: 0,
        head_limit: args.head_limit.map(|n| n as usize),
        limit_hit: false,
        separator_due: false,
        files: Vec::new(),
        errors: 0,
    };

    if mode == Mode::FilesWithMatches && is_large_tree(&base) {
        let (files, errors) = files_with_matches(&walker, &matcher, &searcher);
        out.files = files;
        out.errors = errors;
        return Ok(out.finish());
    }
    for entry in walker.build() {
        let Ok(entry) = entry else {
            out.errors += 1;
            continue;
        };
        if !entry.file_type().is_some_and(|t| t.is_file()) {
            continue;
        }
        let path = entry.path();
        let shown = path.display().to_string();
        out.separator_due = true;

        let searched = match mode {
            Mode::Content => {
                let mut sink = LinesSink {
                    out: &mut out,
                    path: &shown,
                };
                searcher.search_path(&matcher, path, &mut sink)
            }
            Mode::Count => {
                let mut sink = CountSink { count: 0 };
                let result = searcher.search_path(&matcher, path, &mut sink);
                if sink.count > 0 {
                    out.emit(&format!("{shown}:{}", sink.count));
                }
                result
            }
            Mode::FilesWithMatches => {
                let mut sink = FoundSink { found: false };
                let result = searcher.search_path(&matcher, path, &mut sink);
                if sink.found {
                    let mtime = entry
                        .metadata()
                        .ok()
                        .and_then(|m| m.modified().ok())
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    out.files.push((mtime, shown));
                }
                result
            }
        };
        if searched.is_err() {
            out.errors += 1;
        }
        if out.is_done() {
            break;
        }
    }

    Ok(out.finish())
}

/// The files holding a match, with their modification times, and how many
/// paths could not be searched. The walk runs on several threads; the
/// caller sorts the files, so the order they are found in does not matter.
fn files_with_matches(
    walker: &WalkBuilder,
    matcher: &RegexMatcher,
    searcher: &Searcher,
) -> (Vec<(SystemTime, String)>, usize) {
    let found = Mutex::new(Vec::new());
    let errors = AtomicUsize::new(0);
    walker.build_parallel().run(|| {
        let matcher = matcher.clone();
        let mut searcher = searcher.clone();
        let (found, errors) = (&found, &errors);
        Box::new(move |entry| {
            let Ok(entry) = entry else {
                errors.fetch_add(1, Ordering::Relaxed);
                return WalkState::Continue;
            };
            if !entry.file_type().is_some_and(|t| t.is_file()) {
                return WalkState::Continue;
            }
            let mut sink = FoundSink { found: false };
            if searcher
                .search_path(&matcher, entry.path(), &mut sink)
                .is_err()
            {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            if sink.found {
                let mtime = entry
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                found
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((mtime, entry.path().display().to_string()));
            }
            WalkState::Continue
        })
    });
    (
        found.into_inner().unwrap_or_else(PoisonError::into_inner),
        errors.into_inner(),
    )
}

fn build_matcher(
    pattern: &str,
    ignore_case: bool,
    multiline: bool,
) -> Result<RegexMatcher, ToolError> {
    let mut builder = RegexMatcherBuilder::new();
    // rg always lets ^ and $ match at line boundaries. Without multiline
    // mode it also declares \n the line terminator, which makes the matcher
    // refuse to match across lines, so the searcher can work line by line.
    builder.case_insensitive(ignore_case).multi_line(true);
    if multiline {
        builder.dot_matches_new_line(true);
    } else {
        builder.line_terminator(Some(b'\n'));
    }
    builder
        .build(pattern)
        .map_err(|e| ToolError::new(format!("Grep: invalid regex {pattern:?}: {e}")))
}

/// The file-type filter for `type`, with a suggestion when the name is not
/// one of rg's types.
fn file_types(name: &str) -> Result<ignore::types::Types, ToolError> {
    let mut builder = TypesBuilder::new();
    builder.add_defaults();
    let definitions = builder.definitions();
    if !definitions.iter().any(|d| d.name() == name) {
        let mut close: Vec<(usize, &str)> = definitions
            .iter()
            .map(|d| (edit_distance(name, d.name()), d.name()))
            .filter(|(dist, _)| *dist <= 2)
            .collect();
        close.sort();
        let hint = if close.is_empty() {
            "common ones are rust, py, js, ts, go, java, c, cpp, sh, md, json, yaml, toml; \
             or use `glob` instead, such as \"*.ext\""
                .to_string()
        } else {
            let names: Vec<&str> = close.iter().take(5).map(|(_, n)| *n).collect();
            format!("did you mean: {}", names.join(", "))
        };
        return Err(ToolError::new(format!(
            "Grep: unknown file type {name:?} (types are rg's --type names); {hint}"
        )));
    }
    builder.select(name);
    builder
        .build()
        .map_err(|e| ToolError::new(format!("Grep: cannot use file type {name:?}: {e}")))
}

/// Gathers output across files and decides when to stop searching.
struct Collector {
    mode: Mode,
    line_numbers: bool,
    with_context: bool,
    text: CappedText,
    /// Output lines (or entries) produced so far, for `head_limit`.
    emitted: usize,
    head_limit: Option<usize>,
    limit_hit: bool,
    /// Whether a `--` line goes before the next line printed, as rg does
    /// between context groups and between files.
    separator_due: bool,
    /// Matching files and their modification times (files_with_matches).
    files: Vec<(SystemTime, String)>,
    errors: usize,
}

impl Collector {
    /// Adds one output line; returns `false` when no more lines are wanted.
    fn emit(&mut self, line: &str) -> bool {
        if self.head_limit.is_some_and(|limit| self.emitted >= limit) {
            self.limit_hit = true;
            return false;
        }
        if !self.text.push_line(line) {
            return false;
        }
        self.emitted += 1;
        true
    }

    /// Adds one line of file content in `path:N:text` form (`-` instead of
    /// `:` for context lines).
    fn emit_content(&mut self, path: &str, sep: char, line_no: u64, bytes: &[u8]) -> bool {
        if self.separator_due && self.with_context && self.emitted > 0 && !self.emit("--") {
            return false;
        }
        self.separator_due = false;
        let text = String::from_utf8_lossy(bytes);
        let (text, _) = cut_line(strip_eol(&text), MAX_LINE_CHARS);
        let line = if self.line_numbers {
            format!("{path}{sep}{line_no}{sep}{text}")
        } else {
            format!("{path}{sep}{text}")
        };
        self.emit(&line)
    }

    fn is_done(&self) -> bool {
        self.limit_hit || self.text.is_full()
    }

    fn finish(mut self) -> Outcome {
        if self.mode == Mode::FilesWithMatches {
            let mut files = std::mem::take(&mut self.files);
            files.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
            for (_, path) in &files {
                if !self.emit(path) {
                    break;
                }
            }
        }

        let full = self.text.is_full();
        let empty = self.text.is_empty();
        let mut output = self.text.finish(&format!(
            "[output cut at {OUTPUT_CAP} characters; narrow the search with path, glob, type \
             or head_limit]"
        ));
        if empty && !full {
            output = "No matches found".to_string();
        }
        if self.limit_hit {
            output.push_str(&format!(
                "\n[stopped at head_limit={}; more results exist]",
                self.emitted
            ));
        }
        if self.errors > 0 {
            output.push_str(&format!(
                "\n[{} path{} could not be searched (unreadable or vanished)]",
                self.errors,
                if self.errors == 1 { "" } else { "s" }
            ));
        }
        Outcome {
            output,
            truncated: full || self.limit_hit,
            ..Outcome::default()
        }
    }
}

/// Prints matching and context lines of one file.
struct LinesSink<'a> {
    out: &'a mut Collector,
    path: &'a str,
}

impl Sink for LinesSink<'_> {
    type Error = io::Error;

    fn matched(&mut self, _: &Searcher, mat: &SinkMatch<'_>) -> Result<bool, io::Error> {
        // In multiline mode one match can span lines; rg prints each with
        // its own number.
        let first = mat.line_number().unwrap_or(0);
        for (line_no, line) in (first..).zip(mat.lines()) {
            if !self.out.emit_content(self.path, ':', line_no, line) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn context(&mut self, _: &Searcher, ctx: &SinkContext<'_>) -> Result<bool, io::Error> {
        let line_no = ctx.line_number().unwrap_or(0);
        Ok(self.out.emit_content(self.path, '-', line_no, ctx.bytes()))
    }

    fn context_break(&mut self, _: &Searcher) -> Result<bool, io::Error> {
        self.out.separator_due = true;
        Ok(true)
    }
}

/// Counts matching lines of one file.
struct CountSink {
    count: u64,
}

impl Sink for CountSink {
    type Error = io::Error;

    fn matched(&mut self, _: &Searcher, mat: &SinkMatch<'_>) -> Result<bool, io::Error> {
        self.count += mat.lines().count() as u64;
        Ok(true)
    }
}

/// Notes whether one file matches, and stops at the first match.
struct FoundSink {
    found: bool,
}

impl Sink for FoundSink {
    type Error = io::Error;

    fn matched(&mut self, _: &Searcher, _: &SinkMatch<'_>) -> Result<bool, io::Error> {
        self.found = true;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use std::{fs, path::PathBuf, process::Command};

    use serde_json::json;

    use super::*;

    fn tree() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        let files: &[(&str, &str)] = &[
            (".gitignore", "ignored/\n*.log\n"),
            (
                "src/main.rs",
                "use std::io;\n\nfn main() {\n    // NOTE: foo\n    println!(\"foo\");\n}\n\nfn helper() {}\n",
            ),
            (
                "src/lib.rs",
                "pub struct Foo {\n    bar: u32,\n}\n\nimpl Foo {\n    fn new() -> Self {\n        Foo { bar: 1 }\n    }\n}\n\n// foo again\n// and foo\nfn a() {}\nfn b() {}\nfn c() {}\nfn d() {}\nfn foo() {}\n",
            ),
            (
                "README.md",
                "# Foo\n\nTodo: write docs about foo.\nfn in prose\n",
            ),
            ("ignored/x.rs", "fn ignored() { foo }\n"),
            ("app.log", "foo in a log\n"),
            (".hidden/h.rs", "fn hidden() { foo }\n"),
            ("notes.txt", "nothing to see\nFOO upper\n"),
            ("crlf.txt", "foo\r\nbar\r\n"),
        ];
        fs::create_dir(root.join(".git")).unwrap();
        for (name, text) in files {
            let path = root.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, text).unwrap();
        }
        fs::write(root.join("bin.dat"), b"foo\0bar\n").unwrap();
        (dir, root)
    }

    fn grep(root: &Path, input: Value) -> Outcome {
        run(root, &input).unwrap()
    }

    /// rg's output for `args` run on `root`, or `None` when rg is missing.
    fn rg(root: &Path, args: &[&str]) -> Option<String> {
        let out = Command::new("rg")
            .args([
                "--no-config",
                "--color",
                "never",
                "--no-heading",
                "-H",
                "--sort",
                "path",
            ])
            .args(args)
            .arg(root)
            .current_dir(root)
            .env_remove("RIPGREP_CONFIG_PATH")
            .output()
            .ok()?;
        Some(String::from_utf8(out.stdout).unwrap())
    }

    fn sorted_lines(s: &str) -> Vec<String> {
        let mut lines: Vec<String> = s.lines().map(str::to_string).collect();
        lines.sort();
        lines
    }

    #[test]
    fn agrees_with_rg() {
        let (_dir, root) = tree();
        let cases: &[(Value, &[&str], bool)] = &[
            (
                json!({"pattern": "fn \\w+", "output_mode": "content", "-n": true}),
                &["-n", "fn \\w+"],
                false,
            ),
            (
                json!({"pattern": "todo", "-i": true, "output_mode": "content"}),
                &["-N", "-i", "todo"],
                false,
            ),
            (
                json!({"pattern": "foo", "output_mode": "content", "-C": 1, "-n": true}),
                &["-n", "-C1", "foo"],
                false,
            ),
            (
                json!({"pattern": "foo", "output_mode": "content", "-A": 2}),
                &["-N", "-A2", "foo"],
                false,
            ),
            (
                json!({"pattern": "foo", "output_mode": "content", "-B": 1, "-n": true}),
                &["-n", "-B1", "foo"],
                false,
            ),
            (
                json!({"pattern": "^fn", "output_mode": "count"}),
                &["-c", "^fn"],
                false,
            ),
            (json!({"pattern": "foo"}), &["-l", "foo"], true),
            (
                json!({"pattern": "fn", "glob": "*.rs"}),
                &["-l", "--glob", "*.rs", "fn"],
                true,
            ),
            (
                json!({"pattern": "fn", "type": "rust"}),
                &["-l", "-t", "rust", "fn"],
                true,
            ),
            (
                json!({"pattern": "fn", "glob": "!src/**"}),
                &["-l", "--glob", "!src/**", "fn"],
                true,
            ),
            (
                json!({"pattern": "struct \\w+ \\{.*?bar", "multiline": true, "output_mode": "content", "-n": true}),
                &["-n", "-U", "--multiline-dotall", "struct \\w+ \\{.*?bar"],
                false,
            ),
            (
                json!({"pattern": "u32,$|bar$", "output_mode": "content"}),
                &["-N", "u32,$|bar$"],
                false,
            ),
        ];

        if rg(&root, &["--version"]).is_none() {
            println!("rg is not installed; skipping the comparison with rg");
            return;
        }
        for (input, rg_args, unordered) in cases {
            // Grep shows lines without their \r, as Read does; rg keeps it.
            let expected = rg(&root, rg_args).unwrap().replace("\r\n", "\n");
            let ours = grep(&root, input.clone()).output;
            if *unordered {
                assert_eq!(sorted_lines(&ours), sorted_lines(&expected), "case {input}");
            } else {
                assert_eq!(format!("{ours}\n"), expected, "case {input}");
            }
        }
    }

    #[test]
    fn files_newest_first_and_head_limit() {
        let (_dir, root) = tree();
        for (name, secs) in [
            ("src/main.rs", 300),
            ("src/lib.rs", 100),
            ("README.md", 200),
        ] {
            let file = fs::File::options()
                .write(true)
                .open(root.join(name))
                .unwrap();
            file.set_modified(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs))
                .unwrap();
        }
        let r = root.display();
        let out = grep(&root, json!({"pattern": "fn", "path": "."}));
        assert_eq!(
            out.output,
            format!("{r}/src/main.rs\n{r}/README.md\n{r}/src/lib.rs")
        );

        let out = grep(&root, json!({"pattern": "fn", "head_limit": 2}));
        assert_eq!(
            out.output,
            format!(
                "{r}/src/main.rs\n{r}/README.md\n[stopped at head_limit=2; more results exist]"
            )
        );
        assert!(out.truncated);

        let out = grep(
            &root,
            json!({
                "pattern": "fn",
                "output_mode": "content",
                "head_limit": 2,
                "path": "src/main.rs"
            }),
        );
        assert_eq!(
            out.output,
            format!("{r}/src/main.rs:fn main() {{\n{r}/src/main.rs:fn helper() {{}}")
        );
        assert!(!out.truncated);
    }

    #[test]
    fn messages() {
        let (_dir, root) = tree();
        let out = grep(&root, json!({"pattern": "zzz"}));
        assert_eq!(out.output, "No matches found");

        let err = run(&root, &json!({"pattern": "a("})).unwrap_err();
        assert!(
            err.0.starts_with("Grep: invalid regex \"a(\": "),
            "{}",
            err.0
        );
        let err = run(&root, &json!({"pattern": "a", "output_mode": "lines"})).unwrap_err();
        assert_eq!(
            err.0,
            "Grep: `output_mode` must be \"content\", \"files_with_matches\" or \"count\", got \"lines\""
        );
        let err = run(&root, &json!({"pattern": "a", "type": "rsut"})).unwrap_err();
        assert!(
            err.0.starts_with("Grep: unknown file type \"rsut\""),
            "{}",
            err.0
        );
        assert!(err.0.contains("rust"), "{}", err.0);
        let err = run(&root, &json!({"pattern": "a", "-A": "2"})).unwrap_err();
        assert_eq!(
            err.0,
            "Grep: field `-A` must be a non-negative integer, got the string \"2\""
        );
    }

    #[test]
    fn output_cap() {
        let dir = tempfile::tempdir().unwrap();
        let line = "match ".repeat(50);
        let text: String = (0..500).map(|_| format!("{line}\n")).collect();
        fs::write(dir.path().join("big.txt"), text).unwrap();
        let out = grep(
            dir.path(),
            json!({"pattern": "match", "output_mode": "content"}),
        );
        assert!(out.truncated);
        assert!(out.output.chars().count() <= OUTPUT_CAP + 200);
        assert!(out.output.ends_with(
            "[output cut at 30000 characters; narrow the search with path, glob, type or head_limit]"
        ));
    }
}
