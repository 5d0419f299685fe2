//! The Read tool: shows a window of a text file as numbered lines.
//!
//! Files are streamed in chunks rather than loaded whole, so reading the
//! first lines of a multi-gigabyte log costs a bounded amount of memory. The
//! scan goes on a little past the window to report how many lines the file
//! has (the model uses that to plan its next Read) and to notice text that
//! is not UTF-8, but stops after [`SCAN_PAST_WINDOW`] bytes: past that point
//! the note only says the file continues.

use std::{
    fs::{self, File},
    io::{self, Read as _},
    path::Path,
};

use serde::Deserialize;
use serde_json::Value;

use super::{
    Outcome, ToolError, ToolResult,
    fsutil::{not_found, resolve},
    input::{Field, Kind, decode, opt, req},
    text::{MAX_LINE_CHARS, numbered},
};

/// Lines shown when the call gives no `limit`.
const DEFAULT_LIMIT: u64 = 2000;
/// Largest output Read returns, in bytes.
const OUTPUT_CAP: usize = 256 * 1024;
/// A NUL byte this early in a file marks it as binary, as git and grep do.
const BINARY_SNIFF: u64 = 8 * 1024;
/// How far past the window the scan goes to count lines and check UTF-8.
const SCAN_PAST_WINDOW: u64 = 64 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;
/// Bytes of one line kept for display: enough for [`MAX_LINE_CHARS`]
/// characters of up to four bytes each.
const KEEP_LINE_BYTES: usize = MAX_LINE_CHARS * 4 + 4;

const FIELDS: &[Field] = &[
    req("file_path", Kind::Str),
    opt("offset", Kind::UInt),
    opt("limit", Kind::UInt),
];

#[derive(Debug, Deserialize)]
struct ReadInput {
    file_path: String,
    offset: Option<u64>,
    limit: Option<u64>,
}

/// Runs Read.
pub(super) fn run(root: &Path, input: &Value) -> ToolResult {
    let args: ReadInput = decode("Read", input, FIELDS)?;
    if args.file_path.is_empty() {
        return Err(ToolError::new(
            "Read: `file_path` is empty; give the path of a file",
        ));
    }
    let path = resolve(root, &args.file_path);
    let shown = path.display();
    let limit = match args.limit {
        Some(0) => return Err(ToolError::new("Read: `limit` must be at least 1")),
        Some(n) => n,
        None => DEFAULT_LIMIT,
    };
    let first = args.offset.unwrap_or(1).max(1);

    let meta = fs::metadata(&path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => ToolError::new(not_found("file", &path)),
        _ => ToolError::new(format!("cannot read {shown}: {e}")),
    })?;
    if meta.is_dir() {
        return Err(ToolError::new(format!(
            "{shown} is a directory; use LS or Glob to list it"
        )));
    }
    // Opening a FIFO would block until a writer comes, possibly forever;
    // devices and sockets have no text to show either.
    if !meta.is_file() {
        return Err(ToolError::new(format!(
            "{shown} is not a regular file (a FIFO, socket or device); Read only shows \
             regular files"
        )));
    }
    let file =
        File::open(&path).map_err(|e| ToolError::new(format!("cannot read {shown}: {e}")))?;
    let scan = Scanner::new(first, limit)
        .scan(file)
        .map_err(|e| ToolError::new(format!("cannot read {shown}: {e}")))?;

    Ok(render(
        &scan,
        first,
        limit,
        args.limit.is_some(),
        meta.len(),
    ))
}

fn render(scan: &Scanner, first: u64, limit: u64, limit_given: bool, size: u64) -> Outcome {
    if let Some(reason) = &scan.binary {
        return Outcome::text(format!("binary file, {size} bytes; not shown ({reason})"));
    }
    if scan.bytes == 0 {
        return Outcome::text("<file is empty>");
    }
    if scan.shown.is_empty() {
        let lines = scan.lines;
        let plural = if lines == 1 { "" } else { "s" };
        return Outcome::text(format!(
            "<offset {first} is past the end of the file, which has {lines} line{plural}>"
        ));
    }

    let mut output = scan.shown.join("\n");
    let last = first + scan.shown.len() as u64 - 1;
    let more_after = scan.lines > last || !scan.complete;
    if scan.cap_hit {
        output.push_str(&format!(
            "\n\n[output cap of {} KiB reached after line {last}; call Read with offset={} \
             to continue]",
            OUTPUT_CAP / 1024,
            last + 1
        ));
    } else if more_after {
        let of_total = if scan.complete {
            format!(" of {}", scan.lines)
        } else {
            format!(" of a longer file ({size} bytes)")
        };
        output.push_str(&format!(
            "\n\n[showing lines {first}-{last}{of_total}; call Read with offset={} to read \
             more]",
            last + 1
        ));
    }

    // A window the model chose itself is not a cut; the default window, the
    // output cap and shortened lines are.
    let truncated = scan.cap_hit
        || scan.line_cut
        || (more_after && !limit_given && scan.shown.len() as u64 == limit);
    Outcome {
        output,
        truncated,
        ..Outcome::default()
    }
}

