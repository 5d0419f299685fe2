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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::SandboxExec { root } => agentkimi::executor::run(&root),
        Command::Serve => serve(),
        Command::Doctor => doctor(),
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
        // Turns a previous server left running when it died: committed and
        // marked interrupted in the background, so start-up stays fast.
        let recovering = sessions.clone();
        tokio::spawn(async move {
            recovering.recover().await;
            match recovering.gc().await {
                Ok(report) => {
                    for line in &report.removed {
                        tracing::info!("housekeeping removed {line}");
                    }
                    for line in &report.failed {
                        tracing::warn!("housekeeping could not remove {line}");
                    }
                }
                Err(e) => tracing::warn!("housekeeping failed: {e}"),
            }
        });

        let (stdin, stdout) = rmcp::transport::stdio();
        let eof = tokio_util::sync::CancellationToken::new();
        let stdin = NoticeEof {
            inner: stdin,
            eof: eof.clone(),
        };
        let service = mcp::Server::new(sessions.clone())
            .serve((stdin, stdout))
            .await
            .context("MCP initialisation failed")?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot listen for SIGTERM")?;
        let cancel = service.cancellation_token();
        tokio::select! {
            r = service.waiting() => {
                if let Err(e) = r {
                    tracing::warn!("MCP service ended with an error: {e}");
                }
                tracing::info!("the MCP service ended; stopping");
            }
            // rmcp waits for running requests before it lets go of a closed
            // connection; a turn can run for minutes, so stop turns as soon
            // as the client is gone.
            _ = eof.cancelled() => {
                tracing::info!("client closed the connection; stopping");
                cancel.cancel();
            }
            _ = term.recv() => {
                tracing::info!("SIGTERM received; stopping");
                cancel.cancel();
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("interrupted; stopping");
                cancel.cancel();
            }
        }
        // Running turns are cancelled, and each commits its work and records
        // how it ended before the process exits.
        sessions.shutdown(std::time::Duration::from_secs(20)).await;
        Ok(())
    })
}

/// Standard input that tells when the client closed it.
struct NoticeEof<R> {
    inner: R,
    eof: tokio_util::sync::CancellationToken,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for NoticeEof<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = &poll
            && buf.filled().len() == before
            && buf.remaining() > 0
        {
            self.eof.cancel();
        }
        poll
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
