//! HTML to readable text for WebFetch.
//!
//! A page is mostly markup, scripts and navigation; the model wants the
//! prose, headings, lists, code and links. This is a small forgiving
//! converter, not an HTML parser: it walks the tags in order, drops what is
//! never text (scripts, styles, the head), starts lines and paragraphs at
//! block elements, and writes Markdown-like marks the model reads well (`#`
//! headings, `-` items, fenced `pre`, `[text](url)` links). Broken markup
//! degrades into slightly worse text, never into an error.

/// Elements whose content is never shown.
const HIDDEN: &[&str] = &[
    "script", "style", "noscript", "template", "svg", "head", "iframe", "object", "canvas",
];
/// Elements that start and end a paragraph.
const BLOCKS: &[&str] = &[
    "p",
    "div",
    "section",
    "article",
    "header",
    "footer",
    "main",
    "nav",
    "aside",
    "ul",
    "ol",
    "dl",
    "table",
    "blockquote",
    "form",
    "figure",
    "figcaption",
    "details",
    "summary",
    "address",
    "fieldset",
];
/// Elements that only start a new line.
const LINES: &[&str] = &["tr", "dt", "dd", "caption"];

/// Converts an HTML document to text. Relative links are resolved against
/// `base` when it is given.
pub(super) fn to_text(html: &str, base: Option<&reqwest::Url>) -> String {
    let mut w = Writer::default();
    let mut hidden: Option<String> = None;
    let mut links: Vec<Option<(usize, String)>> = Vec::new();
    let mut lists: Vec<Option<u32>> = Vec::new();
    let mut rest = html;

    while !rest.is_empty() {
        let Some(lt) = rest.find('<') else {
            if hidden.is_none() {
                w.text(&decode_entities(rest));
            }
            break;
        };
        if lt > 0 && hidden.is_none() {
            w.text(&decode_entities(&rest[..lt]));
        }
        rest = &rest[lt..];

        if let Some(after) = rest.strip_prefix("<!--") {
            rest = after.find("-->").map_or("", |end| &after[end + 3..]);
            continue;
        }
        let Some(tag) = Tag::parse(rest) else {
            // A lone `<` in text.
            if hidden.is_none() {
                w.text("<");
            }
            rest = &rest[1..];
            continue;
        };
        rest = &rest[tag.len..];

        if let Some(name) = &hidden {
            if tag.closing && tag.name == *name {
                hidden = None;
            }
            continue;
        }
        let name = tag.name.as_str();
        if !tag.closing && HIDDEN.contains(&name) && !tag.self_closing {
            hidden = Some(tag.name.clone());
            continue;
        }

        match (name, tag.closing) {
            ("br", _) => w.newline(),
            ("hr", false) => {
                w.paragraph();
                w.raw("---");
                w.paragraph();
            }
            ("h1" | "h2" | "h3" | "h4" | "h5" | "h6", false) => {
                w.paragraph();
                let level = usize::from(name.as_bytes()[1] - b'0');
                w.raw(&format!("{} ", "#".repeat(level)));
            }
            ("h1" | "h2" | "h3" | "h4" | "h5" | "h6", true) => w.paragraph(),
            ("pre", false) => {
                w.paragraph();
                w.raw("```\n");
                w.pre += 1;
            }
            ("pre", true) => {
                w.pre = w.pre.saturating_sub(1);
                w.newline();
                w.raw("```");
                w.paragraph();
            }
            ("code", _) if w.pre == 0 => w.inline("`"),
            ("ul", false) => {
                w.paragraph();
                lists.push(None);
            }
            ("ol", false) => {
                w.paragraph();
                lists.push(Some(0));
            }
            ("ul" | "ol", true) => {
                lists.pop();
                w.paragraph();
            }
            ("li", false) => {
                w.newline();
                let depth = lists.len().saturating_sub(1);
                let mark = match lists.last_mut() {
                    Some(Some(n)) => {
                        *n += 1;
                        format!("{n}. ")
                    }
                    _ => "- ".to_string(),
                };
                w.raw(&format!("{}{mark}", "  ".repeat(depth)));
            }
            ("td" | "th", false) if !w.at_line_start() => w.inline(" | "),
            ("a", false) => {
                let href = tag.attr("href").and_then(|h| link_target(&h, base));
                links.push(href.map(|h| (w.out.len(), h)));
            }
            ("a", true) => {
                if let Some(Some((start, href))) = links.pop() {
                    w.link(start, &href);
                }
            }
            ("img", _) => {
                if let Some(alt) = tag.attr("alt").filter(|a| !a.trim().is_empty()) {
                    w.inline(&format!("[image: {}]", alt.trim()));
                }
            }
            _ if BLOCKS.contains(&name) => w.paragraph(),
            _ if LINES.contains(&name) => w.newline(),
            _ => {}
        }
    }
    w.finish()
}