/// Streams a file once, keeping only the lines of the window and the counts
/// needed for the notes.
struct Scanner {
    first: u64,
    limit: u64,
    /// Formatted lines of the window, in order.
    shown: Vec<String>,
    shown_bytes: usize,
    /// The line being read: its number, the bytes kept for display, and
    /// the characters beyond them.
    line_no: u64,
    current: Vec<u8>,
    dropped_chars: usize,
    /// Whether the last byte read was a newline (or nothing was read), so
    /// the end of the file does not end one more line.
    at_line_start: bool,
    /// Completed lines so far.
    lines: u64,
    bytes: u64,
    /// The bytes of an incomplete UTF-8 sequence at the end of the last
    /// chunk, checked together with the next chunk.
    carry: Vec<u8>,
    binary: Option<String>,
    cap_hit: bool,
    line_cut: bool,
    complete: bool,
    /// Byte offset where the window ended, once it has.
    window_end: Option<u64>,
}

impl Scanner {
    fn new(first: u64, limit: u64) -> Self {
        Scanner {
            first,
            limit,
            shown: Vec::new(),
            shown_bytes: 0,
            line_no: 1,
            current: Vec::new(),
            dropped_chars: 0,
            at_line_start: true,
            lines: 0,
            bytes: 0,
            carry: Vec::new(),
            binary: None,
            cap_hit: false,
            line_cut: false,
            complete: false,
            window_end: None,
        }
    }

    fn scan(mut self, mut file: File) -> io::Result<Self> {
        let mut chunk = vec![0u8; CHUNK];
        loop {
            let n = match file.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.feed(&chunk[..n]);
            if self.binary.is_some() {
                return Ok(self);
            }
            if self
                .window_end
                .is_some_and(|end| self.bytes - end > SCAN_PAST_WINDOW)
            {
                return Ok(self);
            }
        }

        if !self.carry.is_empty() {
            self.binary = Some(format!(
                "not valid UTF-8: the file ends inside a character at byte {}",
                self.bytes - self.carry.len() as u64
            ));
        }
        if !self.at_line_start {
            self.end_line();
        }
        self.complete = true;
        Ok(self)
    }

    fn feed(&mut self, data: &[u8]) {
        let start = self.bytes;
        if start < BINARY_SNIFF {
            let sniff = &data[..data.len().min((BINARY_SNIFF - start) as usize)];
            if let Some(at) = sniff.iter().position(|&b| b == 0) {
                self.binary = Some(format!("NUL byte at offset {}", start + at as u64));
                return;
            }
        }
        self.check_utf8(data);
        if self.binary.is_some() {
            return;
        }

        for piece in data.split_inclusive(|&b| b == b'\n') {
            let (text, ends_line) = match piece.split_last() {
                Some((b'\n', text)) => (text, true),
                _ => (piece, false),
            };
            if self.in_window() {
                let room = KEEP_LINE_BYTES.saturating_sub(self.current.len());
                let keep = text.len().min(room);
                self.current.extend_from_slice(&text[..keep]);
                self.dropped_chars += count_chars(&text[keep..]);
            }
            self.at_line_start = false;
            if ends_line {
                self.end_line();
            }
        }
        self.bytes += data.len() as u64;
    }

    fn in_window(&self) -> bool {
        !self.cap_hit
            && self.line_no >= self.first
            && self.line_no < self.first.saturating_add(self.limit)
    }

    fn end_line(&mut self) {
        if self.in_window() {
            self.push_shown();
        }
        self.lines += 1;
        self.line_no += 1;
        self.at_line_start = true;
        if self.window_end.is_none() && !self.in_window() && self.line_no >= self.first {
            self.window_end = Some(self.bytes);
        }
    }

