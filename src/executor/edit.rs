//! The Edit and MultiEdit tools: exact string replacement in a text file.
//!
//! Edits work on the raw file contents, so every byte outside the replaced
//! text stays as it was: line endings, a missing or present final newline,
//! trailing spaces. The one adaptation is for CRLF files, described at
//! [`plan_line_endings`].
//!
//! When an edit cannot be applied, the error is written to get the next
//! attempt right: a missing `old_string` comes with the most similar lines
//! of the file and a whitespace hint, an ambiguous one with the lines where
//! it occurs.

use std::{borrow::Cow, fs, io, path::Path};

use serde::Deserialize;
use serde_json::Value;

use super::{
    Outcome, ToolError, ToolResult,
    fsutil::{not_found, resolve, write_atomic},
    input::{Field, Kind, decode, opt, req},
    text::{cut_line, numbered, similarity, squash_whitespace, strip_eol},
};

const EDIT_FIELDS: &[Field] = &[
    req("file_path", Kind::Str),
    req("old_string", Kind::Str),
    req("new_string", Kind::Str),
    opt("replace_all", Kind::Bool),
];

const ONE_EDIT: &[Field] = &[
    req("old_string", Kind::Str),
    req("new_string", Kind::Str),
    opt("replace_all", Kind::Bool),
];

const MULTI_FIELDS: &[Field] = &[
    req("file_path", Kind::Str),
    req("edits", Kind::ObjList(ONE_EDIT)),
];

/// Lines of context shown around a change.
const SNIPPET_CONTEXT: usize = 2;
/// Most lines a snippet shows, so a large replacement stays short.
const SNIPPET_MAX_LINES: usize = 12;
/// Characters shown of each snippet or candidate line.
const SNIPPET_LINE_CHARS: usize = 200;

#[derive(Debug, Deserialize)]
struct EditInput {
    file_path: String,
    #[serde(flatten)]
    edit: EditSpec,
}

#[derive(Debug, Deserialize)]
struct MultiEditInput {
    file_path: String,
    edits: Vec<EditSpec>,
}

#[derive(Debug, Deserialize)]
struct EditSpec {
    old_string: String,
    new_string: String,
    replace_all: Option<bool>,
}

/// What one applied edit did.
struct Applied {
    replacements: usize,
    /// Byte offset of the first replacement in the edited text.
    first_at: usize,
    /// Length of the text that replaced it.
    new_len: usize,
}

/// Runs Edit.
pub(super) fn run_edit(root: &Path, input: &Value) -> ToolResult {
    let args: EditInput = decode("Edit", input, EDIT_FIELDS)?;
    let path = resolve(root, &args.file_path);
    let shown = path.display().to_string();
    let content = load(&path, "Edit")?;

    let (edited, applied) = apply(&content, &args.edit, &shown).map_err(ToolError::new)?;
    store(&path, &edited)?;

    let n = applied.replacements;
    let snippet = snippet(&edited, applied.first_at, applied.new_len);
    Ok(Outcome::text(format!(
        "Edited {shown}: {n} replacement{}\n{snippet}",
        plural(n)
    )))
}

