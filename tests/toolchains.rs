//! End-to-end tests of real builds inside the real sandbox: the machine's
//! Rust toolchain mounted through `AGENTKIMI_RO_PATHS` runs `cargo test
//! --offline` on a small crate whose one dependency comes from the host's
//! read-only registry, Python runs a project's tests, build output lands in the
//! session's cache instead of the worktree, and every credential planted in
//! a mounted tree is unreadable from inside.

mod support;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::{
    git::GitRepo,
    mcp::{McpClient, path_string},
    mock_model::{MockModel, Reply, Request, ToolUse},
};

fn bash(command: &str) -> Reply {
    Reply::tools(vec![ToolUse::new(
        "Bash",
        json!({"command": command, "timeout": 300_000}),
    )])
}

/// The output of the Bash call answered in request `step`.
fn output(requests: &[Request], step: usize) -> String {
    requests[step]
        .tool_results()
        .into_iter()
        .map(|r| r.content)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The machine's rustup and cargo trees, where this test suite's own cargo
/// came from.
fn rust_toolchain() -> (PathBuf, PathBuf) {
    let home = PathBuf::from(std::env::var("HOME").expect("HOME is set"));
    let cargo = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| home.join(".cargo"));
    let rustup = std::env::var("RUSTUP_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| home.join(".rustup"));
    assert!(
        cargo.join("bin/cargo").exists() && rustup.is_dir(),
        "this test mounts the rustup toolchain that runs it; none at {} and {}",
        cargo.display(),
        rustup.display()
    );
    (cargo, rustup)
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[tokio::test]
async fn cargo_test_and_python_tests_pass_with_mounted_toolchains() {
    let (cargo, rustup) = rust_toolchain();
    let repo = GitRepo::new();
    write(
        repo.path(),
        "Cargo.toml",
        "[package]\nname = \"tiny\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n\
         [dependencies]\ncfg-if = \"1\"\n",
    );
    write(
        repo.path(),
        "src/lib.rs",
        "cfg_if::cfg_if! { if #[cfg(unix)] { pub fn add(a: u32, b: u32) -> u32 { a + b } } }\n\n#[cfg(test)]\nmod tests {\n    \
         #[test]\n    fn adds() { assert_eq!(super::add(2, 2), 4); }\n}\n",
    );
    write(
        repo.path(),
        "py/test_calc.py",
        "import unittest\n\nclass Calc(unittest.TestCase):\n    def test_mul(self):\n        \
         self.assertEqual(6 * 7, 42)\n\nif __name__ == '__main__':\n    unittest.main()\n",
    );
    repo.git(&["add", "."]);
    repo.git(&["commit", "-q", "-m", "a crate and a python project"]);

    let mock = MockModel::sequence(vec![
        bash("cargo test --offline 2>&1; echo EXIT=$?"),
        // pytest when the machine has it, the standard runner otherwise:
        // both discover test_*.py.
        bash(
            "cd py && if python3 -m pytest --version >/dev/null 2>&1; then python3 -m pytest \
             -q 2>&1; else python3 -m unittest -v 2>&1; fi; echo EXIT=$?",
        ),
        bash("echo \"$PATH|$CARGO_HOME|$CARGO_TARGET_DIR|$RUSTUP_HOME\""),
        Reply::text("tested"),
    ]);
    let ro = format!("{}:{}", path_string(&cargo), path_string(&rustup));
    let client = McpClient::builder(&mock)
        .env("AGENTKIMI_RO_PATHS", &ro)
        .spawn()
        .await;
    let result = client.start("run the tests", Some(repo.path())).await;
    let requests = mock.requests();

    let cargo_out = output(&requests, 1);
    assert!(
        cargo_out.contains("test tests::adds ... ok") && cargo_out.contains("EXIT=0"),
        "{cargo_out}"
    );
    let py_out = output(&requests, 2);
    assert!(
        py_out.contains("EXIT=0") && (py_out.contains("1 passed") || py_out.contains("\nOK")),
        "{py_out}"
    );
    let env = output(&requests, 3);
    assert!(
        env.contains(&format!("{}/bin:", cargo.display()))
            && env.contains("|/cache/cargo|/cache/target|")
            && env.contains(&rustup.display().to_string()),
        "{env}"
    );

    // Build output went to the session's cache, not into the worktree.
    let id = result["session_id"].as_str().unwrap();
    let wt = PathBuf::from(result["worktree"].as_str().unwrap());
    assert!(!wt.join("target").exists(), "target/ in the worktree");
    let key = wt.file_name().unwrap();
    let cache = client.home().join("caches").join(key);
    assert!(
        cache.join("target/debug").is_dir(),
        "no build output in {} (session {id})",
        cache.display()
    );
    assert_eq!(result["status"], "completed", "{result}");
    // Ending the session takes its caches with it.
    client.end(id).await;
    assert!(!cache.exists(), "{} left behind", cache.display());
    client.shutdown().await;
}

/// Where each masked credential is planted under the mounted tree, with
/// the secret it holds.
const PLANTED: &[&str] = &[
    ".cargo/credentials.toml",
    ".cargo/credentials",
    ".npmrc",
    ".yarnrc",
    ".yarnrc.yml",
    ".pypirc",
    ".netrc",
    ".docker/config.json",
    ".config/gh/hosts.yml",
    ".git-credentials",
    ".ssh/id_ed25519",
    ".aws/credentials",
    // Depth two below the mounted root, in a project-like subtree.
    "tools/.npmrc",
    "tools/sub/.pypirc",
];

#[tokio::test]
async fn credentials_in_mounted_trees_are_unreadable() {
    let tree = tempfile::Builder::new()
        .prefix("agentkimi-toolchain-")
        .tempdir()
        .unwrap();
    let root = std::fs::canonicalize(tree.path()).unwrap();
    for (i, rel) in PLANTED.iter().enumerate() {
        write(&root, rel, &format!("SECRET-{i}-planted\n"));
    }
    write(&root, "bin/tool", "#!/bin/sh\necho visible-tool\n");
    write(&root, "tools/readme.txt", "VISIBLE-README\n");

    // One command reads every planted path, each result on its own line.
    let mut script = String::new();
    for rel in PLANTED {
        let p = root.join(rel);
        script.push_str(&format!(
            "printf '%s => ' '{rel}'; cat '{}' 2>&1 | head -c 200; echo; ",
            p.display()
        ));
    }
    script.push_str(&format!(
        "cat '{}'; ls -A '{}' 2>/dev/null | wc -l; ls -A '{}' 2>/dev/null | wc -l; cat '{}' 2>&1",
        root.join("tools/readme.txt").display(),
        root.join(".ssh").display(),
        root.join(".config/gh").display(),
        root.join("bin/tool").display(),
    ));
    let mock = MockModel::sequence(vec![bash(&script), Reply::text("looked")]);
    let client = McpClient::builder(&mock)
        .env("AGENTKIMI_RO_PATHS", &path_string(&root))
        .spawn()
        .await;
    let result: Value = client.start("look around", None).await;
    let out = output(&mock.requests(), 1);

    for (i, rel) in PLANTED.iter().enumerate() {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{rel} => ")))
            .unwrap_or_else(|| panic!("no line for {rel}: {out}"));
        assert!(
            !line.contains(&format!("SECRET-{i}")),
            "{rel} readable inside the sandbox: {line}"
        );
    }
    assert!(!out.contains("SECRET-"), "{out}");
    // The rest of the tree is there, and the masked directories are empty.
    assert!(out.contains("VISIBLE-README"), "{out}");
    assert!(out.contains("\n0\n0\n"), "masked dirs not empty: {out}");
    assert!(out.contains("#!/bin/sh"), "{out}");
    // The host files are untouched.
    assert_eq!(
        std::fs::read_to_string(root.join(".npmrc")).unwrap(),
        "SECRET-2-planted\n"
    );
    assert_eq!(result["status"], "completed", "{result}");
    client.shutdown().await;
}

/// A loopback HTTP server standing in for an allowed registry: it answers
/// every request with `HELLO` and its path, and records the request lines.
fn registry_stub() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let path = first.split(' ').nth(1).unwrap_or("?").to_string();
            log.lock().unwrap().push(first.trim().to_string());
            let body = format!("HELLO {path}");
            let mut conn = conn;
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, seen)
}

