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
                .as_ref()
                .map(|_| "bwrap starts a sandbox with user, PID and network namespaces".into())
                .map_err(|e| e.to_string()),
        );
        if let Ok(profile) = &sandbox {
            doctor_layers(profile, &mut check).await;
        }
        toolchains(&config);
        println!("state directory: {}", config.home.display());
        if failed > 0 {
            anyhow::bail!("{failed} check(s) failed");
        }
        Ok(())
    })
}

/// The sandbox's layers, each checked on this machine: bwrap's version, the
/// process limit, and what a probe sees from inside a sandbox.
async fn doctor_layers(
    profile: &agentkimi::sandbox::Profile,
    check: &mut impl FnMut(&str, Result<String, String>),
) {
    use agentkimi::sandbox::limits::ProcessLimit;

    let version = std::process::Command::new(profile.bwrap())
        .arg("--version")
        .output();
    check(
        "bwrap version",
        match version {
            Ok(out) if out.status.success() => {
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
            }
            _ => Err(format!(
                "{} --version failed; reinstall bubblewrap",
                profile.bwrap().display()
            )),
        },
    );

    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    check(
        "process limit",
        match profile.process_limit() {
            ProcessLimit::Cgroup { parent, v2 } => Ok(format!(
                "a pids cgroup per sandbox under {} (cgroup {})",
                parent.display(),
                if *v2 { "v2" } else { "v1" }
            )),
            ProcessLimit::Rlimit(why) if !root => Ok(format!(
                "RLIMIT_NPROC (no pids cgroup: {why}); it holds because the server is not root"
            )),
            ProcessLimit::Rlimit(why) => Err(format!(
                "no pids cgroup ({why}) and the server runs as root, for which the kernel \
                 ignores RLIMIT_NPROC: a fork bomb inside a sandbox is not capped. Fix: run \
                 the server as an ordinary user, or make /sys/fs/cgroup writable with the pids \
                 controller available"
            )),
        },
    );

    match profile.check_layers().await {
        Ok(layers) => {
            for (name, result) in layers {
                check(&name, result);
            }
        }
        Err(e) => check(
            "layers",
            Err(format!("the in-sandbox probe did not run: {e}")),
        ),
    }
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
