//! Settings: where they come from and what they default to.
//!
//! Every setting has an environment variable (the names are a contract with
//! users of the original, see the README's table). Reading happens once, at
//! start-up, into a [`Config`] that the rest of the host borrows; nothing else
//! reads the environment. The API key is the exception that proves the rule:
//! it may also come from `AGENTKIMI_ENV_FILE`, of which only the two key lines
//! are read — the file is never sourced, so unrelated secrets in it never
//! enter this process.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// Default provider endpoint: Moonshot's Anthropic-compatible API.
pub const DEFAULT_BASE_URL: &str = "https://api.moonshot.ai/anthropic";
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
    /// Whether repositories with git filter drivers may get a linked worktree.
    pub allow_filters: bool,
    /// Wall-clock limit of one turn.
    pub turn_timeout: Duration,
    /// Model calls allowed in one turn.
    pub max_steps: u32,
    /// Largest number of output tokens requested per model call.
    pub max_tokens: u32,
    /// Whether the host-side gate checks tool calls. Only the test suite
    /// turns it off (`AGENTKIMI_UNSAFE_DISABLE_GATE_FOR_TESTS=1`), to prove
    /// that the sandbox holds without it.
    pub gate: bool,
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
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };

        let home = match get("AGENTKIMI_HOME") {
            Some(h) => PathBuf::from(h),
            None => match get("HOME") {
                Some(h) => Path::new(&h).join(".agentkimi"),
                None => bail!(
                    "neither AGENTKIMI_HOME nor HOME is set; set AGENTKIMI_HOME to a state directory"
                ),
            },
        };
        let home = absolute(&home)?;

        let (api_key, api_key_source) = match (get("KIMI_API_KEY"), get("MOONSHOT_API_KEY")) {
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
            Some(other) => {
                bail!("AGENTKIMI_PROTOCOL={other} is not known; use `anthropic` or `openai`")
            }
        };

        let mut network = match get("AGENTKIMI_NETWORK").as_deref() {
            None | Some("off") => Network::Off,
            Some("on") => Network::On,
            Some(other) => bail!("AGENTKIMI_NETWORK={other} is not known; use `off` or `on`"),
        };
        if get("AGENTKIMI_NO_NET").is_some_and(|v| v != "0") {
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

        let turn_timeout_ms =
            parse_number(&get, "AGENTKIMI_TURN_TIMEOUT_MS", DEFAULT_TURN_TIMEOUT_MS)?;
        let max_steps = parse_number(&get, "AGENTKIMI_MAX_STEPS", u64::from(DEFAULT_MAX_STEPS))?;
        let max_tokens = parse_number(&get, "AGENTKIMI_MAX_TOKENS", 32_000)?;
        let d = Limits::default();
        let limits = Limits {
            max_file_mb: parse_number(&get, "AGENTKIMI_MAX_FILE_MB", d.max_file_mb)?,
            max_worktree_mb: parse_number(&get, "AGENTKIMI_MAX_WORKTREE_MB", d.max_worktree_mb)?,
            max_tmp_mb: parse_number(&get, "AGENTKIMI_MAX_TMP_MB", d.max_tmp_mb)?,
            max_procs: parse_number(&get, "AGENTKIMI_MAX_PROCS", d.max_procs)?,
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

        Ok(Config {
            home,
            api_key,
            api_key_source,
            base_url: get("AGENTKIMI_BASE_URL")
                .unwrap_or_else(|| DEFAULT_BASE_URL.to_string())
                .trim_end_matches('/')
                .to_string(),
            model: get("AGENTKIMI_MODEL").unwrap_or_else(|| DEFAULT_MODEL.to_string()),
            protocol,
            network,
            deny_paths,
            allow_filters: get("AGENTKIMI_ALLOW_FILTERS").is_some_and(|v| v == "1"),
            turn_timeout: Duration::from_millis(turn_timeout_ms),
            max_steps: u32::try_from(max_steps).unwrap_or(u32::MAX),
            max_tokens: u32::try_from(max_tokens).unwrap_or(u32::MAX),
            gate: get("AGENTKIMI_UNSAFE_DISABLE_GATE_FOR_TESTS").is_none_or(|v| v != "1"),
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

fn parse_number(get: &impl Fn(&str) -> Option<String>, name: &str, default: u64) -> Result<u64> {
    match get(name) {
        None => Ok(default),
        Some(v) => v.parse::<u64>().with_context(|| {
            format!("{name}={v} is not a whole number; unset it to use {default}")
        }),
    }
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
            "cannot read AGENTKIMI_ENV_FILE {}; create it with a line KIMI_API_KEY=<key> or unset the variable",
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

    #[test]
    fn key_debug_is_redacted() {
        let c = config(&[("HOME", "/h"), ("KIMI_API_KEY", "sk-secret")]).unwrap();
        assert!(!format!("{c:?}").contains("sk-secret"));
    }
}