/// Inside the sandbox: each way out, labelled, one line each.
const EGRESS_PROBE: &str = r#"
import http.client, socket, urllib.request
PORT = int("@PORT@")
def t(label, f):
    try:
        print(label, "=>", f())
    except Exception as e:
        print(label, "=> ERR", type(e).__name__, e)
def tunnel(host, port):
    c = http.client.HTTPConnection("127.0.0.1", 3128, timeout=10)
    c.set_tunnel(host, port)
    c.request("GET", "/t")
    return c.getresponse().read().decode()
def raw_get(url):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % url).encode())
    return s.recv(200).decode().splitlines()[0]
def socks(name):
    s = socket.create_connection(("127.0.0.1", 3128), timeout=10)
    s.sendall(b"\x05\x01\x00")
    assert s.recv(2) == b"\x05\x00"
    s.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name + (80).to_bytes(2, "big"))
    r = s.recv(10)
    if r[1] != 0:
        return "refused %d" % r[1]
    s.sendall(b"GET /s HTTP/1.0\r\nHost: allowed.test\r\n\r\n")
    return s.recv(4096).decode().split("\r\n\r\n")[-1]
t("plain", lambda: urllib.request.urlopen("http://allowed.test/x", timeout=10).read().decode())
t("connect", lambda: tunnel("allowed.test", 80))
t("socks", lambda: socks(b"allowed.test"))
t("denied", lambda: urllib.request.urlopen("http://denied.test/x", timeout=10).read().decode())
t("denied-connect", lambda: tunnel("denied.test", 80))
t("denied-socks", lambda: socks(b"denied.test"))
t("rawip", lambda: raw_get("http://127.0.0.1:%d/r" % PORT))
t("rawip-connect", lambda: tunnel("127.0.0.1", PORT))
t("direct", lambda: socket.create_connection(("127.0.0.1", PORT), timeout=5) and "connected")
t("dns", lambda: socket.getaddrinfo("allowed.test", 80))
"#;

