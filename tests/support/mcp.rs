//! The MCP side of the end-to-end harness: the real `agentkimi serve`
//! binary, spawned the way an MCP client spawns it, and driven through the
//! official Rust SDK's client (rmcp) rather than through code this project
//! wrote, so a misreading of the protocol on the server side cannot be
//! mirrored by the same misreading in the test.
//!
//! Each [`McpClient`] owns a temporary directory holding the server's state
//! (`AGENTKIMI_HOME`), an empty user home, and the server's stderr log. The
//! server gets a clean environment: only the variables listed in
//! [`McpClientBuilder::spawn`], so nothing from the developer's shell (a real
//! key, a real `~/.agentkimi`) can leak into a test.
//!
//! Set `AGENTKIMI_E2E_STDERR=inherit` to see the server's stderr live instead
//! of in the log file; the log's tail is printed anyway when a test panics
//! while a client is alive. Set `AGENTKIMI_E2E_KEEP=1` to keep a failed
//! test's state directory (database, worktrees, log) for inspection.

use std::{
    fs::{self, File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use rmcp::{
    ClientCacheConfig, ClientHandler, RoleClient, ServiceExt,
    model::{
        CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, Implementation,
        ProgressNotificationParam, ProtocolVersion, Tool,
    },
    service::RunningService,
    transport::TokioChildProcess,
};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::process::Command;

use super::mock_model::MockModel;

/// How long the MCP handshake may take before the harness gives up.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Default limit on one tool call. A turn runs a sandbox and several model
/// steps, so this is generous; it exists so a hung server fails the test
/// with its log instead of hanging the suite.
const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(180);

/// How many lines of the server log a failing test prints.
const LOG_TAIL_LINES: usize = 200;

/// The client side of the connection: it identifies the harness, records
/// the messages of progress notifications, and otherwise accepts rmcp's
/// defaults (no sampling, no roots). rmcp puts a progress token on every
/// request, so every tool call may report progress.
#[derive(Debug, Clone, Default)]
pub struct HarnessClient {
    progress: Arc<Mutex<Vec<String>>>,
}

impl ClientHandler for HarnessClient {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: rmcp::service::NotificationContext<RoleClient>,
    ) {
        self.progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(params.message.unwrap_or_default());
    }

    fn get_info(&self) -> ClientConfig {
        // The handshake most clients in use today perform: `initialize` with
        // the newest protocol version that still has one.
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("agentkimi-e2e", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
    }
}

/// Numbers sibling servers' logs.
static SIBLINGS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Configures and spawns an [`McpClient`].
pub struct McpClientBuilder {
    base_url: String,
    api_key: String,
    extra_env: Vec<(String, String)>,
    command: Option<(PathBuf, Vec<String>)>,
    call_timeout: Duration,
}

impl McpClientBuilder {
    /// Sets one more environment variable for the server, e.g.
    /// `AGENTKIMI_DENY_PATHS` or `AGENTKIMI_MAX_STEPS`. Later calls win.
    pub fn env(mut self, key: &str, value: &str) -> McpClientBuilder {
        self.extra_env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Gives the server this key instead of a fresh one from
    /// [`fresh_api_key`]; for tests whose script must know the key before
    /// the server starts.
    pub fn api_key(mut self, key: &str) -> McpClientBuilder {
        self.api_key = key.to_owned();
        self
    }

    /// Overrides the limit on one tool call (default 180 s).
    pub fn call_timeout(mut self, timeout: Duration) -> McpClientBuilder {
        self.call_timeout = timeout;
        self
    }

    /// Runs `program args…` instead of `agentkimi serve`; for testing the
    /// harness itself against a stand-in server.
    pub fn command(mut self, program: &Path, args: &[&str]) -> McpClientBuilder {
        let args = args.iter().map(|arg| (*arg).to_owned()).collect();
        self.command = Some((program.to_owned(), args));
        self
    }

    /// Creates the temporary directories and spawns the server.
    ///
    /// The server's environment is exactly: `AGENTKIMI_HOME=<tmp>/home`
    /// (not created, so the server's first-run path is what runs),
    /// `HOME=<tmp>/userhome` (created, empty), `AGENTKIMI_BASE_URL` (the
    /// mock), `KIMI_API_KEY` (a fresh random secret unless
    /// [`Self::api_key`] set one), `PATH` (the test process's),
    /// `RUST_LOG=debug`, and whatever [`Self::env`] added. Its
    /// working directory is the user home, so it cannot mistake the
    /// project's own checkout for a workdir.
    ///
    /// # Panics
    ///
    /// When the directories cannot be made, the server cannot start, or the
    /// MCP handshake fails; the message includes the server log.
    pub async fn spawn(self) -> McpClient {
        let dir = tempfile::Builder::new()
            .prefix("agentkimi-e2e-")
            .tempdir()
            .expect("create the harness's temporary directory");
        // Canonical, because the server reports canonical paths and tests
        // compare them with these.
        let root = fs::canonicalize(dir.path()).expect("canonicalize the harness directory");
        let home = root.join("home");
        let user_home = root.join("userhome");
        fs::create_dir(&user_home).expect("create the user home");
        let api_key = self.api_key;

        let mut env = vec![
            ("AGENTKIMI_HOME".to_owned(), path_string(&home)),
            ("HOME".to_owned(), path_string(&user_home)),
            ("AGENTKIMI_BASE_URL".to_owned(), self.base_url),
            ("KIMI_API_KEY".to_owned(), api_key.clone()),
            ("PATH".to_owned(), std::env::var("PATH").unwrap_or_default()),
            ("RUST_LOG".to_owned(), "debug".to_owned()),
        ];
        for (key, value) in self.extra_env {
            env.retain(|(existing, _)| *existing != key);
            env.push((key, value));
        }
        let (program, args) = self.command.unwrap_or_else(|| {
            let program = PathBuf::from(env!("CARGO_BIN_EXE_agentkimi"));
            (program, vec!["serve".to_owned()])
        });

        let settings = Settings {
            program,
            args,
            env,
            cwd: user_home.clone(),
            log_path: root.join("server-stderr.log"),
            inherit_stderr: std::env::var("AGENTKIMI_E2E_STDERR").as_deref() == Ok("inherit"),
            call_timeout: self.call_timeout,
        };
        let mut client = McpClient {
            service: None,
            pid: None,
            spawns: 0,
            api_key,
            home,
            user_home,
            settings,
            dir: Some(dir),
            handler: HarnessClient::default(),
        };
        client.launch().await;
        client
    }
}

/// How to (re)start the server; kept so `restart` spawns the same thing.
#[derive(Clone)]
struct Settings {
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: PathBuf,
    log_path: PathBuf,
    inherit_stderr: bool,
    call_timeout: Duration,
}

/// A running `agentkimi serve` with an rmcp client connected over stdio.
///
/// Call [`McpClient::shutdown`] at the end of a test for an orderly exit;
/// dropping the client instead kills the server with `SIGKILL`.
pub struct McpClient {
    service: Option<RunningService<RoleClient, HarnessClient>>,
    pid: Option<u32>,
    spawns: u32,
    api_key: String,
    home: PathBuf,
    user_home: PathBuf,
    settings: Settings,
    /// Owns the state directories; `None` once kept for inspection.
    dir: Option<TempDir>,
    /// Shared by every spawn, so progress survives a restart.
    handler: HarnessClient,
}

impl McpClient {
    /// A builder for a server that talks to `mock`.
    pub fn builder(mock: &MockModel) -> McpClientBuilder {
        McpClientBuilder {
            base_url: mock.base_url(),
            api_key: fresh_api_key(),
            extra_env: Vec::new(),
            command: None,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        }
    }

    /// Spawns a server that talks to `mock`, with the default settings.
    pub async fn spawn(mock: &MockModel) -> McpClient {
        McpClient::builder(mock).spawn().await
    }

    /// The secret given to the server as `KIMI_API_KEY`; unique per client.
    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// The server's `AGENTKIMI_HOME`.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// The server's `HOME`.
    pub fn user_home(&self) -> &Path {
        &self.user_home
    }

    /// The server process's id, while one runs.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Everything the server wrote to stderr so far, across restarts (each
    /// spawn starts with a `=== spawn N ===` line). Empty when stderr is
    /// inherited.
    pub fn server_log(&self) -> String {
        fs::read_to_string(&self.settings.log_path).unwrap_or_default()
    }

    /// The messages of every progress notification received so far, in
    /// arrival order, across all calls.
    pub fn progress_messages(&self) -> Vec<String> {
        self.handler
            .progress
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The tools the server lists. The client's response cache is off, so
    /// this always asks the running server.
    pub async fn list_tools(&self) -> Vec<Tool> {
        let service = self.service();
        match tokio::time::timeout(self.settings.call_timeout, service.list_all_tools()).await {
            Ok(Ok(tools)) => tools,
            Ok(Err(error)) => self.fail(&format!("tools/list failed: {error}")),
            Err(_) => self.fail("tools/list did not answer in time"),
        }
    }

    /// Calls tool `name` with `args` (a JSON object) and returns the result,
    /// error results (`isError: true`) included.
    ///
    /// # Panics
    ///
    /// When `args` is not an object, the call times out, or the server
    /// answers with a protocol error instead of a tool result: this server
    /// reports every problem, bad arguments included, as an `isError`
    /// result.
    pub async fn call(&self, name: &str, args: Value) -> CallToolResult {
        let Value::Object(arguments) = args else {
            panic!("tool arguments must be a JSON object, not {args}");
        };
        let params = CallToolRequestParams::new(name.to_owned()).with_arguments(arguments);
        let service = self.service();
        match tokio::time::timeout(self.settings.call_timeout, service.call_tool(params)).await {
            Ok(Ok(result)) => result,
            Ok(Err(error)) => self.fail(&format!(
                "{name} failed at the protocol level ({error}); \
                 the server must report problems as isError tool results"
            )),
            Err(_) => self.fail(&format!(
                "{name} did not answer within {:?}",
                self.settings.call_timeout
            )),
        }
    }

    /// Spawns a second server on the same `AGENTKIMI_HOME`, as a second MCP
    /// client on the same machine would; its stderr goes to its own log.
    pub async fn sibling(&self) -> McpClient {
        let mut settings = self.settings.clone();
        let n = SIBLINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        settings.log_path = settings
            .log_path
            .with_file_name(format!("sibling-{n}-stderr.log"));
        let mut client = McpClient {
            service: None,
            pid: None,
            spawns: 0,
            api_key: self.api_key.clone(),
            home: self.home.clone(),
            user_home: self.user_home.clone(),
            settings,
            dir: None,
            handler: HarnessClient::default(),
        };
        client.launch().await;
        client
    }

    /// Calls tool `name` and returns the protocol-level outcome instead of
    /// panicking on it: for tests in which the server dies mid-call.
    pub async fn try_call(&self, name: &str, args: Value) -> Result<CallToolResult, String> {
        let Value::Object(arguments) = args else {
            return Err(format!("tool arguments must be a JSON object, not {args}"));
        };
        let params = CallToolRequestParams::new(name.to_owned()).with_arguments(arguments);
        let service = self.service();
        match tokio::time::timeout(self.settings.call_timeout, service.call_tool(params)).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("{name} did not answer in time")),
        }
    }

    /// The client side of the connection, for requests the helpers above do
    /// not cover (a cancellable request, say).
    pub fn peer(&self) -> rmcp::Peer<rmcp::RoleClient> {
        self.service().peer().clone()
    }

    /// `agentkimi_start`; returns the `structuredContent` of a successful
    /// result.
    ///
    /// # Panics
    ///
    /// On an error result or a result without `structuredContent`.
    pub async fn start(&self, prompt: &str, workdir: Option<&Path>) -> Value {
        let mut args = json!({"prompt": prompt});
        if let Some(workdir) = workdir {
            args["workdir"] = json!(path_string(workdir));
        }
        let result = self.call("agentkimi_start", args).await;
        structured(&result, "agentkimi_start")
    }

    /// `agentkimi_send`; returns the `structuredContent` of a successful
    /// result.
    ///
    /// # Panics
    ///
    /// On an error result or a result without `structuredContent`.
    pub async fn send(&self, session_id: &str, message: &str) -> Value {
        let args = json!({"session_id": session_id, "message": message});
        let result = self.call("agentkimi_send", args).await;
        structured(&result, "agentkimi_send")
    }

    /// `agentkimi_end`; returns the `structuredContent` of a successful
    /// result.
    ///
    /// # Panics
    ///
    /// On an error result or a result without `structuredContent`.
    pub async fn end(&self, session_id: &str) -> Value {
        let result = self
            .call("agentkimi_end", json!({"session_id": session_id}))
            .await;
        structured(&result, "agentkimi_end")
    }

    /// Kills the server with `SIGKILL`, the way a crash or an impatient
    /// client would end it, and spawns a new one on the same
    /// `AGENTKIMI_HOME`, `HOME`, key and settings.
    pub async fn restart(&mut self) {
        self.kill();
        if let Some(service) = self.service.take() {
            // The process is gone; this only lets rmcp reap it and stop its
            // tasks before the next server starts on the same state.
            let _ = service.cancel().await;
        }
        self.pid = None;
        self.launch().await;
    }

    /// Closes the connection as [`Self::shutdown`] does, but keeps the state
    /// directory for inspection until the client is dropped.
    pub async fn close(&mut self) {
        if let Some(service) = self.service.take() {
            let _ = service.cancel().await;
        }
        self.pid = None;
    }

    /// Ends the connection the way a well-behaved client does: closes the
    /// server's stdin and waits for it to exit (rmcp sends `SIGTERM`, then
    /// `SIGKILL`, if it lingers).
    pub async fn shutdown(mut self) {
        if let Some(service) = self.service.take() {
            let _ = service.cancel().await;
        }
        self.pid = None;
    }

    async fn launch(&mut self) {
        self.spawns += 1;
        let settings = &self.settings;

        let mut command = Command::new(&settings.program);
        command
            .args(&settings.args)
            .env_clear()
            .envs(settings.env.iter().map(|(key, value)| (key, value)))
            .current_dir(&settings.cwd);
        let stderr = if settings.inherit_stderr {
            Stdio::inherit()
        } else {
            Stdio::from(self.open_log())
        };
        let (transport, _) = TokioChildProcess::builder(command)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot spawn {}: {error}", settings.program.display()));
        self.pid = transport.id();

        let service =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.handler.clone().serve(transport))
                .await
            {
                Ok(Ok(service)) => service,
                Ok(Err(error)) => self.fail(&format!("the MCP handshake failed: {error}")),
                Err(_) => self.fail("the MCP handshake did not finish in time"),
            };
        // rmcp may answer tools/list from a cache, and serves a stale entry
        // when the server is gone; a harness that checks the server is alive
        // must always ask it.
        service
            .peer()
            .set_response_cache_config(ClientCacheConfig::disabled())
            .await;
        self.service = Some(service);
    }

    fn open_log(&self) -> File {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.settings.log_path)
            .expect("open the server log");
        writeln!(log, "=== spawn {} ===", self.spawns).expect("write to the server log");
        log
    }

    fn service(&self) -> &RunningService<RoleClient, HarnessClient> {
        self.service
            .as_ref()
            .expect("the server is not running (shut down, or a restart failed)")
    }

    /// Sends `SIGKILL` to the server process, if one runs.
    fn kill(&mut self) {
        let Some(pid) = self.pid.take() else { return };
        let pid = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        if let Some(pid) = pid {
            // It may have exited already; either way it is gone afterwards.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }

    /// Fails the test. Dropping the client while the panic unwinds prints
    /// the server's stderr, so the message need not carry it.
    fn fail(&self, what: &str) -> ! {
        panic!("{what} (the server's stderr follows the panic)");
    }
}

impl Drop for McpClient {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if !self.settings.inherit_stderr {
                eprintln!(
                    "--- agentkimi server stderr (last {LOG_TAIL_LINES} lines) ---\n{}",
                    tail(&self.server_log(), LOG_TAIL_LINES)
                );
            }
            if std::env::var_os("AGENTKIMI_E2E_KEEP").is_some()
                && let Some(dir) = self.dir.take()
            {
                eprintln!(
                    "--- kept the server's state in {} ---",
                    dir.keep().display()
                );
            }
        }
        // rmcp kills its child from a task it spawns on drop, and a test's
        // runtime may shut down before that task runs; killing here does not
        // depend on the runtime.
        self.kill();
    }
}

