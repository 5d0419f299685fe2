//! The WebFetch tool: fetches one page from inside the sandbox and returns
//! its readable text.
//!
//! It is offered only when the sandbox shares the host's network, and runs
//! here rather than on the host so a fetch has exactly the reach of a `curl`
//! the model could run with Bash: no more (the host's addresses are no more
//! reachable than from a shell) and nothing secret along (the executor never
//! holds the API key).
//!
//! The executor is synchronous; the fetch uses the crate's async HTTP client
//! on a small single-threaded runtime built for the call, which costs a few
//! hundred microseconds and keeps one HTTP stack in the binary.
//!
//! Claude Code hands the page to a second, smaller model together with
//! `prompt` and returns that model's answer. The executor has no model and
//! no key, so it returns the page text itself with the prompt above it, and
//! the model answers from the text.

use std::{net::IpAddr, time::Duration};

use reqwest::{StatusCode, Url, header};
use serde::Deserialize;
use serde_json::Value;

use super::{
    Outcome, ToolError, ToolResult, html,
    input::{Field, Kind, decode, req},
};

/// Largest text returned, in characters.
const TEXT_CAP: usize = 100_000;
/// Largest body read from the server; the rest is not downloaded.
const BODY_CAP: usize = 5 * 1024 * 1024;
/// Whole-request limit, connection to last byte.
const TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Same-host redirects followed before giving up.
const MAX_REDIRECTS: usize = 10;
const MAX_URL_LEN: usize = 2000;

const FIELDS: &[Field] = &[req("url", Kind::Str), req("prompt", Kind::Str)];

#[derive(Debug, Deserialize)]
struct WebFetchInput {
    url: String,
    prompt: String,
}

/// Runs WebFetch.
pub(super) fn run(input: &Value) -> ToolResult {
    let args: WebFetchInput = decode("WebFetch", input, FIELDS)?;
    let url = checked_url(&args.url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ToolError::new(format!("WebFetch: cannot start the HTTP client: {e}")))?;
    let page = runtime.block_on(fetch(url))?;
    let ok = page.status.is_success();
    let out = render(&args.prompt, page);
    // A 4xx or 5xx answer is a failed call, with the page the server sent
    // (often the reason) in the message.
    if ok {
        Ok(out)
    } else {
        Err(ToolError::new(out.output))
    }
}

/// Checks the URL and upgrades `http` to `https`, except for loopback
/// hosts, where a local development server rarely has a certificate.
fn checked_url(raw: &str) -> Result<Url, ToolError> {
    if raw.len() > MAX_URL_LEN {
        return Err(ToolError::new(format!(
            "WebFetch: the URL is {} characters long, more than the {MAX_URL_LEN} allowed",
            raw.len()
        )));
    }
    let mut url = Url::parse(raw.trim()).map_err(|e| {
        ToolError::new(format!(
            "WebFetch: {raw:?} is not a valid URL ({e}); give a full URL such as \
             https://example.com/page"
        ))
    })?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => {
            // Cannot fail: both schemes are "special" in the URL standard.
            let _ = url.set_scheme("https");
        }
        other => {
            return Err(ToolError::new(format!(
                "WebFetch: the {other}: scheme is not supported; only http and https URLs can be \
                 fetched"
            )));
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ToolError::new(
            "WebFetch: URLs with a user name or password are not fetched; remove the \
             credentials from the URL",
        ));
    }
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    match url.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

/// A fetched page, before conversion.
struct Page {
    /// Where the content came from, after redirects.
    url: Url,
    status: StatusCode,
    content_type: String,
    body: Vec<u8>,
    /// Whether the body was longer than [`BODY_CAP`].
    body_cut: bool,
}