#[tokio::test]
async fn allowlist_lets_allowed_names_through_and_refuses_the_rest() {
    let (port, seen) = registry_stub();
    let probe = EGRESS_PROBE.replace("@PORT@", &port.to_string());
    let mock = MockModel::sequence(vec![
        bash(&format!("python3 - <<'PY'\n{probe}\nPY")),
        Reply::tools(vec![ToolUse::new(
            "WebFetch",
            json!({"url": "https://denied.test/page", "prompt": "anything"}),
        )]),
        Reply::text("probed"),
    ]);
    let client = McpClient::builder(&mock)
        .env("AGENTKIMI_NETWORK", "allowlist")
        .env("AGENTKIMI_ALLOWED_DOMAINS", "allowed.test")
        // Both names lead to the stub, so only the allowlist can keep
        // denied.test from reaching it.
        .env(
            "AGENTKIMI_TEST_PROXY_RESOLVE",
            &format!("allowed.test:127.0.0.1:{port},denied.test:127.0.0.1:{port}"),
        )
        .spawn()
        .await;
    let result = client.start("probe the network", None).await;
    let requests = mock.requests();
    let out = output(&requests, 1);
    let line = |label: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{label} => ")))
            .unwrap_or_else(|| panic!("no {label} line: {out}"))
            .to_string()
    };
    assert_eq!(line("plain"), "plain => HELLO /x", "{out}");
    assert_eq!(line("connect"), "connect => HELLO /t", "{out}");
    assert_eq!(line("socks"), "socks => HELLO /s", "{out}");
    assert!(line("denied").contains("403"), "{out}");
    assert!(line("denied-connect").contains("403"), "{out}");
    assert_eq!(line("denied-socks"), "denied-socks => refused 2", "{out}");
    assert!(line("rawip").contains("403"), "{out}");
    assert!(line("rawip-connect").contains("403"), "{out}");
    assert!(line("direct").contains("ERR"), "{out}");
    assert!(line("dns").contains("ERR"), "{out}");
    // Only the three allowed requests reached the stub.
    let mut got = seen.lock().unwrap().clone();
    got.sort();
    assert_eq!(
        got,
        vec!["GET /s HTTP/1.0", "GET /t HTTP/1.1", "GET /x HTTP/1.1"],
        "{out}"
    );

    // WebFetch is offered and goes through the proxy, which refused it.
    assert!(requests[0].tool_names().iter().any(|n| n == "WebFetch"));
    let fetched = output(&requests, 2);
    assert!(!fetched.contains("HELLO"), "{fetched}");
    let log = client.server_log();
    for decision in [
        "allow HTTP allowed.test:80",
        "allow CONNECT allowed.test:80",
        "allow SOCKS5 allowed.test:80",
        "deny HTTP denied.test:80",
        "deny SOCKS5 denied.test:80",
        "deny CONNECT denied.test:443",
        &format!("deny HTTP 127.0.0.1:{port}"),
    ] {
        assert!(log.contains(decision), "no `{decision}` in the log: {log}");
    }
    assert_eq!(result["status"], "completed", "{result}");
    client.shutdown().await;
}