/// A link worth showing: an absolute URL, resolved against `base`; page
/// anchors and script links are dropped.
fn link_target(href: &str, base: Option<&reqwest::Url>) -> Option<String> {
    let href = href.trim();
    if href.is_empty() || href.starts_with('#') || href.starts_with("javascript:") {
        return None;
    }
    match base {
        Some(base) => base.join(href).ok().map(String::from),
        None => Some(href.to_string()),
    }
}

/// One tag as written: its lower-case name, whether it closes, and its raw
/// attribute text.
struct Tag {
    name: String,
    closing: bool,
    self_closing: bool,
    attrs: String,
    /// Bytes of input the tag spans.
    len: usize,
}

impl Tag {
    /// Parses the tag at the start of `s` (which starts with `<`). `None`
    /// when it is not a tag (a `<` in text), so the caller keeps the `<`.
    fn parse(s: &str) -> Option<Tag> {
        let body = &s[1..];
        let closing = body.starts_with('/');
        let body = if closing { &body[1..] } else { body };
        let first = body.chars().next()?;
        if !(first.is_ascii_alphabetic() || first == '!' || first == '?') {
            return None;
        }
        // Find the end of the tag, skipping `>` inside quoted attributes.
        let mut quote: Option<char> = None;
        let mut end = None;
        for (i, c) in body.char_indices() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') => quote = Some(c),
                (None, '>') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.unwrap_or(body.len());
        let inner = &body[..end];
        let name_len = inner
            .find(|c: char| c.is_whitespace() || c == '/')
            .unwrap_or(inner.len());
        let len = 1 + usize::from(closing) + (end + 1).min(body.len());
        Some(Tag {
            name: inner[..name_len].to_ascii_lowercase(),
            closing,
            self_closing: inner.ends_with('/'),
            attrs: inner[name_len..].to_string(),
            len,
        })
    }

    /// The decoded value of attribute `name`, if present.
    fn attr(&self, name: &str) -> Option<String> {
        let mut rest = self.attrs.as_str();
        while !rest.is_empty() {
            rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
            let key_len = rest
                .find(|c: char| c.is_whitespace() || c == '=' || c == '/')
                .unwrap_or(rest.len());
            if key_len == 0 {
                break;
            }
            let key = &rest[..key_len];
            rest = rest[key_len..].trim_start();
            let value = if let Some(after) = rest.strip_prefix('=') {
                let after = after.trim_start();
                let (value, next) = match after.chars().next() {
                    Some(q @ ('"' | '\'')) => {
                        let inner = &after[1..];
                        let close = inner.find(q).unwrap_or(inner.len());
                        (&inner[..close], &inner[(close + 1).min(inner.len())..])
                    }
                    _ => {
                        let stop = after.find(char::is_whitespace).unwrap_or(after.len());
                        (&after[..stop], &after[stop..])
                    }
                };
                rest = next;
                value
            } else {
                ""
            };
            if key.eq_ignore_ascii_case(name) {
                return Some(decode_entities(value));
            }
        }
        None
    }
}

/// Builds the output: collapses whitespace outside `pre`, and keeps track of
/// line and paragraph breaks so they are never doubled.
#[derive(Default)]
struct Writer {
    out: String,
    pre: u32,
    /// A space is owed before the next word.
    space: bool,
}

impl Writer {
    fn at_line_start(&self) -> bool {
        self.out.is_empty() || self.out.ends_with('\n')
    }

    fn text(&mut self, text: &str) {
        if self.pre > 0 {
            self.out.push_str(text);
            return;
        }
        if text.starts_with(char::is_whitespace) {
            self.space = true;
        }
        for (i, word) in text.split_whitespace().enumerate() {
            if (i > 0 || self.space) && !self.at_line_start() {
                self.out.push(' ');
            }
            self.out.push_str(word);
            self.space = false;
        }
        if text.ends_with(char::is_whitespace) {
            self.space = true;
        }
    }