async fn fetch(start: Url) -> Result<Page, ToolError> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("agentkimi-webfetch/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ToolError::new(format!("WebFetch: cannot set up the HTTP client: {e}")))?;

    let mut url = start;
    for _ in 0..=MAX_REDIRECTS {
        let mut resp = client
            .get(url.clone())
            .header(
                header::ACCEPT,
                "text/html, text/plain, text/markdown, application/json;q=0.9, */*;q=0.5",
            )
            .send()
            .await
            .map_err(|e| request_error(&url, &e))?;
        let status = resp.status();

        if status.is_redirection() {
            let Some(target) = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|loc| url.join(loc).ok())
            else {
                return Err(ToolError::new(format!(
                    "WebFetch: {url} answered {status} without a usable Location header"
                )));
            };
            if target.host_str() != url.host_str() {
                return Err(ToolError::new(format!(
                    "WebFetch: {url} redirects to another host: {target}\nIf you trust that \
                     host, call WebFetch again with that URL."
                )));
            }
            url = target;
            continue;
        }

        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        let mut body = Vec::new();
        let mut body_cut = false;
        while let Some(chunk) = resp.chunk().await.map_err(|e| request_error(&url, &e))? {
            let room = BODY_CAP - body.len();
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                body_cut = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        return Ok(Page {
            url,
            status,
            content_type,
            body,
            body_cut,
        });
    }
    Err(ToolError::new(format!(
        "WebFetch: more than {MAX_REDIRECTS} redirects starting from {url}; the page cannot be \
         fetched"
    )))
}

fn request_error(url: &Url, e: &reqwest::Error) -> ToolError {
    let why = if e.is_timeout() {
        format!("no complete answer within {} s", TIMEOUT.as_secs())
    } else if e.is_connect() {
        // The source chain says whether DNS, refusal or TLS failed.
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            cause = s.to_string();
            source = s.source();
        }
        format!("cannot connect ({cause})")
    } else {
        e.to_string()
    };
    ToolError::new(format!(
        "WebFetch: fetching {url} failed: {why}. Check the URL; the sandbox reaches only what the \
         host's network reaches"
    ))
}

