//! The command line: the real `agentkimi` binary run as a person or a
//! script would, against the scripted mock model, with real bubblewrap and
//! real git.
//!
//! Each test checks what a user relies on: that `run --json` prints a turn
//! result a program can read, that `sessions` sees and ends that session,
//! that `mcp-config` prints something each client accepts, that `config`
//! says where each setting came from without showing the key, that config
//! file mistakes point at their line, and that `serve --http` speaks MCP
//! and guards itself with its token.

mod support;

use std::{
    fs,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use serde_json::{Value, json};
use support::{
    git::GitRepo,
    mock_model::{MockModel, Reply, ToolUse},
};

const BIN: &str = env!("CARGO_BIN_EXE_agentkimi");

/// A state directory, a user home and a key, for running the binary.
struct Env {
    _dir: tempfile::TempDir,
    home: PathBuf,
    user_home: PathBuf,
    base_url: String,
    key: String,
    extra: Vec<(String, String)>,
}

impl Env {
    fn new(base_url: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        let user_home = root.join("userhome");
        fs::create_dir(&user_home).unwrap();
        Env {
            home: root.join("home"),
            user_home,
            _dir: dir,
            base_url: base_url.to_owned(),
            key: format!("sk-test-{:016x}", rand_u64()),
            extra: Vec::new(),
        }
    }

    fn env(mut self, k: &str, v: &str) -> Env {
        self.extra.push((k.into(), v.into()));
        self
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env_clear()
            .env("AGENTKIMI_HOME", &self.home)
            .env("HOME", &self.user_home)
            .env("AGENTKIMI_BASE_URL", &self.base_url)
            .env("KIMI_API_KEY", &self.key)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .current_dir(&self.user_home);
        for (k, v) in &self.extra {
            c.env(k, v);
        }
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Runs and expects success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "agentkimi {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects failure; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "agentkimi {args:?} should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

fn write_hello() -> ToolUse {
    ToolUse::new(
        "Write",
        json!({"file_path": "hello.txt", "content": "hello\n"}),
    )
}

// ---------------------------------------------------------------------------
// run and sessions

#[test]
fn run_json_then_sessions_list_show_diff_and_end() {
    let mock = MockModel::sequence(vec![
        Reply::tools(vec![write_hello()]),
        Reply::text("Created hello.txt."),
    ]);
    let env = Env::new(&mock.base_url());
    let repo = GitRepo::new();
    let workdir = repo.path().to_str().unwrap();

    let out = env.run(&["run", "Create hello.txt", "--workdir", workdir, "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let result: Value = serde_json::from_slice(&out.stdout).expect("stdout is the JSON result");
    assert_eq!(result["status"], "completed", "{result:#}");
    assert_eq!(result["summary"], "Created hello.txt.");
    assert_eq!(result["files_changed"][0]["path"], "hello.txt");
    assert!(result["diff"].as_str().unwrap().contains("+hello"));
    // Progress went to stderr, one line per event when it is not a terminal.
    assert!(stderr.contains("Kimi is thinking (step 1)"), "{stderr}");
    assert!(stderr.contains("Write"), "{stderr}");
    let id = result["session_id"].as_str().unwrap().to_owned();
    let worktree = PathBuf::from(result["worktree"].as_str().unwrap());
    assert!(worktree.join("hello.txt").exists());
    assert!(
        !repo.path().join("hello.txt").exists(),
        "the user's tree is untouched"
    );

    let list: Value = serde_json::from_str(&env.ok(&["sessions", "list", "--json"])).unwrap();
    assert_eq!(list[0]["session_id"], id.as_str());
    assert_eq!(list[0]["state"], "active");
    assert_eq!(list[0]["turns"], 1);
    assert_eq!(list[0]["workdir"], workdir);
    let table = env.ok(&["sessions", "list"]);
    assert!(table.contains(&id) && table.contains("active"), "{table}");

    let show: Value = serde_json::from_str(&env.ok(&["sessions", "show", &id, "--json"])).unwrap();
    assert_eq!(show["turns"][0]["status"], "completed");
    assert_eq!(show["turns"][0]["prompt"], "Create hello.txt");
    assert_eq!(show["turns"][0]["tool_calls"], 1);
    // The mock reports 100 in, 20 out, 40 cached per step; two steps.
    assert_eq!(show["turns"][0]["usage"]["input_tokens"], 200);
    assert_eq!(show["usage"]["output_tokens"], 40);
    assert_eq!(show["usage"]["cache_read_input_tokens"], 80);
    let text = env.ok(&["sessions", "show", &id]);
    assert!(
        text.contains("tokens 200 in / 40 out / 80 cached")
            && text.contains("Session tokens: 200 in / 40 out / 80 cached"),
        "{text}"
    );

    let diff = env.ok(&["sessions", "diff", &id]);
    assert!(
        diff.contains("+++ b/hello.txt") && diff.contains("+hello"),
        "{diff}"
    );
    assert!(
        !diff.contains('\x1b'),
        "no colour when stdout is not a terminal"
    );

    let end = env.ok(&["sessions", "end", &id]);
    assert!(
        end.contains("ended") && end.contains(&format!("agentkimi/{id}")),
        "{end}"
    );
    assert!(!worktree.exists(), "ending removes the worktree");
    assert!(
        repo.has_branch(&format!("agentkimi/{id}")),
        "and keeps the branch"
    );
    let list: Value = serde_json::from_str(&env.ok(&["sessions", "list", "--json"])).unwrap();
    assert_eq!(list[0]["state"], "ended");
    let err = env.fails(&["sessions", "diff", &id]);
    assert!(err.contains("has ended") && err.contains("git -C"), "{err}");

    let err = env.fails(&["sessions", "show", "kimi-000000000000"]);
    assert!(
        err.contains("unknown session") && err.contains("sessions list"),
        "{err}"
    );
}

#[test]
fn run_prints_the_summary_and_the_diff_as_text() {
    let mock = MockModel::sequence(vec![
        Reply::tools(vec![write_hello()]),
        Reply::text("Created hello.txt."),
    ]);
    let env = Env::new(&mock.base_url());
    let out = env.run(&["run", "Create hello.txt"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("completed"), "{stdout}");
    assert!(stdout.contains("Summary\nCreated hello.txt."), "{stdout}");
    assert!(stdout.contains("+hello"), "{stdout}");
    assert!(stdout.contains("agentkimi sessions end kimi-"), "{stdout}");
    assert!(!stdout.contains('\x1b'), "{stdout}");
}

#[test]
fn run_without_a_key_says_how_to_set_one() {
    let mock = MockModel::sequence(vec![]);
    let env = Env::new(&mock.base_url());
    let mut c = env.command(&["run", "anything", "--json"]);
    c.env_remove("KIMI_API_KEY");
    let out = c.output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("KIMI_API_KEY"), "{err}");
    assert!(out.stdout.is_empty());
    assert!(mock.requests().is_empty());
}

#[test]
fn a_failed_turn_still_prints_its_result_and_exits_non_zero() {
    let mock = MockModel::start(|_| {
        Reply::error(
            401,
            json!({
                "type": "error",
                "error": {
                    "type": "authentication_error",
                    "message": "bad key"
                }
            }),
        )
    });
    let env = Env::new(&mock.base_url());
    let out = env.run(&["run", "anything", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let result: Value = serde_json::from_slice(&out.stdout).expect("the result is still printed");
    assert_eq!(result["status"], "failed", "{result:#}");
    assert!(
        result["note"]
            .as_str()
            .unwrap_or_default()
            .contains("KIMI_API_KEY"),
        "{result:#}"
    );
    assert_eq!(mock.requests().len(), 1, "a refused key is not retried");
}

#[test]
fn gc_removes_leftovers_but_not_live_or_fresh_worktrees() {
    let mock = MockModel::sequence(vec![Reply::text("Nothing to do.")]);
    let env = Env::new(&mock.base_url());
    let result: Value = serde_json::from_str(&env.ok(&["run", "look around", "--json"])).unwrap();
    let live = PathBuf::from(result["worktree"].as_str().unwrap());
    let worktrees = env.home.join("worktrees");
    let old = worktrees.join("kimi-0123456789ab");
    fs::create_dir_all(old.join("src")).unwrap();
    fs::write(old.join("src/x"), "x").unwrap();
    let status = Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(&old)
        .status()
        .unwrap();
    assert!(status.success());
    let fresh = worktrees.join("kimi-fedcba987654");
    fs::create_dir_all(&fresh).unwrap();

    let dry = env.ok(&["sessions", "gc", "--dry-run"]);
    assert!(
        dry.contains("would remove") && dry.contains("kimi-0123456789ab"),
        "{dry}"
    );
    assert!(old.exists());

    let out = env.ok(&["sessions", "gc"]);
    assert!(
        out.contains("removed") && out.contains("no session has this id"),
        "{out}"
    );
    assert!(!old.exists());
    assert!(
        fresh.exists(),
        "a worktree being created right now is left alone"
    );
    assert!(live.exists(), "an active session's worktree is left alone");
    let out = env.ok(&["sessions", "gc"]);
    assert!(out.contains("nothing to remove"), "{out}");
}

// ---------------------------------------------------------------------------
// mcp-config

fn bin_path() -> String {
    fs::canonicalize(BIN).unwrap().display().to_string()
}

#[test]
fn mcp_config_prints_valid_registration_for_each_client() {
    let env = Env::new("http://127.0.0.1:9").env("AGENTKIMI_ENV_FILE", "/keys/kimi.env");
    let exe = bin_path();
    let home = env.home.display().to_string();

    let claude = env.ok(&["mcp-config", "--client", "claude"]);
    let words: Vec<&str> = claude.split_whitespace().collect();
    assert_eq!(
        &words[..4],
        ["claude", "mcp", "add", "agentkimi"],
        "{claude}"
    );
    let dashdash = words.iter().position(|w| *w == "--").unwrap();
    assert_eq!(&words[dashdash + 1..], [exe.as_str(), "serve"], "{claude}");
    assert!(
        words.contains(&"AGENTKIMI_ENV_FILE=/keys/kimi.env"),
        "{claude}"
    );
    assert!(!claude.contains(&env.key), "never the key");

    let codex: toml::Table = toml::from_str(&env.ok(&["mcp-config", "--client", "codex"])).unwrap();
    let server = &codex["mcp_servers"]["agentkimi"];
    assert_eq!(server["command"].as_str(), Some(exe.as_str()));
    assert_eq!(server["args"][0].as_str(), Some("serve"));
    assert_eq!(
        server["env"]["AGENTKIMI_ENV_FILE"].as_str(),
        Some("/keys/kimi.env")
    );
    assert_eq!(
        server["env"]["AGENTKIMI_HOME"].as_str(),
        Some(home.as_str())
    );
    assert!(server["tool_timeout_sec"].as_integer().unwrap() > 660);

    for (client, top) in [
        ("cursor", "mcpServers"),
        ("vscode", "servers"),
        ("gemini", "mcpServers"),
    ] {
        let out = env.ok(&["mcp-config", "--client", client]);
        let v: Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{client}: {e}\n{out}"));
        let server = &v[top]["agentkimi"];
        assert_eq!(server["command"], exe.as_str(), "{client}: {out}");
        assert_eq!(server["args"], json!(["serve"]), "{client}");
        assert_eq!(
            server["env"]["AGENTKIMI_ENV_FILE"], "/keys/kimi.env",
            "{client}"
        );
        assert!(!out.contains(&env.key));
    }
    let vscode: Value =
        serde_json::from_str(&env.ok(&["mcp-config", "--client", "vscode"])).unwrap();
    assert_eq!(vscode["servers"]["agentkimi"]["type"], "stdio");

    let err = env.fails(&["mcp-config", "--client", "notepad"]);
    assert!(err.contains("claude") && err.contains("gemini"), "{err}");
}

// ---------------------------------------------------------------------------
// config

fn line_of<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} line in\n{out}"))
}

#[test]
fn config_shows_each_source_and_never_the_key() {
    let env = Env::new("http://127.0.0.1:9").env("AGENTKIMI_MAX_STEPS", "11");
    fs::create_dir_all(&env.home).unwrap();
    let file = env.home.join("config.toml");
    fs::write(
        &file,
        "# my settings\nmodel = \"file-model\"\nmax_steps = 9\ndeny_paths = [\"/srv/secret\"]\n",
    )
    .unwrap();

    let out = env.ok(&["config"]);
    assert!(!out.contains(&env.key), "the key leaked:\n{out}");
    assert!(line_of(&out, "api_key").contains("set (redacted)"), "{out}");
    assert!(
        line_of(&out, "api_key").contains("env KIMI_API_KEY"),
        "{out}"
    );
    let model = line_of(&out, "model");
    assert!(
        model.contains("file-model") && model.contains(&format!("{} line 2", file.display())),
        "{model}"
    );
    let steps = line_of(&out, "max_steps");
    assert!(
        steps.contains("11") && steps.contains("env AGENTKIMI_MAX_STEPS"),
        "{steps}"
    );
    assert!(line_of(&out, "deny_paths").contains("/srv/secret"), "{out}");
    assert!(line_of(&out, "deny_paths").contains("line 4"), "{out}");
    let base = line_of(&out, "base_url");
    assert!(
        base.contains("http://127.0.0.1:9") && base.contains("env AGENTKIMI_BASE_URL"),
        "{base}"
    );
    assert!(line_of(&out, "turn_timeout_ms").contains("660000"), "{out}");
    assert!(
        line_of(&out, "turn_timeout_ms").contains("default"),
        "{out}"
    );
    assert!(
        out.contains(&format!("config file: {} (read)", file.display())),
        "{out}"
    );
}

#[test]
fn config_file_mistakes_are_reported_with_their_line() {
    let env = Env::new("http://127.0.0.1:9");
    fs::create_dir_all(&env.home).unwrap();
    let file = env.home.join("config.toml");

    fs::write(&file, "model = \"m\"\nmax_stepz = 3\n").unwrap();
    let err = env.fails(&["config"]);
    assert!(
        err.contains("line 2") && err.contains("unknown setting `max_stepz`"),
        "{err}"
    );
    assert!(err.contains("max_steps"), "lists what is accepted: {err}");

    fs::write(&file, "turn_timeout_ms = \"soon\"\n").unwrap();
    let err = env.fails(&["config"]);
    assert!(
        err.contains("line 1") && err.contains("turn_timeout_ms = 30"),
        "{err}"
    );

    fs::write(&file, "\n\nprotocol = \"grpc\"\n").unwrap();
    let err = env.fails(&["run", "x"]);
    assert!(
        err.contains("line 3") && err.contains("`anthropic` or `openai`"),
        "{err}"
    );

    fs::write(&file, "api_key = \"sk-in-the-file\"\n").unwrap();
    let err = env.fails(&["config"]);
    assert!(
        err.contains("env_file") && !err.contains("sk-in-the-file"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------
// serve --http

/// A running `agentkimi serve --http`, killed on drop.
struct HttpServer {
    child: Child,
    url: String,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve_http(env: &Env, args: &[&str]) -> HttpServer {
    let mut c = env.command(&[&["serve", "--http"], args].concat());
    c.stderr(Stdio::piped())
        .stdout(Stdio::null())
        .stdin(Stdio::null());
    let mut child = c.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(at) = line.find("serving MCP at ") {
                let _ = tx.send(line[at + "serving MCP at ".len()..].trim().to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the server announces its address");
    HttpServer { child, url }
}

/// The JSON-RPC message in a response that is JSON or SSE.
fn rpc_body(text: &str) -> Value {
    if let Ok(v) = serde_json::from_str(text) {
        return v;
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("jsonrpc").is_some())
        .unwrap_or_else(|| panic!("no JSON-RPC message in {text}"))
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    session: Option<&str>,
    body: Value,
) -> reqwest::Response {
    let mut req = http
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(s) = session {
        req = req.header("mcp-session-id", s);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn http_transport_serves_mcp_and_checks_the_token() {
    let token = "test-token-0123456789abcdef";
    let env = Env::new("http://127.0.0.1:9").env("AGENTKIMI_HTTP_TOKEN", token);
    let server = serve_http(&env, &["127.0.0.1:0"]);
    let http = reqwest::Client::new();
    let init = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "cli-test", "version": "0"},
        },
    });

    for wrong in [None, Some("wrong-token-0123456789abcdef")] {
        let resp = post(&http, &server.url, wrong, None, init.clone()).await;
        assert_eq!(resp.status(), 401, "token {wrong:?}");
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    }

    let resp = post(&http, &server.url, Some(token), None, init).await;
    assert_eq!(resp.status(), 200);
    let session = resp
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = rpc_body(&resp.text().await.unwrap());
    assert_eq!(body["id"], 1, "{body}");
    assert_eq!(body["result"]["serverInfo"]["name"], "agentkimi", "{body}");

    let resp = post(
        &http,
        &server.url,
        Some(token),
        session.as_deref(),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert!(resp.status().is_success(), "{}", resp.status());

    let resp = post(
        &http,
        &server.url,
        Some(token),
        session.as_deref(),
        json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body = rpc_body(&resp.text().await.unwrap());
    let names: Vec<&str> = body["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"agentkimi_start"), "{names:?}");
    assert!(names.contains(&"agentkimi_end"), "{names:?}");

    // A page on another site that rebinds its name to 127.0.0.1 is refused
    // by the Host check, token or not.
    let resp = http
        .post(&server.url)
        .header("host", "attacker.example")
        .header("accept", "application/json, text/event-stream")
        .bearer_auth(token)
        .json(&json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);

    // Even a request in an established session needs the token.
    let resp = post(
        &http,
        &server.url,
        None,
        session.as_deref(),
        json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}),
    )
    .await;
    assert_eq!(resp.status(), 401);
}

#[test]
fn http_beyond_loopback_needs_the_flag_and_a_token() {
    let env = Env::new("http://127.0.0.1:9");
    let err = env.fails(&["serve", "--http", "0.0.0.0:0"]);
    assert!(
        err.contains("not a loopback address") && err.contains("--allow-remote"),
        "{err}"
    );
    let err = env.fails(&["serve", "--http", "0.0.0.0:0", "--allow-remote"]);
    assert!(err.contains("AGENTKIMI_HTTP_TOKEN"), "{err}");
}
