//! Settings: where they come from and what they default to.
//!
//! Every setting has an environment variable (the names are a contract with
//! users of the original, see the README's table). Reading happens once, at
//! start-up, into a [`Config`] that the rest of the host borrows; nothing else
//! reads the environment. The API key is the exception that proves the rule:
//! it may also come from `AGENTKIMI_ENV_FILE`, of which only the two key lines
//! are read — the file is never sourced, so unrelated secrets in it never
//! enter this process.
//!
//! The same settings may also sit in `$AGENTKIMI_HOME/config.toml`, keyed by
//! the variable's name in lower case without the `AGENTKIMI_` prefix
//! (`max_steps = 40`). The environment wins over the file, so a one-off
//! `AGENTKIMI_MODEL=… agentkimi run` needs no edit. Every value remembers its
//! [`Origin`], so `agentkimi config` can say where it came from and an error
//! can point at the file line to fix. The key itself is refused in the file:
//! a config file gets copied, pasted and committed far more often than an
//! env file.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// Default provider endpoint: Moonshot's Anthropic-compatible API.
pub const DEFAULT_BASE_URL: &str = "https://api.moonshot.ai/anthropic";
/// Default base URL when `AGENTKIMI_PROTOCOL=openai`: Moonshot's
/// OpenAI-compatible API (`/chat/completions` is appended).
pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.moonshot.ai/v1";
/// Default model name.
pub const DEFAULT_MODEL: &str = "kimi-k2.7-code";
/// Default wall-clock limit of one turn (11 minutes, as the original).
pub const DEFAULT_TURN_TIMEOUT_MS: u64 = 660_000;
/// Default number of model calls in one turn.
pub const DEFAULT_MAX_STEPS: u32 = 30;

/// The API key. Its `Debug` and `Display` never show the value, so a stray
/// `{:?}` in a log line cannot leak it.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// The key itself, for the one place that needs it: the request header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

/// Wire protocol of the model provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Anthropic Messages API (`/v1/messages`), Moonshot's default endpoint.
    Anthropic,
    /// OpenAI chat completions (`/chat/completions`).
    OpenAi,
}

/// Whether the sandbox may reach the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// An empty network namespace: only loopback, which nothing listens on.
    Off,
    /// The host's network is shared with the sandbox.
    On,
    /// An empty network namespace whose only way out is the host-side
    /// egress proxy, which lets through the host names in
    /// [`Config::allowed_domains`] (see `sandbox::proxy`).
    Allowlist,
}

/// Host names the egress proxy lets through by default: the package
/// registries of Rust, npm, Python and Go.
pub const DEFAULT_ALLOWED_DOMAINS: &[&str] = &[
    "crates.io",
    "static.crates.io",
    "index.crates.io",
    "registry.npmjs.org",
    "pypi.org",
    "files.pythonhosted.org",
    "proxy.golang.org",
    "sum.golang.org",
];

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The named environment variable.
    Env(String),
    /// A line of the config file.
    File {
        /// The config file.
        path: PathBuf,
        /// Its line, from 1.
        line: usize,
    },
    /// Nothing set it; the built-in default applies.
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Env(name) => write!(f, "env {name}"),
            Origin::File { path, line } => write!(f, "{} line {line}", path.display()),
            Origin::Default => f.write_str("default"),
        }
    }
}

/// Settings the config file may hold: the key in the file, the variable
/// that overrides it, and what the file must give.
const FILE_KEYS: &[(&str, &str, FileKind)] = &[
    ("base_url", "AGENTKIMI_BASE_URL", FileKind::Text),
    ("model", "AGENTKIMI_MODEL", FileKind::Text),
    ("protocol", "AGENTKIMI_PROTOCOL", FileKind::Text),
    ("network", "AGENTKIMI_NETWORK", FileKind::Text),
    ("deny_paths", "AGENTKIMI_DENY_PATHS", FileKind::Paths),
    ("ro_paths", "AGENTKIMI_RO_PATHS", FileKind::Paths),
    (
        "allowed_domains",
        "AGENTKIMI_ALLOWED_DOMAINS",
        FileKind::Names,
    ),
    ("allow_filters", "AGENTKIMI_ALLOW_FILTERS", FileKind::Bool),
    (
        "turn_timeout_ms",
        "AGENTKIMI_TURN_TIMEOUT_MS",
        FileKind::Number,
    ),
    ("max_steps", "AGENTKIMI_MAX_STEPS", FileKind::Number),
    ("max_tokens", "AGENTKIMI_MAX_TOKENS", FileKind::Number),
    (
        "context_tokens",
        "AGENTKIMI_CONTEXT_TOKENS",
        FileKind::Number,
    ),
    ("env_file", "AGENTKIMI_ENV_FILE", FileKind::Text),
];