/// Turns the page into the tool result.
fn render(prompt: &str, page: Page) -> Outcome {
    let text = String::from_utf8_lossy(&page.body);
    let kind = page
        .content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let is_html = kind.contains("html")
        || (kind.is_empty()
            && text.trim_start().get(..15).is_some_and(|h| {
                h.to_ascii_lowercase().starts_with("<!doctype html") || h.starts_with("<html")
            }));
    let is_text = is_html
        || kind.is_empty()
        || kind.starts_with("text/")
        || kind.contains("json")
        || kind.contains("xml")
        || kind.contains("javascript");

    let mut header = format!(
        "URL: {}\nStatus: {}\nContent-Type: {}\nPrompt: {prompt}\n",
        page.url,
        page.status,
        if kind.is_empty() { "(none)" } else { &kind },
    );
    if !is_text {
        header.push_str(&format!(
            "\nThis is not a text page ({} bytes of {kind}); its content is not shown.",
            page.body.len()
        ));
        return Outcome::text(header);
    }
    let readable = if is_html {
        html::to_text(&text, Some(&page.url))
    } else {
        text.into_owned()
    };

    let total = readable.chars().count();
    let cut_text = total > TEXT_CAP;
    let truncated = cut_text || page.body_cut;
    let mut out = header;
    out.push('\n');
    if cut_text {
        out.extend(readable.chars().take(TEXT_CAP));
        out.push_str(&format!("\n[text cut at {TEXT_CAP} of {total} characters]"));
    } else {
        out.push_str(&readable);
    }
    if page.body_cut {
        out.push_str(&format!(
            "\n[page cut: only its first {} MB were downloaded]",
            BODY_CAP / (1024 * 1024)
        ));
    }
    if !page.status.is_success() {
        out = format!(
            "WebFetch: the server answered {}; the page it sent follows.\n{out}",
            page.status
        );
    }
    Outcome {
        output: out,
        truncated,
        ..Outcome::default()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader, Write},
        net::TcpListener,
    };

    use serde_json::json;

    use super::*;

    /// A loopback HTTP server answering each path with a canned response,
    /// for as many connections as the test makes.
    fn server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut first = String::new();
                reader.read_line(&mut first).unwrap();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                }
                let path = first.split_whitespace().nth(1).unwrap_or("/").to_string();
                let big = "word ".repeat(30_000);
                let (status, kind, extra, body): (&str, &str, String, String) = match path.as_str()
                {
                    "/page" => (
                        "200 OK",
                        "text/html; charset=utf-8",
                        String::new(),
                        "<html><head><title>x</title></head><body><h2>Hello</h2>\
                         <p>See <a href=\"/other\">other</a>.</p></body></html>"
                            .into(),
                    ),
                    "/redirect" => (
                        "302 Found",
                        "text/plain",
                        "Location: /page\r\n".into(),
                        String::new(),
                    ),
                    "/away" => (
                        "301 Moved Permanently",
                        "text/plain",
                        "Location: https://elsewhere.invalid/x\r\n".into(),
                        String::new(),
                    ),
                    "/big" => ("200 OK", "text/plain", String::new(), big),
                    "/image" => ("200 OK", "image/png", String::new(), "\u{1}PNG".into()),
                    _ => (
                        "404 Not Found",
                        "text/plain",
                        String::new(),
                        "no such page".into(),
                    ),
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n{extra}Content-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        format!("http://{addr}")
    }

    fn fetch(url: &str) -> Result<Outcome, String> {
        run(&json!({"url": url, "prompt": "what is here?"})).map_err(|e| e.0)
    }

    #[test]
    fn fetches_html_as_text_and_follows_same_host_redirects() {
        let base = server();
        let out = fetch(&format!("{base}/redirect")).unwrap();
        assert_eq!(
            out.output,
            format!(
                "URL: {base}/page\nStatus: 200 OK\nContent-Type: text/html\nPrompt: what is \
                 here?\n\n## Hello\n\nSee [other]({base}/other)."
            )
        );
        assert!(!out.truncated);
    }

    #[test]
    fn reports_other_hosts_errors_caps_and_binary() {
        let base = server();
        let away = fetch(&format!("{base}/away")).unwrap_err();
        assert!(
            away.contains("redirects to another host: https://elsewhere.invalid/x"),
            "{away}"
        );

        let missing = fetch(&format!("{base}/nope")).unwrap_err();
        assert!(
            missing.starts_with("WebFetch: the server answered 404 Not Found"),
            "{missing}"
        );
        assert!(missing.ends_with("no such page"), "{missing}");

        let big = fetch(&format!("{base}/big")).unwrap();
        assert!(big.truncated);
        assert!(
            big.output
                .ends_with("\n[text cut at 100000 of 150000 characters]"),
            "{}",
            &big.output[big.output.len() - 80..]
        );

        let image = fetch(&format!("{base}/image")).unwrap();
        assert!(
            image.output.ends_with(
                "This is not a text page (4 bytes of image/png); its content is not shown."
            ),
            "{}",
            image.output
        );

        // Nothing listens on port 1.
        let refused = fetch("http://127.0.0.1:1/").unwrap_err();
        assert!(refused.contains("cannot connect"), "{refused}");
    }

    #[test]
    fn urls_are_checked_and_upgraded() {
        let up = checked_url("http://example.com/a?b=1").unwrap();
        assert_eq!(up.as_str(), "https://example.com/a?b=1");
        for local in [
            "http://localhost:8080/",
            "http://127.0.0.1/",
            "http://[::1]:3000/",
        ] {
            assert_eq!(checked_url(local).unwrap().scheme(), "http", "{local}");
        }
        assert!(
            checked_url("ftp://example.com/")
                .unwrap_err()
                .0
                .contains("ftp: scheme")
        );
        assert!(
            checked_url("file:///etc/passwd")
                .unwrap_err()
                .0
                .contains("not supported")
        );
        assert!(
            checked_url("not a url")
                .unwrap_err()
                .0
                .contains("not a valid URL")
        );
        assert!(
            checked_url("https://u:p@example.com/")
                .unwrap_err()
                .0
                .contains("password")
        );
    }
}
