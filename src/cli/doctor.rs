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
        println!("state directory: {}", config.home.display());
        if failed > 0 {
            anyhow::bail!("{failed} check(s) failed");
        }
        Ok(())
    })
}