#[derive(Clone, Copy)]
enum FileKind {
    Text,
    Paths,
    Names,
    Bool,
    Number,
}

impl FileKind {
    fn example(self, key: &str) -> String {
        match self {
            FileKind::Text => format!("{key} = \"text\""),
            FileKind::Paths => format!("{key} = [\"/path/one\", \"/path/two\"]"),
            FileKind::Names => format!("{key} = [\"crates.io\", \"*.example.org\"]"),
            FileKind::Bool => format!("{key} = true"),
            FileKind::Number => format!("{key} = 30"),
        }
    }
}

/// The config file's settings, as the strings the matching environment
/// variables would hold, by variable name.
type FileValues = HashMap<&'static str, (String, Origin)>;

/// Reads `path` if it exists. Unknown keys, wrong types and the API key are
/// errors naming the line, because a setting silently ignored is a setting
/// the user believes is in force.
fn read_config_file(path: &Path) -> Result<FileValues> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => bail!(
            "cannot read {}: {e}; fix its permissions or remove it",
            path.display()
        ),
    };
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let table: BTreeMap<String, toml::Spanned<toml::Value>> =
        toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!(" line {}", line_of(s.start)))
                .unwrap_or_default();
            anyhow::anyhow!(
                "{}{at} is not valid TOML: {}; fix the line or remove the file",
                path.display(),
                e.message()
            )
        })?;

    let mut out = HashMap::new();
    for (key, value) in table {
        let line = line_of(value.span().start);
        let here = format!("{} line {line}", path.display());
        if matches!(
            key.as_str(),
            "api_key" | "kimi_api_key" | "moonshot_api_key" | "key"
        ) {
            bail!(
                "{here}: `{key}` is refused: the API key never goes in config.toml. Put \
                 KIMI_API_KEY=<key> in a file only you can read and set env_file = \"/path/to/it\" \
                 (or export KIMI_API_KEY)"
            );
        }
        let Some(&(_, var, kind)) = FILE_KEYS.iter().find(|(k, _, _)| *k == key) else {
            let known: Vec<&str> = FILE_KEYS.iter().map(|(k, _, _)| *k).collect();
            bail!(
                "{here}: unknown setting `{key}`; the known settings are {}",
                known.join(", ")
            );
        };
        let wrong = || {
            anyhow::anyhow!(
                "{here}: `{key}` has the wrong type; write it as {}",
                kind.example(&key)
            )
        };
        let v = value.get_ref();
        let string = match kind {
            FileKind::Text => {
                let t = v.as_str().ok_or_else(wrong)?;
                if key == "env_file" {
                    // A relative env file is relative to the config file,
                    // not to wherever the command happens to run.
                    let dir = path.parent().unwrap_or(Path::new("/"));
                    dir.join(t).display().to_string()
                } else {
                    t.to_string()
                }
            }
            FileKind::Number => v
                .as_integer()
                .filter(|n| *n >= 0)
                .ok_or_else(wrong)?
                .to_string(),
            FileKind::Bool => if v.as_bool().ok_or_else(wrong)? {
                "1"
            } else {
                "0"
            }
            .to_string(),
            FileKind::Paths => {
                let items = v.as_array().ok_or_else(wrong)?;
                let mut paths = Vec::new();
                for item in items {
                    let p = item.as_str().ok_or_else(wrong)?;
                    if p.contains(':') {
                        bail!("{here}: `{key}` entry {p:?} contains ':', which no path here may");
                    }
                    paths.push(p.to_string());
                }
                paths.join(":")
            }
            FileKind::Names => {
                let items = v.as_array().ok_or_else(wrong)?;
                let mut names = Vec::new();
                for item in items {
                    names.push(item.as_str().ok_or_else(wrong)?.to_string());
                }
                names.join(",")
            }
        };
        out.insert(
            var,
            (
                string,
                Origin::File {
                    path: path.to_path_buf(),
                    line,
                },
            ),
        );
    }
    Ok(out)
}

