//! The Write tool: creates or replaces a whole file.

use std::{fs, path::Path};

use serde::Deserialize;
use serde_json::Value;

use super::{
    Outcome, ToolError, ToolResult,
    fsutil::{Written, resolve, write_atomic},
    input::{Field, Kind, decode, req},
};

const FIELDS: &[Field] = &[req("file_path", Kind::Str), req("content", Kind::Str)];

#[derive(Debug, Deserialize)]
struct WriteInput {
    file_path: String,
    content: String,
}

/// Runs Write.
pub(super) fn run(root: &Path, input: &Value) -> ToolResult {
    let args: WriteInput = decode("Write", input, FIELDS)?;
    if args.file_path.is_empty() {
        return Err(ToolError::new(
            "Write: `file_path` is empty; give the path of the file to write",
        ));
    }
    let path = resolve(root, &args.file_path);
    let shown = path.display();
    if fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
        return Err(ToolError::new(format!(
            "{shown} is a directory; give the path of a file inside it"
        )));
    }

    let len = args.content.len();
    match write_atomic(&path, args.content.as_bytes()) {
        Ok(Written::Created) => Ok(Outcome::text(format!("Created {shown} ({len} bytes)"))),
        Ok(Written::Replaced) => Ok(Outcome::text(format!("Wrote {len} bytes to {shown}"))),
        Err(e) => Err(ToolError::new(format!("cannot write {shown}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn creates_then_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();

        let out = run(
            dir.path(),
            &json!({"file_path": "new/dir/a.txt", "content": "hi\n"}),
        )
        .unwrap();
        assert_eq!(out.output, format!("Created {d}/new/dir/a.txt (3 bytes)"));
        let out = run(
            dir.path(),
            &json!({"file_path": "new/dir/a.txt", "content": "héllo"}),
        )
        .unwrap();
        assert_eq!(out.output, format!("Wrote 6 bytes to {d}/new/dir/a.txt"));
        assert_eq!(
            fs::read_to_string(dir.path().join("new/dir/a.txt")).unwrap(),
            "héllo"
        );

        let err = run(dir.path(), &json!({"file_path": "new", "content": ""})).unwrap_err();
        assert_eq!(
            err.0,
            format!("{d}/new is a directory; give the path of a file inside it")
        );
        let err = run(dir.path(), &json!({"file_path": "x"})).unwrap_err();
        assert_eq!(err.0, "Write: missing required field `content` (a string)");
    }
}
