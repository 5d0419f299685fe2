//! The LS tool: lists one directory.
//!
//! Unlike Glob and Grep, LS shows everything in the directory, hidden
//! entries and ignored files included: it answers "what is here", and the
//! model can pass `ignore` globs to hide what it does not want.

use std::{fs, io, path::Path};

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use serde_json::Value;

use super::{
    Outcome, ToolError, ToolResult,
    fsutil::{not_found, resolve},
    input::{Field, Kind, decode, opt, req},
};

/// Most entries LS lists.
const MAX_ENTRIES: usize = 1000;

const FIELDS: &[Field] = &[req("path", Kind::Str), opt("ignore", Kind::StrList)];

#[derive(Debug, Deserialize)]
struct LsInput {
    path: String,
    ignore: Option<Vec<String>>,
}

/// Runs LS.
pub(super) fn run(root: &Path, input: &Value) -> ToolResult {
    let args: LsInput = decode("LS", input, FIELDS)?;
    let dir = if args.path.is_empty() {
        root.to_path_buf()
    } else {
        resolve(root, &args.path)
    };
    let shown = dir.display();
    let ignore = ignore_set(args.ignore.as_deref().unwrap_or_default())?;

    let entries = fs::read_dir(&dir).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ToolError::new(not_found("directory", &dir)),
        io::ErrorKind::NotADirectory => ToolError::new(format!(
            "{shown} is a file, not a directory; use Read to read it"
        )),
        _ => ToolError::new(format!("cannot list {shown}: {e}")),
    })?;

    let mut names: Vec<String> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ToolError::new(format!("cannot list {shown}: {e}")))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if ignore.is_match(&name) {
            continue;
        }
        // A symlink to a directory is listed as a directory, since that is
        // how every other tool will treat it.
        let is_dir = fs::metadata(entry.path()).map_or_else(
            |_| entry.file_type().is_ok_and(|t| t.is_dir()),
            |m| m.is_dir(),
        );
        names.push(if is_dir { format!("{name}/") } else { name });
    }
    names.sort();

    let total = names.len();
    if total == 0 {
        return Ok(Outcome::text(format!("{shown}/ is empty")));
    }
    let mut output = format!("{shown}/");
    for name in names.iter().take(MAX_ENTRIES) {
        output.push_str("\n  ");
        output.push_str(name);
    }
    let truncated = total > MAX_ENTRIES;
    if truncated {
        output.push_str(&format!(
            "\n({} more entries not shown; use Glob to narrow the listing)",
            total - MAX_ENTRIES
        ));
    }
    Ok(Outcome {
        output,
        truncated,
        ..Outcome::default()
    })
}

fn ignore_set(patterns: &[String]) -> Result<GlobSet, ToolError> {
    let mut builder = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = Glob::new(pattern)
            .map_err(|e| ToolError::new(format!("LS: invalid ignore glob {pattern:?}: {e}")))?;
        builder.add(glob);
    }
    builder
        .build()
        .map_err(|e| ToolError::new(format!("LS: invalid ignore globs: {e}")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lists_sorted_with_dirs_marked() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("src")).unwrap();
        fs::create_dir(root.join(".git")).unwrap();
        fs::write(root.join("b.txt"), "").unwrap();
        fs::write(root.join("a.log"), "").unwrap();
        std::os::unix::fs::symlink(root.join("src"), root.join("link")).unwrap();
        let d = root.display();

        let out = run(root, &json!({"path": "."})).unwrap();
        assert_eq!(
            out.output,
            format!("{d}/\n  .git/\n  a.log\n  b.txt\n  link/\n  src/")
        );
        let out = run(
            root,
            &json!({"path": d.to_string(), "ignore": ["*.log", ".*"]}),
        )
        .unwrap();
        assert_eq!(out.output, format!("{d}/\n  b.txt\n  link/\n  src/"));
        let out = run(root, &json!({"path": "src"})).unwrap();
        assert_eq!(out.output, format!("{d}/src/ is empty"));

        let err = run(root, &json!({"path": "b.txt"})).unwrap_err();
        assert_eq!(
            err.0,
            format!("{d}/b.txt is a file, not a directory; use Read to read it")
        );
        let err = run(root, &json!({"path": "srx"})).unwrap_err();
        assert_eq!(
            err.0,
            format!("directory not found: {d}/srx; did you mean: {d}/src")
        );
    }

    #[test]
    fn caps_entries() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..1005 {
            fs::write(dir.path().join(format!("f{i:04}")), "").unwrap();
        }
        let out = run(dir.path(), &json!({"path": ""})).unwrap();
        assert!(out.truncated);
        assert!(
            out.output
                .ends_with("  f0999\n(5 more entries not shown; use Glob to narrow the listing)")
        );
    }
}