/// The `structuredContent` of a successful tool result.
///
/// # Panics
///
/// When `result` is an error result or has no `structuredContent`; the
/// message quotes the result's text.
pub fn structured(result: &CallToolResult, tool: &str) -> Value {
    assert!(
        result.is_error != Some(true),
        "{tool} returned an error result: {}",
        text_of(result)
    );
    match &result.structured_content {
        Some(value) => value.clone(),
        None => panic!(
            "{tool} returned no structuredContent; its text was: {}",
            text_of(result)
        ),
    }
}

/// The text of an error result.
///
/// # Panics
///
/// When `result` is not marked `isError: true`.
pub fn expect_error(result: &CallToolResult, what: &str) -> String {
    assert_eq!(
        result.is_error,
        Some(true),
        "{what}: expected an isError result, got: {} {:?}",
        text_of(result),
        result.structured_content
    );
    text_of(result)
}

/// All text content blocks of a result, joined by newlines.
pub fn text_of(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|block| block.as_text())
        .map(|text| text.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A new random secret in the shape of an API key. Its first characters
/// are random too, so a search for a prefix of it cannot match anything
/// but the key itself.
pub fn fresh_api_key() -> String {
    format!("{:032x}-agentkimi-e2e-key", rand::random::<u128>())
}

/// A path as the string a tool argument or environment variable carries.
pub fn path_string(path: &Path) -> String {
    path.to_str()
        .unwrap_or_else(|| panic!("test paths are UTF-8, not {}", path.display()))
        .to_owned()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    //! Self-tests of the client helper against a stand-in server: a shell
    //! script that speaks just enough MCP (one JSON-RPC message per line) to
    //! answer the handshake, `tools/list` and two tools, and that reports
    //! its own environment. This checks the harness, not agentkimi, and
    //! works before the real server exists.

    use super::*;
    use crate::support::mock_model::Reply;

    /// The stand-in server. Ids are cut out of each request with sed; the
    /// harness's requests are compact JSON with no other `"id":` key.
    const FAKE_SERVER: &str = r#"
echo "fake server $$ started" >&2
while IFS= read -r line; do
  id=$(printf '%s\n' "$line" | sed -n 's/^.*"id":\([0-9][0-9]*\).*$/\1/p')
  case "$line" in
    *'"method":"initialize"'*)
      printf '{"jsonrpc":"2.0","id":%s,"result":{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"fake","version":"0.0.0"}}}\n' "$id" ;;
    *'"method":"notifications/'*) ;;
    *'"method":"tools/list"'*)
      printf '{"jsonrpc":"2.0","id":%s,"result":{"tools":[{"name":"agentkimi_start","inputSchema":{"type":"object"},"outputSchema":{"type":"object"}},{"name":"agentkimi_send","inputSchema":{"type":"object"}}]}}\n' "$id" ;;
    *'"name":"agentkimi_start"'*)
      names=$(env | cut -d= -f1 | sort | tr '\n' ' ')
      prompt_ok=false
      case "$line" in *'"prompt":"say hi"'*) prompt_ok=true ;; esac
      printf '{"jsonrpc":"2.0","id":%s,"result":{"content":[{"type":"text","text":"started"}],"structuredContent":{"session_id":"kimi-fake","pid":%s,"prompt_ok":%s,"agentkimi_home":"%s","home":"%s","base_url":"%s","key":"%s","rust_log":"%s","deny":"%s","cwd":"%s","env_names":"%s"}}}\n' \
        "$id" "$$" "$prompt_ok" "$AGENTKIMI_HOME" "$HOME" "$AGENTKIMI_BASE_URL" "$KIMI_API_KEY" "$RUST_LOG" "${AGENTKIMI_DENY_PATHS:-}" "$(pwd)" "$names" ;;
    *'"name":"agentkimi_send"'*)
      printf '{"jsonrpc":"2.0","id":%s,"result":{"content":[{"type":"text","text":"unknown session kimi-nope"}],"isError":true}}\n' "$id" ;;
    *)
      if [ -n "$id" ]; then
        printf '{"jsonrpc":"2.0","id":%s,"error":{"code":-32601,"message":"fake server: unknown method"}}\n' "$id"
      fi ;;
  esac