/// The effective settings of this process.
#[derive(Debug, Clone)]
pub struct Config {
    /// State directory (`AGENTKIMI_HOME`).
    pub home: PathBuf,
    /// Provider key; `None` lets the server start and list its tools, but
    /// every turn then fails with advice on how to set it.
    pub api_key: Option<ApiKey>,
    /// Where the key came from, for `agentkimi config` and error messages.
    pub api_key_source: Option<String>,
    /// Provider base URL without the `/v1/messages` suffix.
    pub base_url: String,
    /// Model name sent to the provider.
    pub model: String,
    /// Provider wire protocol.
    pub protocol: Protocol,
    /// Sandbox network policy.
    pub network: Network,
    /// Paths never accepted as a `workdir`, canonicalised where they exist.
    pub deny_paths: Vec<PathBuf>,
    /// Host paths mounted read-only at the same path inside every sandbox
    /// (`AGENTKIMI_RO_PATHS`): the user's toolchains.
    pub ro_paths: Vec<PathBuf>,
    /// Host names the egress proxy lets through in `allowlist` mode
    /// (`AGENTKIMI_ALLOWED_DOMAINS`): exact names and `*.suffix` patterns,
    /// lower case.
    pub allowed_domains: Vec<String>,
    /// Test-only resolver overrides for the egress proxy
    /// (`AGENTKIMI_TEST_PROXY_RESOLVE=host:ip:port,...`): the suite points
    /// an allowed name at a loopback server without any DNS.
    pub proxy_resolve: Vec<(String, std::net::SocketAddr)>,
    /// Whether repositories with git filter drivers may get a linked worktree.
    pub allow_filters: bool,
    /// Wall-clock limit of one turn.
    pub turn_timeout: Duration,
    /// Model calls allowed in one turn.
    pub max_steps: u32,
    /// Largest number of output tokens requested per model call.
    pub max_tokens: u32,
    /// The model's context window in tokens (`AGENTKIMI_CONTEXT_TOKENS`).
    pub context_tokens: usize,
    /// First retry delay of a failed model request; later ones double
    /// (`AGENTKIMI_RETRY_BASE_MS`, default 1000; tests shorten it).
    pub retry_base: Duration,
    /// Whether the host-side gate checks tool calls. Only the test suite
    /// turns it off (`AGENTKIMI_UNSAFE_DISABLE_GATE_FOR_TESTS=1`), to prove
    /// that the sandbox holds without it.
    pub gate: bool,
    /// Where each setting came from, by its config-file key (`model`,
    /// `max_steps`, ...), for `agentkimi config`.
    pub origins: BTreeMap<&'static str, Origin>,
    /// The file the key may be read from (`AGENTKIMI_ENV_FILE`).
    pub env_file: Option<PathBuf>,
    /// The config file that was read, if it exists.
    pub config_file: Option<PathBuf>,
    /// Resource limits of every sandbox.
    pub limits: Limits,
}

/// Resource limits applied to every sandbox. Each is a setting so that a
/// project with big artefacts can raise it; none can be switched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest file a sandboxed process may write (`AGENTKIMI_MAX_FILE_MB`,
    /// RLIMIT_FSIZE).
    pub max_file_mb: u64,
    /// Disk use of the worktree past which the turn ends
    /// (`AGENTKIMI_MAX_WORKTREE_MB`).
    pub max_worktree_mb: u64,
    /// Size of the sandbox's private `/tmp`, which holds its HOME
    /// (`AGENTKIMI_MAX_TMP_MB`); it lives in memory.
    pub max_tmp_mb: u64,
    /// Processes and threads alive at once in one sandbox
    /// (`AGENTKIMI_MAX_PROCS`).
    pub max_procs: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_file_mb: 1024,
            max_worktree_mb: 10240,
            max_tmp_mb: 1024,
            max_procs: 1024,
        }
    }
}

