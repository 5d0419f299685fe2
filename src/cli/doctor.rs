//! `agentkimi doctor`: checks that this machine can run agentkimi, with a
//! fix for each failure.

use agentkimi::config::Config;

use super::runtime;

/// Runs the checks and prints one line per check.
///
/// # Errors
///
/// When a check failed (after all of them ran), or the settings are bad.
pub fn doctor() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    runtime()?.block_on(async move {
        let mut failed = 0;
        let mut check = |name: &str, r: Result<String, String>| match r {
            Ok(detail) => println!("pass  {name}: {detail}"),
            Err(fix) => {
                failed += 1;
                println!("FAIL  {name}: {fix}");
            }
        };
        check(
            "API key",
            config
                .api_key_source
                .clone()
                .map(|s| format!("from {s}"))
                .ok_or_else(|| "no key: set KIMI_API_KEY or AGENTKIMI_ENV_FILE".to_string()),
        );
        let sandbox = agentkimi::sandbox::Profile::prepare(&config).await;
        check(
            "sandbox",
            sandbox
                .map(|_| "bwrap starts a sandbox with user, PID and network namespaces".into())
                .map_err(|e| e.to_string()),
        );
        toolchains(&config);
        println!("state directory: {}", config.home.display());
        if failed > 0 {
            anyhow::bail!("{failed} check(s) failed");
        }
        Ok(())
    })
}

/// Reports the toolchain mounts in force and suggests the `ro_paths` line
/// for the usual toolchain trees found on this machine.
fn toolchains(config: &Config) {
    use agentkimi::sandbox::mounts::{Mounts, detect_presets};
    // The doctor is the one place that looks at the user's home: it is where
    // toolchain installers put their trees.
    let user_home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    if let Ok(m) = Mounts::new(&config.ro_paths, &config.home)
        && !config.ro_paths.is_empty()
    {
        let masks = m.masks();
        println!(
            "toolchains: {} mounted read-only; {} credential file(s) or folder(s) inside are \
             hidden",
            config
                .ro_paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            masks.len()
        );
    }
    let presets = detect_presets(user_home.as_deref());
    let missing: Vec<_> = presets
        .iter()
        .filter(|p| !config.ro_paths.iter().any(|r| p.path.starts_with(r)))
        .collect();
    if missing.is_empty() {
        if config.ro_paths.is_empty() {
            println!("toolchains: none found in the home directory; the sandbox uses /usr");
        }
        return;
    }
    for p in &missing {
        println!("toolchains: found {} at {}", p.name, p.path.display());
    }
    let mut all: Vec<String> = config
        .ro_paths
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    all.extend(missing.iter().map(|p| p.path.display().to_string()));
    let quoted: Vec<String> = all.iter().map(|p| format!("{p:?}")).collect();
    println!(
        "toolchains: to build with them inside the sandbox, put this line in {}:\n    \
         ro_paths = [{}]\n  (or export AGENTKIMI_RO_PATHS={})",
        config.home.join("config.toml").display(),
        quoted.join(", "),
        all.join(":")
    );
}
