//! `agentkimi serve`: MCP over stdio, or streamable HTTP with `--http`.
//!
//! Over HTTP, anyone who can reach the port can make Kimi run commands in
//! sandboxes on this machine and read the results, so the default is
//! loopback only. Binding elsewhere takes both `--allow-remote` and a bearer
//! token (`AGENTKIMI_HTTP_TOKEN`); when a token is set it is checked on
//! every request, loopback or not. The token is compared in constant time
//! and never logged.

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context, bail};
use axum::{
    extract::{Request, State},
    http::StatusCode,
    middleware::Next,
    response::{IntoResponse, Response},
};
use rmcp::{
    ServiceExt,
    transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    },
};
use tokio_util::sync::CancellationToken;

use agentkimi::{config::Config, mcp, session::Sessions};

use super::{LogTo, init_logging, runtime};

/// Shortest bearer token accepted: long enough that guessing it over the
/// network is hopeless.
const MIN_TOKEN_LEN: usize = 16;

/// Serves MCP until the client (stdio) or a signal (HTTP) ends it.
///
/// # Errors
///
/// Bad settings, a refused bind, or a transport failure.
pub fn serve(http: Option<std::net::SocketAddr>, allow_remote: bool) -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let token = std::env::var("AGENTKIMI_HTTP_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty());
    if let Some(addr) = http {
        check_bind(addr, allow_remote, token.as_deref())?;
    }
    let _guard = init_logging(&config, LogTo::StderrAndFile);
    runtime()?.block_on(async move {
        let sessions = Arc::new(Sessions::open(config)?);
        // Turns a previous server left running when it died are committed
        // and marked interrupted, and leftovers are cleaned up, in the
        // background so start-up stays fast.
        let housekeeping = sessions.clone();
        tokio::spawn(async move {
            housekeeping.recover().await;
            match housekeeping.gc(false).await {
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
        let served = match http {
            None => serve_stdio(sessions.clone()).await,
            Some(addr) => serve_http(sessions.clone(), addr, token).await,
        };
        // Running turns are cancelled, and each commits its work and
        // records how it ended before the process exits.
        sessions.shutdown(std::time::Duration::from_secs(20)).await;
        served
    })
}

/// Resolves on SIGTERM or Ctrl-C: the ways a client or a person stops a
/// server other than closing its input.
async fn stop_signal() -> anyhow::Result<&'static str> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM received",
        _ = tokio::signal::ctrl_c() => "interrupted",
    })
}

/// Refuses an address beyond loopback unless the operator asked for it and
/// set a token, so a typo cannot expose the server.
fn check_bind(addr: SocketAddr, allow_remote: bool, token: Option<&str>) -> anyhow::Result<()> {
    if addr.ip().is_loopback() {
        if let Some(t) = token
            && t.len() < MIN_TOKEN_LEN
        {
            bail!(
                "AGENTKIMI_HTTP_TOKEN is shorter than {MIN_TOKEN_LEN} characters; use a random \
                 one, e.g. `openssl rand -hex 32`"
            );
        }
        return Ok(());
    }
    if !allow_remote {
        bail!(
            "{addr} is not a loopback address; anyone who can reach it could run Kimi on this \
             machine. Bind 127.0.0.1, or pass --allow-remote and set AGENTKIMI_HTTP_TOKEN"
        );
    }
    match token {
        None => bail!(
            "--allow-remote needs AGENTKIMI_HTTP_TOKEN: set it to a random secret (e.g. `openssl \
             rand -hex 32`) and give clients the header `Authorization: Bearer <token>`"
        ),
        Some(t) if t.len() < MIN_TOKEN_LEN => bail!(
            "AGENTKIMI_HTTP_TOKEN is shorter than {MIN_TOKEN_LEN} characters; use a random one, \
             e.g. `openssl rand -hex 32`"
        ),
        Some(_) => Ok(()),
    }
}