impl Config {
    /// Reads the settings from the process environment.
    ///
    /// # Errors
    ///
    /// A malformed value (a timeout that is not a number, an unknown
    /// protocol, an unreadable env file) is an error naming the variable and
    /// what it accepts; a silently ignored typo would be worse.
    pub fn from_env() -> Result<Config> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup`, so tests need not touch the
    /// process environment.
    ///
    /// # Errors
    ///
    /// As [`Config::from_env`].
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let env = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };

        let home = match env("AGENTKIMI_HOME") {
            Some(h) => PathBuf::from(h),
            None => match env("HOME") {
                Some(h) => Path::new(&h).join(".agentkimi"),
                None => bail!(
                    "neither AGENTKIMI_HOME nor HOME is set; set AGENTKIMI_HOME to a state \
                     directory"
                ),
            },
        };
        let home = absolute(&home)?;
        let config_path = home.join("config.toml");
        let file = read_config_file(&config_path)?;

        // The environment first, then the file: each value with its origin.
        let lookup_origin = |name: &str| -> Option<(String, Origin)> {
            env(name)
                .map(|v| (v, Origin::Env(name.to_string())))
                .or_else(|| file.get(name).cloned())
        };
        let get = |name: &str| lookup_origin(name).map(|(v, _)| v);
        // How to name a setting in an error: the variable, or the file line.
        let label = |name: &str| match lookup_origin(name) {
            Some((v, Origin::File { path, line })) => {
                format!("{v:?} at {} line {line}", path.display())
            }
            Some((v, _)) => format!("{name}={v}"),
            None => name.to_string(),
        };

        let (api_key, api_key_source) = match (env("KIMI_API_KEY"), env("MOONSHOT_API_KEY")) {
            (Some(k), _) => (Some(ApiKey(k)), Some("KIMI_API_KEY".to_string())),
            (None, Some(k)) => (Some(ApiKey(k)), Some("MOONSHOT_API_KEY".to_string())),
            (None, None) => match get("AGENTKIMI_ENV_FILE") {
                Some(file) => match read_key_from_env_file(Path::new(&file))? {
                    Some((name, k)) => (Some(ApiKey(k)), Some(format!("{name} in {file}"))),
                    None => (None, None),
                },
                None => (None, None),
            },
        };

        let protocol = match get("AGENTKIMI_PROTOCOL").as_deref() {
            None | Some("anthropic") => Protocol::Anthropic,
            Some("openai") => Protocol::OpenAi,
            Some(_) => bail!(
                "{} is not a known protocol; use `anthropic` or `openai`",
                label("AGENTKIMI_PROTOCOL")
            ),
        };

        let mut network = match get("AGENTKIMI_NETWORK").as_deref() {
            None | Some("off") => Network::Off,
            Some("on") => Network::On,
            Some("allowlist") => Network::Allowlist,
            Some(_) => bail!(
                "{} is not a known network policy; use `off`, `allowlist` or `on`",
                label("AGENTKIMI_NETWORK")
            ),
        };
        let no_net = env("AGENTKIMI_NO_NET").is_some_and(|v| v != "0");
        if no_net {
            network = Network::Off;
        }

        let deny_paths = get("AGENTKIMI_DENY_PATHS")
            .map(|v| {
                v.split(':')
                    .filter(|p| !p.is_empty())
                    .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p)))
                    .collect()
            })
            .unwrap_or_default();

        let ro_paths = get("AGENTKIMI_RO_PATHS")
            .map(|v| {
                v.split(':')
                    .filter(|p| !p.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        let allowed_domains = match get("AGENTKIMI_ALLOWED_DOMAINS") {
            Some(v) => {
                let mut names = Vec::new();
                for name in v.split([',', ' ']).filter(|n| !n.is_empty()) {
                    let name = name.to_ascii_lowercase();
                    if !valid_domain_pattern(&name) {
                        bail!(
                            "{} holds {name:?}, which is not a host name or `*.suffix` \
                             pattern; list names such as crates.io or *.example.org, \
                             separated by commas",
                            label("AGENTKIMI_ALLOWED_DOMAINS")
                        );
                    }
                    names.push(name);
                }
                names
            }
            None => DEFAULT_ALLOWED_DOMAINS
                .iter()
                .map(|d| d.to_string())
                .collect(),
        };
        let proxy_resolve = match env("AGENTKIMI_TEST_PROXY_RESOLVE") {
            Some(v) => parse_resolve_overrides(&v)?,
            None => Vec::new(),
        };

        let number = |name: &str, default: u64| -> Result<u64> {
            match get(name) {
                None => Ok(default),
                Some(v) => v.parse::<u64>().map_err(|_| {
                    anyhow::anyhow!(
                        "{} is not a whole number; give a number of {} or unset it to use \
                         {default}",
                        label(name),
                        match name.rsplit('_').next() {
                            Some("MS") => "milliseconds",
                            Some("MB") => "megabytes",
                            Some("PROCS") => "processes",
                            _ => "steps or tokens",
                        }
                    )
                }),
            }
        };
        let turn_timeout_ms = number("AGENTKIMI_TURN_TIMEOUT_MS", DEFAULT_TURN_TIMEOUT_MS)?;
        let max_steps = number("AGENTKIMI_MAX_STEPS", u64::from(DEFAULT_MAX_STEPS))?;
        let max_tokens = number("AGENTKIMI_MAX_TOKENS", 32_000)?;
        let context_tokens = number("AGENTKIMI_CONTEXT_TOKENS", 256_000)?;
        let retry_base_ms = number("AGENTKIMI_RETRY_BASE_MS", 1000)?;
        let d = Limits::default();
        let limits = Limits {
            max_file_mb: number("AGENTKIMI_MAX_FILE_MB", d.max_file_mb)?,
            max_worktree_mb: number("AGENTKIMI_MAX_WORKTREE_MB", d.max_worktree_mb)?,
            max_tmp_mb: number("AGENTKIMI_MAX_TMP_MB", d.max_tmp_mb)?,
            max_procs: number("AGENTKIMI_MAX_PROCS", d.max_procs)?,
        };
        if limits.max_file_mb == 0
            || limits.max_worktree_mb == 0
            || limits.max_tmp_mb == 0
            || limits.max_procs < 16
        {
            bail!(
                "AGENTKIMI_MAX_FILE_MB, AGENTKIMI_MAX_WORKTREE_MB and AGENTKIMI_MAX_TMP_MB must be \
                 greater than 0, and AGENTKIMI_MAX_PROCS at least 16; unset them for the defaults"
            );
        }
        if max_steps == 0 || turn_timeout_ms == 0 {
            bail!("AGENTKIMI_MAX_STEPS and AGENTKIMI_TURN_TIMEOUT_MS must be greater than 0");
        }

        let default_base_url = match protocol {
            Protocol::Anthropic => DEFAULT_BASE_URL,
            Protocol::OpenAi => DEFAULT_OPENAI_BASE_URL,
        };
        let mut origins = BTreeMap::new();
        for (key, var, _) in FILE_KEYS {
            let origin = lookup_origin(var).map_or(Origin::Default, |(_, o)| o);
            origins.insert(*key, origin);
        }
        if no_net {
            origins.insert("network", Origin::Env("AGENTKIMI_NO_NET".into()));
        }

        Ok(Config {
            home,
            api_key,
            api_key_source,
            base_url: get("AGENTKIMI_BASE_URL")
                .unwrap_or_else(|| default_base_url.to_string())
                .trim_end_matches('/')
                .to_string(),
            model: get("AGENTKIMI_MODEL").unwrap_or_else(|| DEFAULT_MODEL.to_string()),
            protocol,
            network,
            deny_paths,
            ro_paths,
            allowed_domains,
            proxy_resolve,
            allow_filters: get("AGENTKIMI_ALLOW_FILTERS").is_some_and(|v| v == "1"),
            turn_timeout: Duration::from_millis(turn_timeout_ms),
            max_steps: u32::try_from(max_steps).unwrap_or(u32::MAX),
            max_tokens: u32::try_from(max_tokens).unwrap_or(u32::MAX),
            context_tokens: usize::try_from(context_tokens).unwrap_or(usize::MAX),
            retry_base: Duration::from_millis(retry_base_ms),
            gate: env("AGENTKIMI_UNSAFE_DISABLE_GATE_FOR_TESTS").is_none_or(|v| v != "1"),
            origins,
            env_file: get("AGENTKIMI_ENV_FILE").map(PathBuf::from),
            config_file: (!file.is_empty() || config_path.exists()).then_some(config_path),
            limits,
        })
    }

    /// Path of the SQLite database.
    pub fn db_path(&self) -> PathBuf {
        self.home.join("agentkimi.db")
    }

    /// Directory holding one worktree per session.
    pub fn worktrees_dir(&self) -> PathBuf {
        self.home.join("worktrees")
    }

    /// Directory holding the git dirs of throwaway repositories.
    pub fn gitdirs_dir(&self) -> PathBuf {
        self.home.join("gitdirs")
    }

    /// Directory of log files.
    pub fn logs_dir(&self) -> PathBuf {
        self.home.join("logs")
    }

    /// Directory where whole diffs too large for a reply are saved.
    pub fn diffs_dir(&self) -> PathBuf {
        self.home.join("diffs")
    }

    /// Directory of files the host generates for the sandbox (its `/etc`).
    pub fn sandbox_dir(&self) -> PathBuf {
        self.home.join("sandbox")
    }
}

/// Whether `name` is a host name (`crates.io`) or a `*.suffix` pattern
/// (`*.example.org`): letters, digits, `-` and dots, no empty label.
fn valid_domain_pattern(name: &str) -> bool {
    let host = name.strip_prefix("*.").unwrap_or(name);
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Parses `host:ip:port` entries separated by commas.
fn parse_resolve_overrides(v: &str) -> Result<Vec<(String, std::net::SocketAddr)>> {
    let mut out = Vec::new();
    for entry in v.split(',').filter(|e| !e.is_empty()) {
        let parsed = entry
            .split_once(':')
            .and_then(|(host, addr)| Some((host, addr.parse::<std::net::SocketAddr>().ok()?)));
        let Some((host, addr)) = parsed else {
            bail!(
                "AGENTKIMI_TEST_PROXY_RESOLVE entry {entry:?} is not host:ip:port; write \
                 e.g. example.test:127.0.0.1:8080"
            );
        };
        out.push((host.to_ascii_lowercase(), addr));
    }
    Ok(out)
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("cannot read the current directory to resolve AGENTKIMI_HOME")?
        .join(path))
}

/// Reads `KIMI_API_KEY` or `MOONSHOT_API_KEY` (the first non-empty, in that
/// order) from an env file. Every other line is skipped unparsed.
fn read_key_from_env_file(path: &Path) -> Result<Option<(&'static str, String)>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read AGENTKIMI_ENV_FILE {}; create it with a line KIMI_API_KEY=<key> or \
             unset the variable",
            path.display()
        )
    })?;
    for name in ["KIMI_API_KEY", "MOONSHOT_API_KEY"] {
        for line in text.lines() {
            let line = line.trim();
            let line = line
                .strip_prefix("export ")
                .map(str::trim_start)
                .unwrap_or(line);
            let Some(value) = line
                .strip_prefix(name)
                .and_then(|rest| rest.strip_prefix('='))
            else {
                continue;
            };
            let value = value.trim();
            let value = strip_quotes(value);
            if !value.is_empty() {
                return Ok(Some((name, value.to_string())));
            }
        }
    }
    Ok(None)
}

fn strip_quotes(value: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = value.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return inner;
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults() {
        let c = config(&[("HOME", "/h")]).unwrap();
        assert_eq!(c.home, PathBuf::from("/h/.agentkimi"));
        assert_eq!(c.base_url, DEFAULT_BASE_URL);
        assert_eq!(c.model, DEFAULT_MODEL);
        assert_eq!(c.network, Network::Off);
        assert_eq!(c.max_steps, 30);
        assert_eq!(c.turn_timeout, Duration::from_millis(660_000));
        assert!(c.api_key.is_none());
    }

    #[test]
    fn first_non_empty_key_wins() {
        let c = config(&[
            ("HOME", "/h"),
            ("KIMI_API_KEY", ""),
            ("MOONSHOT_API_KEY", "m"),
        ])
        .unwrap();
        assert_eq!(c.api_key.unwrap().expose(), "m");
        let c = config(&[
            ("HOME", "/h"),
            ("KIMI_API_KEY", "k"),
            ("MOONSHOT_API_KEY", "m"),
        ])
        .unwrap();
        assert_eq!(c.api_key.unwrap().expose(), "k");
    }

    #[test]
    fn env_file_yields_only_the_key_lines() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".env");
        std::fs::write(
            &file,
            "OTHER_SECRET=nope\n# comment\nexport MOONSHOT_API_KEY=\"m-key\"\nKIMI_API_KEY=\n",
        )
        .unwrap();
        let c = config(&[
            ("HOME", "/h"),
            ("AGENTKIMI_ENV_FILE", file.to_str().unwrap()),
        ])
        .unwrap();
        assert_eq!(c.api_key.unwrap().expose(), "m-key");
        assert!(
            c.api_key_source
                .unwrap()
                .starts_with("MOONSHOT_API_KEY in ")
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = config(&[("HOME", "/h"), ("AGENTKIMI_MAX_STEPS", "many")]).unwrap_err();
        assert!(format!("{e:#}").contains("AGENTKIMI_MAX_STEPS"));
        let e = config(&[("HOME", "/h"), ("AGENTKIMI_NETWORK", "maybe")]).unwrap_err();
        assert!(format!("{e:#}").contains("AGENTKIMI_NETWORK"));
    }

    #[test]
    fn limits_have_defaults_and_refuse_zero() {
        let c = config(&[("AGENTKIMI_HOME", "/s")]).unwrap();
        assert_eq!(c.limits, Limits::default());
        let c = config(&[
            ("AGENTKIMI_HOME", "/s"),
            ("AGENTKIMI_MAX_WORKTREE_MB", "64"),
        ])
        .unwrap();
        assert_eq!(c.limits.max_worktree_mb, 64);
        for (var, bad) in [
            ("AGENTKIMI_MAX_FILE_MB", "0"),
            ("AGENTKIMI_MAX_PROCS", "3"),
            ("AGENTKIMI_MAX_TMP_MB", "lots"),
        ] {
            let e = config(&[("AGENTKIMI_HOME", "/s"), (var, bad)]).unwrap_err();
            assert!(format!("{e:#}").contains(var), "{e:#}");
        }
    }

    #[test]
    fn no_net_forces_off() {
        let c = config(&[
            ("HOME", "/h"),
            ("AGENTKIMI_NETWORK", "on"),
            ("AGENTKIMI_NO_NET", "1"),
        ])
        .unwrap();
        assert_eq!(c.network, Network::Off);
    }

    fn with_file(text: &str, vars: &[(&str, &str)]) -> (tempfile::TempDir, Result<Config>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), text).unwrap();
        let home = dir.path().to_str().unwrap().to_string();
        let mut all = vec![("AGENTKIMI_HOME", home.as_str())];
        all.extend_from_slice(vars);
        let c = config(&all);
        (dir, c)
    }

    #[test]
    fn config_file_applies_and_the_environment_wins() {
        let (dir, c) = with_file(
            "# settings\nmodel = \"from-file\"\nmax_steps = 7\ndeny_paths = [\"/a\", \"/b\"]\n\
             allow_filters = true\nprotocol = \"openai\"\n",
            &[("AGENTKIMI_MODEL", "from-env")],
        );
        let c = c.unwrap();
        assert_eq!(c.model, "from-env");
        assert_eq!(c.origins["model"], Origin::Env("AGENTKIMI_MODEL".into()));
        assert_eq!(c.max_steps, 7);
        assert_eq!(
            c.origins["max_steps"],
            Origin::File {
                path: dir.path().join("config.toml"),
                line: 3
            }
        );
        assert_eq!(c.deny_paths, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert!(c.allow_filters);
        assert_eq!(c.protocol, Protocol::OpenAi);
        assert_eq!(c.base_url, DEFAULT_OPENAI_BASE_URL);
        assert_eq!(c.origins["base_url"], Origin::Default);
    }

    #[test]
    fn config_file_errors_name_the_line_and_what_is_accepted() {
        let (_d, c) = with_file("model = \"m\"\n\nmax_stpes = 3\n", &[]);
        let e = format!("{:#}", c.unwrap_err());
        assert!(
            e.contains("line 3") && e.contains("unknown setting `max_stpes`"),
            "{e}"
        );
        assert!(e.contains("max_steps"), "{e}");

        let (_d, c) = with_file("max_steps = \"many\"\n", &[]);
        let e = format!("{:#}", c.unwrap_err());
        assert!(e.contains("line 1") && e.contains("max_steps = 30"), "{e}");

        let (_d, c) = with_file("\nnetwork = \"maybe\"\n", &[]);
        let e = format!("{:#}", c.unwrap_err());
        assert!(
            e.contains("line 2") && e.contains("`allowlist` or `on`"),
            "{e}"
        );

        let (_d, c) = with_file("model = \n", &[]);
        let e = format!("{:#}", c.unwrap_err());
        assert!(e.contains("line 1") && e.contains("not valid TOML"), "{e}");
    }

    #[test]
    fn config_file_refuses_the_key() {
        let (_d, c) = with_file("model = \"m\"\napi_key = \"sk-secret\"\n", &[]);
        let e = format!("{:#}", c.unwrap_err());
        assert!(e.contains("line 2") && e.contains("env_file"), "{e}");
        assert!(!e.contains("sk-secret"), "{e}");
    }

    #[test]
    fn config_file_env_file_is_relative_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key.env"), "KIMI_API_KEY=k-file\n").unwrap();
        std::fs::write(dir.path().join("config.toml"), "env_file = \"key.env\"\n").unwrap();
        let c = config(&[("AGENTKIMI_HOME", dir.path().to_str().unwrap())]).unwrap();
        assert_eq!(c.api_key.unwrap().expose(), "k-file");
    }

    #[test]
    fn toolchain_and_allowlist_settings() {
        let c = config(&[("HOME", "/h")]).unwrap();
        assert!(c.ro_paths.is_empty());
        assert!(c.allowed_domains.iter().any(|d| d == "index.crates.io"));
        let (_d, c) = with_file(
            "network = \"allowlist\"\nro_paths = [\"/opt/a\", \"/opt/b\"]\n\
             allowed_domains = [\"Example.org\", \"*.test.dev\"]\n",
            &[],
        );
        let c = c.unwrap();
        assert_eq!(c.network, Network::Allowlist);
        assert_eq!(
            c.ro_paths,
            vec![PathBuf::from("/opt/a"), PathBuf::from("/opt/b")]
        );
        assert_eq!(c.allowed_domains, vec!["example.org", "*.test.dev"]);
        let c = config(&[
            ("HOME", "/h"),
            ("AGENTKIMI_RO_PATHS", "/x:/y"),
            ("AGENTKIMI_ALLOWED_DOMAINS", "a.org,b.org"),
            ("AGENTKIMI_TEST_PROXY_RESOLVE", "a.org:127.0.0.1:9"),
        ])
        .unwrap();
        assert_eq!(c.ro_paths.len(), 2);
        assert_eq!(c.allowed_domains, vec!["a.org", "b.org"]);
        assert_eq!(c.proxy_resolve[0].0, "a.org");
        let e = config(&[
            ("HOME", "/h"),
            ("AGENTKIMI_ALLOWED_DOMAINS", "a.org,http://x"),
        ])
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("AGENTKIMI_ALLOWED_DOMAINS"),
            "{e:#}"
        );
    }

    #[test]
    fn key_debug_is_redacted() {
        let c = config(&[("HOME", "/h"), ("KIMI_API_KEY", "sk-secret")]).unwrap();
        assert!(!format!("{c:?}").contains("sk-secret"));
    }
}