/// Runs MultiEdit: all edits in order on the file's text, written only if
/// every one applies.
pub(super) fn run_multi_edit(root: &Path, input: &Value) -> ToolResult {
    let args: MultiEditInput = decode("MultiEdit", input, MULTI_FIELDS)?;
    if args.edits.is_empty() {
        return Err(ToolError::new(
            "MultiEdit: `edits` is empty; give at least one {old_string, new_string}",
        ));
    }
    let path = resolve(root, &args.file_path);
    let shown = path.display().to_string();
    let mut content = load(&path, "MultiEdit")?;

    let total = args.edits.len();
    let mut report = Vec::with_capacity(total);
    let mut replacements = 0;
    for (i, edit) in args.edits.iter().enumerate() {
        let (edited, applied) = apply(&content, edit, &shown).map_err(|reason| {
            let order = if i > 0 {
                " (edits apply in order, so it saw the text as the earlier edits left it)"
            } else {
                ""
            };
            ToolError::new(format!(
                "MultiEdit: edit {} of {total} failed{order}: {reason}\nNothing was written.",
                i + 1
            ))
        })?;
        let line = line_of(&edited, applied.first_at);
        report.push(format!(
            "  edit {}: {} replacement{}, first at line {line}",
            i + 1,
            applied.replacements,
            plural(applied.replacements)
        ));
        replacements += applied.replacements;
        content = edited;
    }
    store(&path, &content)?;

    Ok(Outcome::text(format!(
        "Edited {shown}: {total} edit{}, {replacements} replacement{}\n{}",
        plural(total),
        plural(replacements),
        report.join("\n")
    )))
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Reads the file to edit as text.
fn load(path: &Path, tool: &str) -> Result<String, ToolError> {
    let shown = path.display();
    // Never open a FIFO or device: reading one could block or never end.
    if fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir()) {
        return Err(ToolError::new(format!(
            "{shown} is not a regular file (a FIFO, socket or device); {tool} only changes \
             regular files"
        )));
    }
    let bytes = fs::read(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ToolError::new(format!(
            "{}; {tool} changes existing files, use Write to create one",
            not_found("file", path)
        )),
        io::ErrorKind::IsADirectory => {
            ToolError::new(format!("{shown} is a directory; {tool} works on files"))
        }
        _ => ToolError::new(format!("cannot read {shown}: {e}")),
    })?;
    String::from_utf8(bytes).map_err(|e| {
        ToolError::new(format!(
            "{shown} is not valid UTF-8 text (bad byte at offset {}); {tool} only changes \
             text files, rewrite this one with Write or a Bash command",
            e.utf8_error().valid_up_to()
        ))
    })
}

fn store(path: &Path, content: &str) -> Result<(), ToolError> {
    write_atomic(path, content.as_bytes())
        .map(drop)
        .map_err(|e| ToolError::new(format!("cannot write {}: {e}", path.display())))
}

/// Applies one edit to `content`. The error is the reason in words, without
/// the tool name, so MultiEdit can say which edit it was.
fn apply(content: &str, edit: &EditSpec, shown: &str) -> Result<(String, Applied), String> {
    if edit.old_string.is_empty() {
        return Err(
            "old_string is empty; give the exact text to replace (to create or overwrite a \
             whole file, use Write)"
                .to_string(),
        );
    }
    if edit.old_string == edit.new_string {
        return Err("old_string and new_string are identical; nothing would change".to_string());
    }
    let replace_all = edit.replace_all.unwrap_or(false);

    let (old, new) = plan_line_endings(content, &edit.old_string, &edit.new_string);
    // Uniqueness counts overlapping occurrences too: in "aaa", "aa" occurs
    // twice, and replacing "the" one occurrence would be a guess.
    let positions = if replace_all {
        content
            .match_indices(old.as_ref())
            .map(|(i, _)| i)
            .collect()
    } else {
        overlapping_positions(content, &old)
    };
    match positions.len() {
        0 => return Err(not_found_reason(content, &edit.old_string, shown)),
        n if n > 1 && !replace_all => {
            let lines = lines_of(content, &positions);
            let mut listed: Vec<String> = lines.iter().take(20).map(u64::to_string).collect();
            if lines.len() > 20 {
                listed.push("…".to_string());
            }
            return Err(format!(
                "old_string occurs {n} times in {shown} (at lines {}); add surrounding lines \
                 to old_string so it matches exactly one place, or set replace_all to true to \
                 change every occurrence",
                listed.join(", ")
            ));
        }
        _ => {}
    }

    let (edited, replacements) = if replace_all {
        (content.replace(old.as_ref(), &new), positions.len())
    } else {
        (content.replacen(old.as_ref(), &new, 1), 1)
    };
    Ok((
        edited,
        Applied {
            replacements,
            first_at: positions[0],
            new_len: new.len(),
        },
    ))
}