async fn serve_stdio(sessions: Arc<Sessions>) -> anyhow::Result<()> {
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        "agentkimi serving MCP on stdio"
    );
    let (stdin, stdout) = rmcp::transport::stdio();
    let eof = CancellationToken::new();
    let stdin = NoticeEof {
        inner: stdin,
        eof: eof.clone(),
    };
    let service = mcp::Server::new(sessions)
        .serve((stdin, stdout))
        .await
        .context("MCP initialisation failed")?;
    let cancel = service.cancellation_token();
    tokio::select! {
        r = service.waiting() => {
            if let Err(e) = r {
                tracing::warn!("MCP service ended with an error: {e}");
            }
            tracing::info!("the MCP service ended; stopping");
        }
        // rmcp waits for running requests before it lets go of a closed
        // connection; a turn can run for minutes, so stop turns as soon as
        // the client is gone.
        _ = eof.cancelled() => {
            tracing::info!("client closed the connection; stopping");
            cancel.cancel();
        }
        why = stop_signal() => {
            tracing::info!("{}; stopping", why?);
            cancel.cancel();
        }
    }
    Ok(())
}

/// Standard input that tells when the client closed it.
struct NoticeEof<R> {
    inner: R,
    eof: CancellationToken,
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

async fn serve_http(
    sessions: Arc<Sessions>,
    addr: SocketAddr,
    token: Option<String>,
) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let mut http_config = StreamableHttpServerConfig::default();
    http_config.cancellation_token = stop.child_token();
    if !addr.ip().is_loopback() {
        // The Host check defends loopback servers against DNS rebinding; a
        // remote server is reached under names we cannot know, and the
        // bearer token (required here, see `check_bind`) is what protects
        // it. A loopback server keeps the check even with --allow-remote.
        http_config = http_config.disable_allowed_hosts();
    }
    let service = StreamableHttpService::new(
        move || Ok(mcp::Server::new(sessions.clone())),
        Arc::new(LocalSessionManager::default()),
        http_config,
    );
    let router = axum::Router::new().nest_service("/mcp", service).layer(
        axum::middleware::from_fn_with_state(Arc::new(token), check_token),
    );

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}; pick a free port"))?;
    let local = listener.local_addr()?;
    // People and test harnesses read this line to find the port.
    eprintln!("agentkimi: serving MCP at http://{local}/mcp");
    tracing::info!(%local, "agentkimi serving MCP over streamable HTTP");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            match stop_signal().await {
                Ok(why) => tracing::info!("{why}; stopping the HTTP server"),
                Err(e) => tracing::warn!("{e:#}; stopping the HTTP server"),
            }
            stop.cancel();
        })
        .await
        .context("the HTTP server failed")?;
    Ok(())
}

/// Rejects a request without the right bearer token, when one is set.
async fn check_token(
    State(token): State<Arc<Option<String>>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(expected) = token.as_deref() {
        let given = request
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(axum::http::header::WWW_AUTHENTICATE, "Bearer")],
                "missing or wrong bearer token: send `Authorization: Bearer \
                 <AGENTKIMI_HTTP_TOKEN>`\n",
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// Compares without stopping at the first difference, so response timing
/// does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_binding_needs_the_flag_and_a_token() {
        let remote: SocketAddr = "0.0.0.0:8765".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8765".parse().unwrap();
        let token = "0123456789abcdef0123";
        assert!(check_bind(local, false, None).is_ok());
        let e = check_bind(remote, false, Some(token)).unwrap_err();
        assert!(e.to_string().contains("--allow-remote"));
        let e = check_bind(remote, true, None).unwrap_err();
        assert!(e.to_string().contains("AGENTKIMI_HTTP_TOKEN"));
        assert!(check_bind(remote, true, Some("short")).is_err());
        assert!(check_bind(remote, true, Some(token)).is_ok());
    }

    #[test]
    fn token_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