    /// Text that must not be separated from the word before it.
    fn inline(&mut self, s: &str) {
        if self.space && !self.at_line_start() {
            self.out.push(' ');
        }
        self.space = false;
        self.out.push_str(s);
    }

    fn raw(&mut self, s: &str) {
        self.space = false;
        self.out.push_str(s);
    }

    fn newline(&mut self) {
        self.space = false;
        if !self.at_line_start() {
            self.out.push('\n');
        }
    }

    fn paragraph(&mut self) {
        self.newline();
        if !self.out.is_empty() && !self.out.ends_with("\n\n") {
            self.out.push('\n');
        }
    }

    /// Wraps the text written since `start` as a link to `href`.
    fn link(&mut self, start: usize, href: &str) {
        let text = self.out[start..].trim().to_string();
        if text.is_empty() || text == href || text.contains('\n') {
            return;
        }
        let lead = &self.out[start..];
        let lead_ws = lead.len() - lead.trim_start().len();
        self.out.truncate(start + lead_ws);
        self.out.push_str(&format!("[{text}]({href})"));
    }

    fn finish(self) -> String {
        let mut lines: Vec<&str> = Vec::new();
        let mut blank = 0;
        for line in self.out.lines() {
            let line = line.trim_end();
            if line.is_empty() {
                blank += 1;
                if blank > 1 || lines.is_empty() {
                    continue;
                }
            } else {
                blank = 0;
            }
            lines.push(line);
        }
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        lines.join("\n")
    }
}

/// Decodes the character references that matter for reading: numeric ones
/// and the common named ones. Unknown names are left as written.
pub(super) fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let end = rest[1..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '#'))
            .map(|i| i + 1)
            .unwrap_or(rest.len());
        let name = &rest[1..end];
        let decoded = match name {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            "nbsp" => Some(' '),
            "mdash" => Some('—'),
            "ndash" => Some('–'),
            "hellip" => Some('…'),
            "copy" => Some('©'),
            "rsquo" => Some('’'),
            "lsquo" => Some('‘'),
            "rdquo" => Some('”'),
            "ldquo" => Some('“'),
            _ => name.strip_prefix('#').and_then(|num| {
                let code = match num.strip_prefix(['x', 'X']) {
                    Some(hex) => u32::from_str_radix(hex, 16).ok(),
                    None => num.parse().ok(),
                };
                code.and_then(char::from_u32)
            }),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                let skip_semi = rest[end..].starts_with(';');
                rest = &rest[end + usize::from(skip_semi)..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_becomes_markdown_like_text() {
        let html = r#"<!DOCTYPE html><html><head><title>T</title>
<style>body { color: red }</style><script>var x = "<p>no</p>";</script></head>
<body><nav><a href="/">Home</a></nav>
<h1>Install  the
  tool</h1>
<p>Run <code>cargo  install</code> &amp; wait &lt;1&nbsp;min&gt;.<br>Then go
<a href="docs/start.html">to the   guide</a>.</p>
<!-- a comment <p>hidden</p> -->
<ul><li>one</li><li>two<ol><li>a</li><li>b</li></ol></li></ul>
<pre>fn main() {
    println!("hi");
}</pre>
<table><tr><th>k</th><th>v</th></tr><tr><td>a</td><td>1</td></tr></table>
<p>x &#169; &#x263A; &bogus; <img src="a.png" alt="logo"> 3 < 4</p>
</body></html>"#;
        let base = reqwest::Url::parse("https://example.test/book/index.html").unwrap();
        let text = to_text(html, Some(&base));
        assert_eq!(
            text,
            "[Home](https://example.test/)\n\n# Install the tool\n\nRun `cargo install` & wait \
             <1 min>.\nThen go [to the guide](https://example.test/book/docs/start.html).\n\n- \
             one\n- two\n\n  1. a\n  2. b\n\n```\nfn main() {\n    println!(\"hi\");\n}\n```\n\n\
             k | v\na | 1\n\nx © ☺ &bogus; [image: logo] 3 < 4"
        );
    }

    #[test]
    fn attributes_with_quotes_and_gt() {
        let text = to_text(r#"<a title="a > b" href='x.html'>go</a>"#, None);
        assert_eq!(text, "[go](x.html)");
        assert_eq!(to_text("plain text only", None), "plain text only");
        assert_eq!(to_text("<p>unclosed <b", None), "unclosed");
    }
}