/// Picks the strings to search for and insert, given the file's line
/// endings.
///
/// Models nearly always send `\n` line endings, even for a file that uses
/// `\r\n` (Read shows lines without the `\r`). So in a file whose every
/// line ends in CRLF, strings without any `\r` of their own are converted to
/// CRLF before matching and inserting: the match is then found, and the
/// file keeps one line-ending style. Every `\n` of such a file follows a
/// `\r`, so the conversion finds exactly the places the model meant.
/// Everything else (LF files, mixed files, files without a line break,
/// strings that carry `\r`) is used byte for byte, because there is no
/// single style to adapt to.
fn plan_line_endings<'a>(
    content: &str,
    old: &'a str,
    new: &'a str,
) -> (Cow<'a, str>, Cow<'a, str>) {
    let crlf = content.matches("\r\n").count();
    let pure_crlf = crlf > 0 && crlf == content.matches('\n').count();
    if !pure_crlf || old.contains('\r') || new.contains('\r') {
        return (Cow::Borrowed(old), Cow::Borrowed(new));
    }
    (to_crlf(old), to_crlf(new))
}

/// Every start of `needle` in `content`, overlapping ones included.
fn overlapping_positions(content: &str, needle: &str) -> Vec<usize> {
    let mut positions = Vec::new();
    let mut from = 0;
    while let Some(found) = content[from..].find(needle) {
        let at = from + found;
        positions.push(at);
        // Step one character, not one byte, to stay on a char boundary.
        from = at + content[at..].chars().next().map_or(1, char::len_utf8);
    }
    positions
}

fn to_crlf(s: &str) -> Cow<'_, str> {
    if s.contains('\n') {
        Cow::Owned(s.replace('\n', "\r\n"))
    } else {
        Cow::Borrowed(s)
    }
}

/// Explains why `old` was not found: the lines of the file most like its
/// first line, and a hint when only whitespace differs.
fn not_found_reason(content: &str, old: &str, shown: &str) -> String {
    let mut reason = format!("old_string was not found in {shown}.");

    let squashed_old = squash_whitespace(old);
    if !squashed_old.is_empty() && squash_whitespace(content).contains(&squashed_old) {
        reason.push_str(
            " It does match if whitespace is ignored, so the indentation, tabs versus spaces \
             or line breaks differ: copy the text exactly as Read shows it (after the tab that \
             follows each line number).",
        );
    }

    let needle = old
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut scored: Vec<(f64, usize, &str)> = lines(content)
        .enumerate()
        .map(|(i, line)| (similarity(line.trim(), needle), i + 1, strip_eol(line)))
        .filter(|(score, _, _)| *score >= 0.4)
        .collect();
    // Best first; equal scores in file order.
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    if scored.is_empty() {
        reason.push_str(
            " No line of the file resembles its first line; Read the file to see its current text.",
        );
    } else {
        reason.push_str(" The lines most like its first line are:");
        for (_, line_no, line) in scored.iter().take(3) {
            let (text, _) = cut_line(line, SNIPPET_LINE_CHARS);
            reason.push('\n');
            reason.push_str(&numbered(*line_no as u64, &text));
        }
        reason.push_str("\nRead the file again if it may have changed since you last read it.");
    }
    reason
}

/// The 1-based line of each byte offset in `positions` (ascending).
fn lines_of(content: &str, positions: &[usize]) -> Vec<u64> {
    let mut lines = Vec::with_capacity(positions.len());
    let (mut line, mut from) = (1u64, 0usize);
    for &pos in positions {
        line += content.as_bytes()[from..pos]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        from = pos;
        lines.push(line);
    }
    lines
}

/// The lines of `content` without their `\n`; a final newline does not
/// start one more (empty) line.
fn lines(content: &str) -> std::str::Split<'_, char> {
    content.strip_suffix('\n').unwrap_or(content).split('\n')
}

