//! The command line: the MCP server (`serve`, over stdio or HTTP), one turn
//! in the terminal (`run`), session housekeeping (`sessions`), client
//! registration (`mcp-config`), the effective settings (`config`), the
//! machine check (`doctor`), and the hidden executor that runs inside the
//! sandbox.
//!
//! `run` and `sessions` go through `session::Sessions`, the same code the
//! MCP tools use, so a turn started in the terminal behaves exactly like one
//! started by a client, and either can continue or end the other's session.

mod doctor;
mod mcp_config;
mod run;
mod serve;
mod sessions;
mod settings;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use tracing_subscriber::{EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use agentkimi::config::Config;

/// Hand coding tasks to Kimi, sandboxed, over MCP.
#[derive(Parser)]
#[command(name = "agentkimi", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve MCP over stdio (what an MCP client runs), or over HTTP.
    Serve {
        /// Serve streamable HTTP at this address (e.g. 127.0.0.1:8765)
        /// instead of stdio; the endpoint is `/mcp`.
        #[arg(long, value_name = "ADDR")]
        http: Option<SocketAddr>,
        /// Allow --http on an address other than loopback. Requires
        /// AGENTKIMI_HTTP_TOKEN, which every request must then present as
        /// `Authorization: Bearer <token>`.
        #[arg(long, requires = "http")]
        allow_remote: bool,
    },
    /// Run one turn in the terminal: progress on stderr, then the summary
    /// and the diff.
    Run {
        /// What Kimi should do.
        task: String,
        /// A directory inside a git repository to work on (in a new
        /// worktree on branch agentkimi/<id>); without it, Kimi works in an
        /// empty throwaway repository.
        #[arg(long, value_name = "DIR")]
        workdir: Option<PathBuf>,
        /// Print the turn result as JSON on stdout instead of text.
        #[arg(long)]
        json: bool,
    },
    /// List, inspect, diff, end and clean up sessions.
    Sessions {
        #[command(subcommand)]
        command: sessions::SessionsCommand,
    },
    /// Print how to register agentkimi with an MCP client.
    McpConfig {
        /// The client to register with.
        #[arg(long, value_enum)]
        client: mcp_config::Client,
    },
    /// Print the effective settings and where each came from (the key is
    /// never shown).
    Config,
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

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::SandboxExec { root } => {
            agentkimi::executor::run(&root).map(|()| ExitCode::SUCCESS)
        }
        Command::Serve { http, allow_remote } => {
            serve::serve(http, allow_remote).map(|()| ExitCode::SUCCESS)
        }
        Command::Run {
            task,
            workdir,
            json,
        } => run::run(&task, workdir, json),
        Command::Sessions { command } => sessions::sessions(command).map(|()| ExitCode::SUCCESS),
        Command::McpConfig { client } => mcp_config::print(client).map(|()| ExitCode::SUCCESS),
        Command::Config => settings::print().map(|()| ExitCode::SUCCESS),
        Command::Doctor => doctor::doctor().map(|()| ExitCode::SUCCESS),
        Command::SandboxProbe => {
            agentkimi::sandbox::probe::run_inside();
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("agentkimi: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where log lines go besides the log file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LogTo {
    /// stderr and the file (the server: stdout belongs to MCP).
    StderrAndFile,
    /// Only the file (the terminal commands: stderr shows progress, and log
    /// lines would tear the spinner).
    FileOnly,
}

/// Logs go to `$AGENTKIMI_HOME/logs/agentkimi.log` and, for the server, to
/// stderr; never to stdout. The returned guard flushes the file on exit.
fn init_logging(config: &Config, to: LogTo) -> Option<tracing_appender::non_blocking::WorkerGuard> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let file = std::fs::create_dir_all(config.logs_dir())
        .ok()
        .map(|()| tracing_appender::rolling::never(config.logs_dir(), "agentkimi.log"));
    let stderr = (to == LogTo::StderrAndFile).then(|| {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_filter(filter())
    });
    match file {
        Some(appender) => {
            let (writer, guard) = tracing_appender::non_blocking(appender);
            tracing_subscriber::registry()
                .with(stderr)
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
            tracing_subscriber::registry().with(stderr).init();
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

/// ANSI styling for terminal output, off when the stream is not a terminal
/// or `NO_COLOR` is set.
#[derive(Clone, Copy)]
struct Paint(bool);

impl Paint {
    fn for_stdout() -> Paint {
        use std::io::IsTerminal;
        Paint(std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none())
    }

    fn wrap(self, code: &str, text: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn bold(self, text: &str) -> String {
        self.wrap("1", text)
    }

    /// A unified diff with added lines green, removed red, hunks cyan and
    /// file headers bold.
    fn diff(self, diff: &str) -> String {
        if !self.0 {
            return diff.to_string();
        }
        let mut out = String::with_capacity(diff.len() + diff.len() / 8);
        for line in diff.split_inclusive('\n') {
            let (body, nl) = match line.strip_suffix('\n') {
                Some(b) => (b, "\n"),
                None => (line, ""),
            };
            let code = if body.starts_with("diff --git")
                || body.starts_with("+++")
                || body.starts_with("---")
            {
                "1"
            } else if body.starts_with('+') {
                "32"
            } else if body.starts_with('-') {
                "31"
            } else if body.starts_with("@@") {
                "36"
            } else {
                ""
            };
            if code.is_empty() {
                out.push_str(body);
            } else {
                out.push_str(&self.wrap(code, body));
            }
            out.push_str(nl);
        }
        out
    }
}
