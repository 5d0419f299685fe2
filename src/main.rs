//! The `agentkimi` command: the MCP server, and the hidden executor that runs
//! inside the sandbox.

use std::{path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::{EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use agentkimi::{config::Config, mcp, session::Sessions};

/// Hand coding tasks to Kimi, sandboxed, over MCP.
#[derive(Parser)]
#[command(name = "agentkimi", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve MCP over stdio (what an MCP client runs).
    Serve,
    /// Check that this machine can run agentkimi, with a fix for each failure.
    Doctor,
    /// Run tool calls inside the sandbox (started by the server; not for people).
    #[command(hide = true)]
    SandboxExec {
        /// The worktree, which relative paths resolve against.
        #[arg(long)]
        root: PathBuf,
    },
    /// Report, from inside a sandbox, which layers are in force (started by
    /// `doctor`; not for people).
    #[command(hide = true)]
    SandboxProbe,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::SandboxExec { root } => agentkimi::executor::run(&root),
        Command::Serve => serve(),
        Command::Doctor => doctor(),
        Command::SandboxProbe => {
            agentkimi::sandbox::probe::run_inside();
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("agentkimi: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr and to `$AGENTKIMI_HOME/logs/agentkimi.log`, never to
/// stdout, which belongs to MCP. The returned guard flushes the file on exit.
fn init_logging(config: &Config) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let file = std::fs::create_dir_all(config.logs_dir())
        .ok()
        .map(|()| tracing_appender::rolling::never(config.logs_dir(), "agentkimi.log"));
    match file {
        Some(appender) => {
            let (writer, guard) = tracing_appender::non_blocking(appender);
            tracing_subscriber::registry()
                .with(
                    fmt::layer()
                        .with_writer(std::io::stderr)
                        .with_ansi(false)
                        .with_filter(filter()),
                )
                .with(
                    fmt::layer()
                        .with_writer(writer)
                        .with_ansi(false)
                        .with_filter(filter()),
                )
                .init();
            Some(guard)
        }
        None => {
            tracing_subscriber::registry()
                .with(
                    fmt::layer()
                        .with_writer(std::io::stderr)
                        .with_ansi(false)
                        .with_filter(filter()),
                )
                .init();
            None
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn serve() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let _guard = init_logging(&config);
    runtime()?.block_on(async move {
        let sessions = Arc::new(Sessions::open(config)?);
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            "agentkimi serving MCP on stdio"
        );
        use rmcp::ServiceExt;
        let service = mcp::Server::new(sessions)
            .serve(rmcp::transport::stdio())
            .await
            .context("MCP initialisation failed")?;
        service.waiting().await.context("MCP service failed")?;
        tracing::info!("client closed the connection; exiting");
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

fn doctor() -> anyhow::Result<()> {
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
        println!("state directory: {}", config.home.display());
        if failed > 0 {
            anyhow::bail!("{failed} check(s) failed");
        }
        Ok(())
    })
}
