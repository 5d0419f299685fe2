//! `agentkimi mcp-config --client …`: how to register this binary with an
//! MCP client, ready to paste.
//!
//! stdout carries only the command or the configuration text, so it can be
//! piped or checked by a parser; where to put it goes to stderr. The
//! binary's absolute path is used, so the client finds it whatever its own
//! `PATH` is, and `AGENTKIMI_ENV_FILE` and `AGENTKIMI_HOME` are passed on
//! when set, so the client's server finds the same key and sessions as this
//! shell. The key itself is never printed.

use anyhow::Context;
use serde_json::{Map, Value, json};

use agentkimi::config::Config;

/// MCP clients agentkimi knows how to register with.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Client {
    /// Claude Code (`claude mcp add`).
    Claude,
    /// OpenAI Codex CLI (`~/.codex/config.toml`).
    Codex,
    /// Cursor (`~/.cursor/mcp.json`).
    Cursor,
    /// Visual Studio Code (`.vscode/mcp.json`).
    Vscode,
    /// Gemini CLI (`~/.gemini/settings.json`).
    Gemini,
}

/// Prints the registration for `client`.
///
/// # Errors
///
/// When the path of this binary cannot be found.
pub fn print(client: Client) -> anyhow::Result<()> {
    let exe = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .context("cannot find the path of this agentkimi binary")?;
    let env = passed_env();
    // Clients time tool calls out; a turn may run this long, plus a margin
    // for committing and diffing.
    let timeout_s = Config::from_env()
        .map(|c| c.turn_timeout.as_secs())
        .unwrap_or(agentkimi::config::DEFAULT_TURN_TIMEOUT_MS / 1000)
        + 60;
    let (text, hint) = render(client, &exe, &env, timeout_s);
    eprintln!("{hint}");
    println!("{text}");
    Ok(())
}

/// Variables the client must pass to the server it starts.
fn passed_env() -> Vec<(String, String)> {
    ["AGENTKIMI_ENV_FILE", "AGENTKIMI_HOME"]
        .iter()
        .filter_map(|name| {
            let v = std::env::var(name).ok()?;
            let v = v.trim();
            if v.is_empty() {
                return None;
            }
            // A relative path would resolve against the client's directory.
            let v = std::path::absolute(v)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| v.to_string());
            Some((name.to_string(), v))
        })
        .collect()
}

/// The text for stdout and the hint for stderr.
fn render(
    client: Client,
    exe: &std::path::Path,
    env: &[(String, String)],
    timeout_s: u64,
) -> (String, String) {
    let exe_s = exe.display().to_string();
    let env_obj: Map<String, Value> = env
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let with_env = |mut server: Value| {
        if !env_obj.is_empty() {
            server["env"] = Value::Object(env_obj.clone());
        }
        server
    };
    match client {
        Client::Claude => {
            // The name goes before `-e`, which takes several values and
            // would swallow it otherwise.
            let mut cmd = vec![
                "claude".to_string(),
                "mcp".into(),
                "add".into(),
                "agentkimi".into(),
                "--scope".into(),
                "user".into(),
            ];
            for (k, v) in env {
                cmd.push("-e".into());
                cmd.push(shell_quote(&format!("{k}={v}")));
            }
            cmd.push("--".into());
            cmd.push(shell_quote(&exe_s));
            cmd.push("serve".into());
            (
                cmd.join(" "),
                format!(
                    "# Run this command. Claude Code waits for a tool call up to MCP_TOOL_TIMEOUT \
                     ms; allow {timeout_s} s for a turn by starting it with \
                     MCP_TOOL_TIMEOUT={}.",
                    timeout_s * 1000
                ),
            )
        }
        Client::Codex => {
            let mut server = toml::Table::new();
            server.insert("command".into(), toml::Value::String(exe_s));
            server.insert(
                "args".into(),
                toml::Value::Array(vec![toml::Value::String("serve".into())]),
            );
            server.insert(
                "tool_timeout_sec".into(),
                toml::Value::Integer(i64::try_from(timeout_s).unwrap_or(i64::MAX)),
            );
            if !env.is_empty() {
                let t: toml::Table = env
                    .iter()
                    .map(|(k, v)| (k.clone(), toml::Value::String(v.clone())))
                    .collect();
                server.insert("env".into(), toml::Value::Table(t));
            }
            let mut servers = toml::Table::new();
            servers.insert("agentkimi".into(), toml::Value::Table(server));
            let mut root = toml::Table::new();
            root.insert("mcp_servers".into(), toml::Value::Table(servers));
            (
                toml::to_string(&root).unwrap_or_default(),
                "# Add this to ~/.codex/config.toml.".into(),
            )
        }
        Client::Cursor => {
            let v = json!({"mcpServers": {"agentkimi": with_env(json!({
                "command": exe_s, "args": ["serve"],
            }))}});
            (
                serde_json::to_string_pretty(&v).unwrap_or_default(),
                "# Merge this into ~/.cursor/mcp.json (or .cursor/mcp.json in a project).".into(),
            )
        }
        Client::Vscode => {
            let v = json!({"servers": {"agentkimi": with_env(json!({
                "type": "stdio", "command": exe_s, "args": ["serve"],
            }))}});
            (
                serde_json::to_string_pretty(&v).unwrap_or_default(),
                "# Merge this into .vscode/mcp.json in your workspace (or the user mcp.json)."
                    .into(),
            )
        }
        Client::Gemini => {
            let v = json!({"mcpServers": {"agentkimi": with_env(json!({
                "command": exe_s, "args": ["serve"], "timeout": timeout_s * 1000,
            }))}});
            (
                serde_json::to_string_pretty(&v).unwrap_or_default(),
                "# Merge this into ~/.gemini/settings.json.".into(),
            )
        }
    }
}

/// Quotes for a POSIX shell when needed.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:+,@%".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("/usr/bin/agentkimi"), "/usr/bin/agentkimi");
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
    }

    #[test]
    fn claude_command_keeps_the_name_before_env() {
        let (cmd, _) = render(
            Client::Claude,
            &PathBuf::from("/opt/agent kimi/agentkimi"),
            &[("AGENTKIMI_ENV_FILE".into(), "/k/.env".into())],
            720,
        );
        assert_eq!(
            cmd,
            "claude mcp add agentkimi --scope user -e AGENTKIMI_ENV_FILE=/k/.env -- \
             '/opt/agent kimi/agentkimi' serve"
        );
    }
}