fn line_of(content: &str, pos: usize) -> u64 {
    lines_of(content, &[pos])[0]
}

/// A few numbered lines of `content` around the text at
/// `at..at + len`, for the model to check the change.
fn snippet(content: &str, at: usize, len: usize) -> String {
    let first = line_of(content, at) as usize;
    let last = line_of(content, at + len.saturating_sub(1).min(content.len() - at)) as usize;
    let from = first.saturating_sub(SNIPPET_CONTEXT).max(1);
    let to = (last + SNIPPET_CONTEXT).min(from + SNIPPET_MAX_LINES - 1);

    lines(content)
        .enumerate()
        .skip(from - 1)
        .take(to + 1 - from)
        .map(|(i, line)| {
            numbered(
                i as u64 + 1,
                &cut_line(strip_eol(line), SNIPPET_LINE_CHARS).0,
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    struct Tree {
        dir: tempfile::TempDir,
    }

    impl Tree {
        fn new(name: &str, content: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            fs::write(dir.path().join(name), content).unwrap();
            Tree { dir }
        }
        fn root(&self) -> &Path {
            self.dir.path()
        }
        fn read(&self, name: &str) -> String {
            fs::read_to_string(self.dir.path().join(name)).unwrap()
        }
        fn shown(&self, name: &str) -> String {
            self.dir.path().join(name).display().to_string()
        }
        fn edit(&self, input: Value) -> Result<String, String> {
            run_edit(self.root(), &input)
                .map(|o| o.output)
                .map_err(|e| e.0)
        }
        fn multi(&self, input: Value) -> Result<String, String> {
            run_multi_edit(self.root(), &input)
                .map(|o| o.output)
                .map_err(|e| e.0)
        }
    }

    const SOURCE: &str = "fn main() {\n    let x = 1;\n    let y = 2;\n    println!(\"{x}\");\n    println!(\"{y}\");\n}\n";

    #[test]
    fn edit_output_and_snippet() {
        let t = Tree::new("m.rs", SOURCE);
        let out = t
            .edit(json!({"file_path": "m.rs", "old_string": "let y = 2;", "new_string": "let y = 3;\n    let z = 4;"}))
            .unwrap();
        assert_eq!(
            out,
            format!(
                "Edited {}: 1 replacement\n     1\tfn main() {{\n     2\t    let x = 1;\n     3\t    let y = 3;\n     4\t    let z = 4;\n     5\t    println!(\"{{x}}\");\n     6\t    println!(\"{{y}}\");",
                t.shown("m.rs")
            )
        );
        assert_eq!(
            t.read("m.rs"),
            "fn main() {\n    let x = 1;\n    let y = 3;\n    let z = 4;\n    println!(\"{x}\");\n    println!(\"{y}\");\n}\n"
        );
    }

    #[test]
    fn not_found_shows_similar_lines() {
        let t = Tree::new("m.rs", SOURCE);
        let err = t
            .edit(json!({"file_path": "m.rs", "old_string": "let x = 10;", "new_string": "z"}))
            .unwrap_err();
        assert_eq!(
            err,
            format!(
                "old_string was not found in {}. The lines most like its first line are:\n     2\t    let x = 1;\n     3\t    let y = 2;\nRead the file again if it may have changed since you last read it.",
                t.shown("m.rs")
            )
        );
        assert_eq!(t.read("m.rs"), SOURCE);
    }

    #[test]
    fn not_found_whitespace_hint() {
        let t = Tree::new("m.rs", SOURCE);
        let err = t
            .edit(json!({"file_path": "m.rs", "old_string": "\tlet x = 1;\n\tlet y = 2;", "new_string": "z"}))
            .unwrap_err();
        assert!(
            err.contains("It does match if whitespace is ignored"),
            "{err}"
        );
        assert!(err.contains("     2\t    let x = 1;"), "{err}");
    }

    #[test]
    fn not_unique_lists_lines_and_replace_all_works() {
        let t = Tree::new("m.rs", SOURCE);
        let err = t
            .edit(json!({"file_path": "m.rs", "old_string": "println!", "new_string": "eprintln!"}))
            .unwrap_err();
        assert_eq!(
            err,
            format!(
                "old_string occurs 2 times in {} (at lines 4, 5); add surrounding lines to \
                 old_string so it matches exactly one place, or set replace_all to true to \
                 change every occurrence",
                t.shown("m.rs")
            )
        );

        let out = t
            .edit(json!({"file_path": "m.rs", "old_string": "println!", "new_string": "eprintln!", "replace_all": true}))
            .unwrap();
        assert!(out.starts_with(&format!("Edited {}: 2 replacements\n", t.shown("m.rs"))));
        assert_eq!(t.read("m.rs"), SOURCE.replace("println!", "eprintln!"));
    }

    #[test]
    fn overlapping_occurrences_are_not_unique() {
        let t = Tree::new("a", "x aaa y");
        let err = t
            .edit(json!({"file_path": "a", "old_string": "aa", "new_string": "b"}))
            .unwrap_err();
        assert!(err.starts_with("old_string occurs 2 times"), "{err}");
    }

    #[test]
    fn bad_edits_are_refused() {
        let t = Tree::new("m.rs", SOURCE);
        let err = t
            .edit(json!({"file_path": "m.rs", "old_string": "", "new_string": "x"}))
            .unwrap_err();
        assert!(err.starts_with("old_string is empty"), "{err}");
        let err = t
            .edit(json!({"file_path": "m.rs", "old_string": "main", "new_string": "main"}))
            .unwrap_err();
        assert_eq!(
            err,
            "old_string and new_string are identical; nothing would change"
        );
        let err = t
            .edit(json!({"file_path": "nope.rs", "old_string": "a", "new_string": "b"}))
            .unwrap_err();
        assert_eq!(
            err,
            format!(
                "file not found: {}; Edit changes existing files, use Write to create one",
                t.shown("nope.rs")
            )
        );
    }

    #[test]
    fn crlf_is_preserved() {
        let t = Tree::new("w.txt", "one\r\ntwo\r\nthree\r\n");
        t.edit(json!({"file_path": "w.txt", "old_string": "one\ntwo", "new_string": "uno\ndos"}))
            .unwrap();
        assert_eq!(t.read("w.txt"), "uno\r\ndos\r\nthree\r\n");

        // A one-line match whose replacement adds lines gets CRLF too.
        t.edit(json!({"file_path": "w.txt", "old_string": "three", "new_string": "tres\nquatro"}))
            .unwrap();
        assert_eq!(t.read("w.txt"), "uno\r\ndos\r\ntres\r\nquatro\r\n");

        // Strings that carry their own \r are used as sent.
        t.edit(json!({"file_path": "w.txt", "old_string": "dos\r\n", "new_string": "dos\n"}))
            .unwrap();
        assert_eq!(t.read("w.txt"), "uno\r\ndos\ntres\r\nquatro\r\n");
    }

    #[test]
    fn final_newline_is_preserved() {
        let t = Tree::new("a", "x\ny");
        t.edit(json!({"file_path": "a", "old_string": "y", "new_string": "z"}))
            .unwrap();
        assert_eq!(t.read("a"), "x\nz");
        let t = Tree::new("a", "x\ny\n\n");
        t.edit(json!({"file_path": "a", "old_string": "x", "new_string": "w"}))
            .unwrap();
        assert_eq!(t.read("a"), "w\ny\n\n");
    }

    #[test]
    fn multi_edit_applies_in_order() {
        let t = Tree::new("m.rs", SOURCE);
        let out = t
            .multi(json!({"file_path": "m.rs", "edits": [
                {"old_string": "let x = 1;", "new_string": "let x = 10;"},
                {"old_string": "x", "new_string": "xx", "replace_all": true},
            ]}))
            .unwrap();
        assert_eq!(
            out,
            format!(
                "Edited {}: 2 edits, 3 replacements\n  edit 1: 1 replacement, first at line 2\n  edit 2: 2 replacements, first at line 2",
                t.shown("m.rs")
            )
        );
        assert_eq!(
            t.read("m.rs"),
            SOURCE
                .replace("let x = 1;", "let x = 10;")
                .replace('x', "xx")
        );
    }

    #[test]
    fn multi_edit_failure_writes_nothing() {
        let t = Tree::new("m.rs", SOURCE);
        let err = t
            .multi(json!({"file_path": "m.rs", "edits": [
                {"old_string": "let x = 1;", "new_string": "let x = 10;"},
                {"old_string": "let x = 1;", "new_string": "let x = 11;"},
            ]}))
            .unwrap_err();
        assert!(
            err.starts_with(
                "MultiEdit: edit 2 of 2 failed (edits apply in order, so it saw the text as \
                 the earlier edits left it): old_string was not found in"
            ),
            "{err}"
        );
        assert!(err.ends_with("Nothing was written."), "{err}");
        assert_eq!(t.read("m.rs"), SOURCE);

        let err = t
            .multi(json!({"file_path": "m.rs", "edits": [{"old_string": "a"}]}))
            .unwrap_err();
        assert_eq!(
            err,
            "MultiEdit: missing required field `edits[0].new_string` (a string)"
        );
    }

    /// A small deterministic generator, so the property loop needs no crate.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) % n as u64) as usize
        }
        fn text(&mut self, len: usize) -> String {
            const PIECES: &[&str] = &["a", "b", " ", "\t", "\n", "\n", "é", "xy"];
            (0..len).map(|_| PIECES[self.next(PIECES.len())]).collect()
        }
    }

    /// Edits `old` to `new` and back in a file holding `content` (converted
    /// to CRLF when `crlf`), and checks the bytes come back exactly. Returns
    /// whether both edits applied (they need not: `old` or `new` may occur
    /// more than once).
    fn round_trip(dir: &Path, content: &str, old: &str, new: &str, crlf: bool) -> bool {
        let path = dir.join("p.txt");
        let bytes = if crlf {
            content.replace('\n', "\r\n")
        } else {
            content.to_string()
        };
        fs::write(&path, &bytes).unwrap();

        let forward = json!({"file_path": "p.txt", "old_string": old, "new_string": new});
        if run_edit(dir, &forward).is_err() {
            return false;
        }
        // A file without any line break has no style to keep, so an edit
        // that removes the last one cannot be undone byte for byte.
        let edited = fs::read_to_string(&path).unwrap();
        let had_breaks = content.contains('\n');
        if crlf && had_breaks && !edited.contains('\n') {
            return false;
        }
        if crlf && had_breaks {
            assert_eq!(
                edited.matches("\r\n").count(),
                edited.matches('\n').count(),
                "a CRLF file got mixed endings: {edited:?}"
            );
        }
        let back = json!({"file_path": "p.txt", "old_string": new, "new_string": old});
        if run_edit(dir, &back).is_err() {
            return false;
        }
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            bytes,
            "old={old:?} new={new:?} crlf={crlf}"
        );
        true
    }

    #[test]
    fn edit_then_inverse_restores_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = Lcg(42);
        let mut checked = [0, 0];
        for round in 0..800 {
            let crlf = round % 2 == 1;
            let len = 5 + rng.next(40);
            let content = rng.text(len);
            let chars: Vec<usize> = content.char_indices().map(|(i, _)| i).collect();
            let start = rng.next(chars.len());
            let end = (start + 1 + rng.next(6)).min(chars.len());
            let old = &content[chars[start]..chars.get(end).copied().unwrap_or(content.len())];
            let len = rng.next(6);
            let new = rng.text(len);
            if round_trip(dir.path(), &content, old, &new, crlf) {
                checked[usize::from(crlf)] += 1;
            }
        }
        assert!(
            checked.iter().all(|&n| n > 50),
            "too few cases exercised: {checked:?}"
        );
    }
}
