//! Text helpers shared by the tools: numbered lines in `cat -n` style,
//! cutting over-long lines, capped output, and the cheap similarity
//! measures behind "did you mean" hints.

use std::borrow::Cow;

/// Longest line shown in full by Read and Grep; longer lines are cut with a
/// marker, since one minified file could otherwise fill the whole output.
pub(super) const MAX_LINE_CHARS: usize = 2000;

/// Formats one line the way `cat -n` does: the number right-aligned in six
/// columns, a tab, the text.
pub(super) fn numbered(line_no: u64, text: &str) -> String {
    format!("{line_no:>6}\t{text}")
}

/// Returns `line` cut to `max` characters, with a marker saying how many
/// characters were dropped, and whether it was cut.
pub(super) fn cut_line(line: &str, max: usize) -> (Cow<'_, str>, bool) {
    match line.char_indices().nth(max) {
        None => (Cow::Borrowed(line), false),
        Some((end, _)) => {
            let rest = line[end..].chars().count();
            (
                Cow::Owned(format!(
                    "{}… [line truncated: {rest} more chars]",
                    &line[..end]
                )),
                true,
            )
        }
    }
}

/// Strips one line terminator (`\n` or `\r\n`) from the end of `line`.
pub(super) fn strip_eol(line: &str) -> &str {
    let line = line.strip_suffix('\n').unwrap_or(line);
    line.strip_suffix('\r').unwrap_or(line)
}

/// Collects output lines up to a character budget. Once a line does not fit,
/// everything after it is dropped and [`CappedText::finish`] appends a
/// marker, so the model knows the output is incomplete and how to narrow it.
pub(super) struct CappedText {
    text: String,
    budget: usize,
    chars: usize,
    full: bool,
}

impl CappedText {
    /// An empty collector that keeps at most `budget` characters.
    pub(super) fn new(budget: usize) -> Self {
        CappedText {
            text: String::new(),
            budget,
            chars: 0,
            full: false,
        }
    }

    /// Adds one line; returns `false` once the budget is exhausted, so the
    /// caller can stop producing lines.
    pub(super) fn push_line(&mut self, line: &str) -> bool {
        if self.full {
            return false;
        }
        let len = line.chars().count() + 1;
        if self.chars + len > self.budget {
            self.full = true;
            return false;
        }
        self.text.push_str(line);
        self.text.push('\n');
        self.chars += len;
        true
    }

    /// Whether a line was dropped for lack of room.
    pub(super) fn is_full(&self) -> bool {
        self.full
    }

    /// Whether no line was added.
    pub(super) fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The collected text without its final newline, plus `marker` on its
    /// own line when something was dropped.
    pub(super) fn finish(mut self, marker: &str) -> String {
        if self.text.ends_with('\n') {
            self.text.pop();
        }
        if self.full {
            if !self.text.is_empty() {
                self.text.push('\n');
            }
            self.text.push_str(marker);
        }
        self.text
    }
}

/// Similarity of two strings in `0.0..=1.0`, from the character pairs they
/// share (the Sørensen–Dice coefficient over bigrams). It is linear in the
/// length of the strings, so it can be run over every line of a large file,
/// which an edit distance could not.
pub(super) fn similarity(a: &str, b: &str) -> f64 {
    let pairs = |s: &str| -> Vec<(char, char)> {
        let chars: Vec<char> = s.chars().collect();
        let mut pairs: Vec<(char, char)> = chars.windows(2).map(|w| (w[0], w[1])).collect();
        pairs.sort_unstable();
        pairs
    };
    if a == b {
        return 1.0;
    }
    let (pa, pb) = (pairs(a), pairs(b));
    if pa.is_empty() || pb.is_empty() {
        return 0.0;
    }

    // Both lists are sorted, so the shared pairs (counted with
    // multiplicity) fall out of one merge.
    let (mut i, mut j, mut shared) = (0, 0, 0usize);
    while i < pa.len() && j < pb.len() {
        match pa[i].cmp(&pb[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                shared += 1;
                i += 1;
                j += 1;
            }
        }
    }
    (2 * shared) as f64 / (pa.len() + pb.len()) as f64
}

/// Levenshtein distance between two short strings (file names), counted in
/// characters.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Collapses every run of whitespace to one space and trims the ends, to
/// compare text while ignoring indentation and spacing.
pub(super) fn squash_whitespace(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_matches_cat_n() {
        assert_eq!(numbered(1, "fn main() {"), "     1\tfn main() {");
        assert_eq!(numbered(1234567, "x"), "1234567\tx");
    }

    #[test]
    fn cut_line_marks_what_is_dropped() {
        assert_eq!(cut_line("héllo", 5), (Cow::Borrowed("héllo"), false));
        let (cut, was_cut) = cut_line("héllo world", 3);
        assert!(was_cut);
        assert_eq!(cut, "hél… [line truncated: 8 more chars]");
    }

    #[test]
    fn capped_text_stops_and_marks() {
        let mut t = CappedText::new(8);
        assert!(t.push_line("abc"));
        assert!(t.push_line("def"));
        assert!(!t.push_line("ghi"));
        assert!(t.is_full());
        assert_eq!(t.finish("[cut]"), "abc\ndef\n[cut]");

        let mut t = CappedText::new(100);
        t.push_line("a");
        assert_eq!(t.finish("[cut]"), "a");
    }

    #[test]
    fn similarity_and_distance() {
        assert_eq!(similarity("abc", "abc"), 1.0);
        assert_eq!(similarity("ab", "cd"), 0.0);
        assert!(similarity("let x = 1;", "let x = 2;") > similarity("let x = 1;", "fn main"));
        assert_eq!(edit_distance("main.rs", "mian.rs"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("lib.rs", "lib.rs"), 0);
    }

    #[test]
    fn squash() {
        assert_eq!(squash_whitespace("  a\t b\n  c "), "a b c");
    }
}