done
"#;

    struct Fake {
        _dir: TempDir,
        script: PathBuf,
    }

    fn fake_server() -> Fake {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake-mcp-server.sh");
        fs::write(&script, FAKE_SERVER).unwrap();
        Fake { _dir: dir, script }
    }

    async fn spawn_fake(mock: &MockModel, fake: &Fake) -> McpClient {
        McpClient::builder(mock)
            .command(Path::new("/bin/sh"), &[&path_string(&fake.script)])
            .env("AGENTKIMI_DENY_PATHS", "/denied/one:/denied/two")
            .call_timeout(Duration::from_secs(20))
            .spawn()
            .await
    }

    fn is_alive(pid: u32) -> bool {
        let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
        rustix::process::test_kill_process(pid).is_ok()
    }

    #[tokio::test]
    async fn the_server_gets_a_clean_environment_and_results_are_parsed() {
        let mock = MockModel::start(|_| Reply::unexpected("the fake server never calls"));
        let fake = fake_server();
        let client = spawn_fake(&mock, &fake).await;

        let started = client.start("say hi", None).await;

        assert_eq!(started["session_id"], "kimi-fake");
        assert_eq!(
            started["prompt_ok"], true,
            "the arguments reached the server"
        );
        assert_eq!(started["agentkimi_home"], path_string(client.home()));
        assert_eq!(started["home"], path_string(client.user_home()));
        assert_eq!(started["cwd"], path_string(client.user_home()));
        assert_eq!(started["base_url"], mock.base_url());
        assert_eq!(started["key"], client.api_key());
        assert_eq!(started["rust_log"], "debug");
        assert_eq!(started["deny"], "/denied/one:/denied/two");
        assert!(
            !client.home().exists(),
            "AGENTKIMI_HOME is left for the server to create"
        );
        let names: Vec<&str> = started["env_names"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .collect();
        // The shell itself adds PWD (and may add SHLVL or _); nothing from
        // the test process's environment beyond PATH may be there.
        let allowed = [
            "AGENTKIMI_BASE_URL",
            "AGENTKIMI_DENY_PATHS",
            "AGENTKIMI_HOME",
            "HOME",
            "KIMI_API_KEY",
            "PATH",
            "RUST_LOG",
            "PWD",
            "OLDPWD",
            "SHLVL",
            "_",
        ];
        for name in &names {
            assert!(
                allowed.contains(name),
                "{name} leaked into the server's environment"
            );
        }
        assert!(names.contains(&"KIMI_API_KEY"));

        let tools = client.list_tools().await;
        let tool_names: Vec<&str> = tools.iter().map(|tool| tool.name.as_ref()).collect();
        assert_eq!(tool_names, ["agentkimi_start", "agentkimi_send"]);
        assert!(tools[0].output_schema.is_some());

        let error = client
            .call(
                "agentkimi_send",
                json!({"session_id": "kimi-nope", "message": "x"}),
            )
            .await;
        assert_eq!(
            expect_error(&error, "send to an unknown session"),
            "unknown session kimi-nope"
        );

        assert!(client.server_log().contains("=== spawn 1 ===\nfake server"));
        client.shutdown().await;
    }

    #[tokio::test]
    async fn restart_kills_the_process_and_starts_another_on_the_same_state() {
        let mock = MockModel::start(|_| Reply::unexpected("the fake server never calls"));
        let fake = fake_server();
        let mut client = spawn_fake(&mock, &fake).await;
        let first = client.start("say hi", None).await;
        let first_pid = client.pid().unwrap();
        assert_eq!(first["pid"], first_pid);

        client.restart().await;

        assert!(!is_alive(first_pid), "the old server is gone");
        let second = client.start("say hi", None).await;
        let second_pid = client.pid().unwrap();
        assert_ne!(second_pid, first_pid);
        assert_eq!(second["pid"], second_pid);
        assert_eq!(second["agentkimi_home"], first["agentkimi_home"]);
        assert_eq!(second["key"], first["key"]);
        let log = client.server_log();
        assert!(log.contains("=== spawn 1 ==="), "{log}");
        assert!(log.contains("=== spawn 2 ==="), "{log}");
        assert_eq!(log.matches("fake server").count(), 2, "{log}");

        client.shutdown().await;
        assert!(!is_alive(second_pid), "shutdown ends the server");
    }

    #[tokio::test]
    async fn each_client_has_its_own_secret_and_directories() {
        let mock = MockModel::start(|_| Reply::unexpected("the fake server never calls"));
        let fake = fake_server();

        let one = spawn_fake(&mock, &fake).await;
        let two = spawn_fake(&mock, &fake).await;

        assert_ne!(one.api_key(), two.api_key());
        assert_ne!(one.home(), two.home());
        assert!(one.api_key().len() >= 32);
        one.shutdown().await;
        two.shutdown().await;
    }
}