    fn push_shown(&mut self) {
        let mut kept = std::mem::take(&mut self.current);
        let mut dropped = std::mem::take(&mut self.dropped_chars);
        // Show CRLF files without the \r, which would only confuse.
        if dropped == 0 && kept.last() == Some(&b'\r') {
            kept.pop();
        }
        let valid = match std::str::from_utf8(&kept) {
            Ok(s) => s,
            Err(e) => {
                dropped += count_chars(&kept[e.valid_up_to()..]);
                std::str::from_utf8(&kept[..e.valid_up_to()]).unwrap_or_default()
            }
        };

        let total = valid.chars().count() + dropped;
        let text = if total > MAX_LINE_CHARS {
            self.line_cut = true;
            let end = valid
                .char_indices()
                .nth(MAX_LINE_CHARS)
                .map_or(valid.len(), |(i, _)| i);
            format!(
                "{}… [line truncated: {} more chars]",
                &valid[..end],
                total - MAX_LINE_CHARS
            )
        } else {
            valid.to_string()
        };

        let line = numbered(self.line_no, &text);
        // Leave room for the closing note.
        if self.shown_bytes + line.len() + 1 > OUTPUT_CAP - 256 {
            self.cap_hit = true;
            return;
        }
        self.shown_bytes += line.len() + 1;
        self.shown.push(line);
    }

    fn check_utf8(&mut self, data: &[u8]) {
        let joined;
        let (buf, base) = if self.carry.is_empty() {
            (data, self.bytes)
        } else {
            let mut v = std::mem::take(&mut self.carry);
            let base = self.bytes - v.len() as u64;
            v.extend_from_slice(data);
            joined = v;
            (&joined[..], base)
        };
        if let Err(e) = std::str::from_utf8(buf) {
            if e.error_len().is_some() {
                self.binary = Some(format!(
                    "not valid UTF-8 at byte {}",
                    base + e.valid_up_to() as u64
                ));
            } else {
                self.carry = buf[e.valid_up_to()..].to_vec();
            }
        }
    }
}

/// Characters in a UTF-8 byte slice, counting every byte that starts a
/// character (so a slice cut mid-character still counts sensibly).
fn count_chars(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b & 0xC0 != 0x80).count()
}

#[cfg(test)]
mod tests {
    use std::fmt::Write as _;

    use serde_json::json;

    use super::*;

    fn read(root: &Path, input: Value) -> Result<Outcome, String> {
        run(root, &input).map_err(|e| e.0)
    }

