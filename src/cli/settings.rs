//! `agentkimi config`: the effective settings and where each came from.
//!
//! The key is never printed, not even in part: only whether it is set and
//! which variable or file it came from.

use agentkimi::config::{Config, Network, Origin, Protocol};

/// Prints one line per setting: name, value, origin.
///
/// # Errors
///
/// When the settings are bad (the error names the variable or file line).
pub fn print() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    match &config.config_file {
        Some(path) => println!("# config file: {} (read)", path.display()),
        None => println!(
            "# config file: {} (absent)",
            config.home.join("config.toml").display()
        ),
    }
    let origin = |key: &str| {
        config
            .origins
            .get(key)
            .cloned()
            .unwrap_or(Origin::Default)
            .to_string()
    };
    let home_origin = if std::env::var_os("AGENTKIMI_HOME").is_some_and(|v| !v.is_empty()) {
        "env AGENTKIMI_HOME"
    } else {
        "default ($HOME/.agentkimi)"
    };
    let key = match (&config.api_key, &config.api_key_source) {
        (Some(_), Some(src)) => (
            "set (redacted)".to_string(),
            if src.contains(" in ") {
                src.clone()
            } else {
                format!("env {src}")
            },
        ),
        _ => (
            "NOT SET".to_string(),
            "set KIMI_API_KEY, or env_file in config.toml".to_string(),
        ),
    };
    let deny = config
        .deny_paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let rows: Vec<(&str, String, String)> = vec![
        (
            "home",
            config.home.display().to_string(),
            home_origin.into(),
        ),
        ("api_key", key.0, key.1),
        ("base_url", config.base_url.clone(), origin("base_url")),
        ("model", config.model.clone(), origin("model")),
        (
            "protocol",
            match config.protocol {
                Protocol::Anthropic => "anthropic",
                Protocol::OpenAi => "openai",
            }
            .into(),
            origin("protocol"),
        ),
        (
            "network",
            match config.network {
                Network::Off => "off",
                Network::On => "on",
                Network::Allowlist => "allowlist",
            }
            .into(),
            origin("network"),
        ),
        ("deny_paths", deny, origin("deny_paths")),
        (
            "ro_paths",
            config
                .ro_paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
            origin("ro_paths"),
        ),
        (
            "allowed_domains",
            config.allowed_domains.join(","),
            origin("allowed_domains"),
        ),
        (
            "allow_filters",
            config.allow_filters.to_string(),
            origin("allow_filters"),
        ),
        (
            "turn_timeout_ms",
            config.turn_timeout.as_millis().to_string(),
            origin("turn_timeout_ms"),
        ),
        (
            "max_steps",
            config.max_steps.to_string(),
            origin("max_steps"),
        ),
        (
            "max_tokens",
            config.max_tokens.to_string(),
            origin("max_tokens"),
        ),
        (
            "env_file",
            config
                .env_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            origin("env_file"),
        ),
    ];
    for (name, value, from) in rows {
        println!("{name:<16} = {value:<44} # {from}");
    }
    Ok(())
}