    #[test]
    fn cat_n_format_and_crlf() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.txt"), "alpha\r\nbeta\n\ngamma").unwrap();
        let out = read(dir.path(), json!({"file_path": "a.txt"})).unwrap();
        assert_eq!(
            out.output,
            "     1\talpha\n     2\tbeta\n     3\t\n     4\tgamma"
        );
        assert!(!out.truncated);
    }

    #[test]
    fn window_and_continuation_note() {
        let dir = tempfile::tempdir().unwrap();
        let mut text = String::new();
        for i in 1..=10 {
            writeln!(text, "line {i}").unwrap();
        }
        fs::write(dir.path().join("a.txt"), &text).unwrap();

        let out = read(
            dir.path(),
            json!({"file_path": "a.txt", "offset": 3, "limit": 2}),
        )
        .unwrap();
        assert_eq!(
            out.output,
            "     3\tline 3\n     4\tline 4\n\n\
             [showing lines 3-4 of 10; call Read with offset=5 to read more]"
        );
        assert!(!out.truncated);

        let out = read(dir.path(), json!({"file_path": "a.txt", "offset": 9})).unwrap();
        assert_eq!(out.output, "     9\tline 9\n    10\tline 10");

        let out = read(dir.path(), json!({"file_path": "a.txt", "offset": 11})).unwrap();
        assert_eq!(
            out.output,
            "<offset 11 is past the end of the file, which has 10 lines>"
        );
    }

    #[test]
    fn default_limit_is_2000_lines() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = (1..=2500).map(|i| format!("{i}\n")).collect();
        fs::write(dir.path().join("big.txt"), text).unwrap();
        let out = read(dir.path(), json!({"file_path": "big.txt"})).unwrap();
        assert_eq!(
            out.output.lines().filter(|l| l.contains('\t')).count(),
            2000
        );
        assert!(
            out.output.ends_with(
                "[showing lines 1-2000 of 2500; call Read with offset=2001 to read more]"
            )
        );
        assert!(out.truncated);
    }

    #[test]
    fn long_lines_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let long = "é".repeat(MAX_LINE_CHARS + 5);
        fs::write(dir.path().join("a.txt"), format!("{long}\nshort\n")).unwrap();
        let out = read(dir.path(), json!({"file_path": "a.txt"})).unwrap();
        let expected = format!(
            "     1\t{}… [line truncated: 5 more chars]\n     2\tshort",
            "é".repeat(MAX_LINE_CHARS)
        );
        assert_eq!(out.output, expected);
        assert!(out.truncated);

        // Far beyond the bytes kept for display, the count stays exact.
        let huge = "x".repeat(100_000);
        fs::write(dir.path().join("b.txt"), &huge).unwrap();
        let out = read(dir.path(), json!({"file_path": "b.txt"})).unwrap();
        assert!(out.output.ends_with("… [line truncated: 98000 more chars]"));
    }

    #[test]
    fn output_cap() {
        let dir = tempfile::tempdir().unwrap();
        let line = "y".repeat(1500);
        let text: String = (0..1000).map(|_| format!("{line}\n")).collect();
        fs::write(dir.path().join("a.txt"), text).unwrap();
        let out = read(dir.path(), json!({"file_path": "a.txt"})).unwrap();
        assert!(out.output.len() <= OUTPUT_CAP);
        assert!(out.truncated);
        let shown = out.output.lines().filter(|l| l.contains('\t')).count();
        assert!(out.output.ends_with(&format!(
            "[output cap of 256 KiB reached after line {shown}; call Read with offset={} to \
             continue]",
            shown + 1
        )));
    }

    #[test]
    fn empty_binary_directory_missing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        fs::write(dir.path().join("empty"), "").unwrap();
        fs::write(dir.path().join("bin"), b"abc\0def").unwrap();
        fs::write(dir.path().join("latin1"), b"caf\xe9\n").unwrap();
        fs::write(dir.path().join("cut"), b"ab\xc3").unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();

        let ok = |p: &str| read(dir.path(), json!({"file_path": p})).unwrap().output;
        assert_eq!(ok("empty"), "<file is empty>");
        assert_eq!(
            ok("bin"),
            "binary file, 7 bytes; not shown (NUL byte at offset 3)"
        );
        assert_eq!(
            ok("latin1"),
            "binary file, 5 bytes; not shown (not valid UTF-8 at byte 3)"
        );
        assert_eq!(
            ok("cut"),
            "binary file, 3 bytes; not shown (not valid UTF-8: the file ends inside a \
             character at byte 2)"
        );

        let err = read(dir.path(), json!({"file_path": "sub"})).unwrap_err();
        assert_eq!(
            err,
            format!("{d}/sub is a directory; use LS or Glob to list it")
        );
        let err = read(dir.path(), json!({"file_path": "emty"})).unwrap_err();
        assert_eq!(
            err,
            format!("file not found: {d}/emty; did you mean: {d}/empty")
        );
        let err = read(dir.path(), json!({"file_path": "empty", "limit": 0})).unwrap_err();
        assert_eq!(err, "Read: `limit` must be at least 1");
        fs::write(dir.path().join("t"), "x\n").unwrap();
        let out = read(
            dir.path(),
            json!({"file_path": "t", "offset": u64::MAX, "limit": u64::MAX}),
        );
        assert_eq!(
            out.unwrap().output,
            format!(
                "<offset {} is past the end of the file, which has 1 line>",
                u64::MAX
            )
        );

        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let err = read(dir.path(), json!({"file_path": "fifo"})).unwrap_err();
            assert_eq!(
                err,
                format!(
                    "{d}/fifo is not a regular file (a FIFO, socket or device); Read only \
                     shows regular files"
                )
            );
        }
    }

    #[test]
    fn utf8_split_across_chunks() {
        let dir = tempfile::tempdir().unwrap();
        // Place a multi-byte character across the chunk boundary.
        let mut text = "a".repeat(CHUNK - 1);
        text.push_str("€\nx\n");
        fs::write(dir.path().join("a.txt"), &text).unwrap();
        let out = read(dir.path(), json!({"file_path": "a.txt", "offset": 2})).unwrap();
        assert_eq!(out.output, "     2\tx");
    }
}
