//! The egress proxy of `AGENTKIMI_NETWORK=allowlist`.
//!
//! In allowlist mode the sandbox keeps its own empty network namespace: no
//! route out, no resolver. Its only way out is this proxy, which runs in the
//! host process and listens on a Unix socket that is bind-mounted into the
//! sandbox at [`SANDBOX_SOCKET`]. Ordinary tools speak TCP to a proxy, not
//! to a Unix socket, so the executor runs a small forwarder
//! ([`spawn_forwarder`]) on the sandbox's own loopback at
//! `127.0.0.1:`[`SANDBOX_PORT`] that hands each connection to the socket;
//! `HTTP_PROXY`, `HTTPS_PROXY` and `ALL_PROXY` point there.
//!
//! The proxy speaks HTTP `CONNECT`, plain HTTP with an absolute URL, and
//! SOCKS5 (recognised by its first byte) on the same socket. It lets a
//! connection through only when the host *name* matches the allowlist
//! (exact, or `*.suffix` for subdomains); raw IP addresses are refused, so
//! the allowlist cannot be side-stepped by resolving inside. The name is
//! resolved here, on the host, and addresses that are loopback, private,
//! link-local or otherwise not public are refused, so an allowed name that
//! resolves to a host-local service does not reach it. Every decision is
//! logged at info level under `agentkimi::proxy`.
//!
//! Residual risk, stated once: an allowed host still receives whatever the
//! sandbox sends it (a package registry accepts uploads; a wildcard may
//! cover user content), so the allowlist narrows exfiltration, it does not
//! make it impossible.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpStream, UnixListener, UnixStream},
    task::JoinHandle,
};

/// Where the proxy's socket appears inside the sandbox.
pub const SANDBOX_SOCKET: &str = "/run/agentkimi/proxy.sock";
/// The loopback port inside the sandbox where the forwarder listens.
pub const SANDBOX_PORT: u16 = 3128;
/// Environment variable telling the executor to start the forwarder, with
/// the socket path as its value.
pub const SOCKET_ENV: &str = "AGENTKIMI_PROXY_SOCKET";

/// Longest request head (request line and headers) the proxy reads.
const MAX_HEAD: usize = 16 * 1024;
/// Limit on connecting to an allowed host.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Limit on the client sending its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Which host names may be reached, and the test-only resolver overrides.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allowed: Vec<String>,
    overrides: Vec<(String, SocketAddr)>,
}

impl Policy {
    /// A policy allowing `allowed` (exact names and `*.suffix` patterns),
    /// resolving the names in `overrides` to the given address instead of
    /// through DNS.
    pub fn new(allowed: &[String], overrides: &[(String, SocketAddr)]) -> Policy {
        Policy {
            allowed: allowed.iter().map(|d| d.to_ascii_lowercase()).collect(),
            overrides: overrides.to_vec(),
        }
    }

    /// Whether `host` may be reached; the error says why not, for the log
    /// and for the tool that asked.
    ///
    /// # Errors
    ///
    /// A refusal naming the host and the way to allow it.
    pub fn check(&self, host: &str) -> Result<(), String> {
        let host = normalize(host);
        if host.is_empty() {
            return Err("the request names no host".into());
        }
        if host.parse::<IpAddr>().is_ok() {
            return Err(format!(
                "{host} is a raw IP address; the egress proxy lets through host names from \
                 the allowlist only (AGENTKIMI_ALLOWED_DOMAINS)"
            ));
        }
        let allowed = self
            .allowed
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(suffix) => host
                    .strip_suffix(suffix)
                    .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
                None => *pattern == host,
            });
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "{host} is not in the egress allowlist; whoever runs the agentkimi server can \
                 add it to AGENTKIMI_ALLOWED_DOMAINS (or allowed_domains in config.toml)"
            ))
        }
    }

    /// Resolves an allowed `host` to the addresses to try.
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let host = normalize(host);
        if let Some((_, addr)) = self.overrides.iter().find(|(h, _)| *h == host) {
            return Ok(vec![*addr]);
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect();
        let public: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| is_public(a.ip()))
            .collect();
        if public.is_empty() {
            return Err(format!(
                "{host} resolves only to local or private addresses ({addrs:?}), which the \
                 egress proxy never connects to"
            ));
        }
        Ok(public)
    }
}

fn normalize(host: &str) -> String {
    let h = host.trim().trim_end_matches('.').to_ascii_lowercase();
    // A bracketed IPv6 literal, as in `[::1]:443`.
    h.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .map(str::to_string)
        .unwrap_or(h)
}

/// Whether an address is on the public internet: not loopback, private,
/// link-local, shared, documentation, multicast or unspecified.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// The running proxy: its socket on the host. Dropping it stops accepting.
#[derive(Debug)]
pub struct EgressProxy {
    socket: PathBuf,
    task: JoinHandle<()>,
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl EgressProxy {
    /// Listens on `socket` (replacing a stale file there) and serves each
    /// connection under `policy`. Must run inside a tokio runtime.
    ///
    /// # Errors
    ///
    /// When the socket cannot be created.
    pub fn start(socket: &Path, policy: Policy) -> std::io::Result<EgressProxy> {
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)?;
        }
        match std::fs::remove_file(socket) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = UnixListener::bind(socket)?;
        // Only this uid (which the sandbox maps to) may connect.
        std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        let policy = Arc::new(policy);
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    // Out of descriptors or similar: back off, keep serving.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let policy = policy.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(conn, &policy).await {
                        tracing::debug!(target: "agentkimi::proxy", "connection ended: {e}");
                    }
                });
            }
        });
        Ok(EgressProxy {
            socket: socket.to_path_buf(),
            task,
        })
    }

    /// The socket's path on the host.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// bwrap arguments that mount the socket and point the proxy variables
    /// at the forwarder.
    pub fn sandbox_args(&self) -> Vec<String> {
        let http = format!("http://127.0.0.1:{SANDBOX_PORT}");
        let socks = format!("socks5h://127.0.0.1:{SANDBOX_PORT}");
        let mut a: Vec<String> = vec![
            "--bind".into(),
            self.socket.to_string_lossy().into_owned(),
            SANDBOX_SOCKET.into(),
        ];
        for (k, v) in [
            (SOCKET_ENV, SANDBOX_SOCKET),
            ("HTTP_PROXY", http.as_str()),
            ("HTTPS_PROXY", http.as_str()),
            ("http_proxy", http.as_str()),
            ("https_proxy", http.as_str()),
            ("ALL_PROXY", socks.as_str()),
            ("all_proxy", socks.as_str()),
            // The sandbox's own loopback is reached directly: a test server
            // started by the model lives there.
            ("NO_PROXY", "localhost,127.0.0.1,::1"),
            ("no_proxy", "localhost,127.0.0.1,::1"),
        ] {
            a.extend(["--setenv".into(), k.into(), v.into()]);
        }
        a
    }
}

/// What a client asked for.
enum Ask {
    /// A tunnel (`CONNECT`, SOCKS5): `head` is answered on success.
    Tunnel {
        host: String,
        port: u16,
        socks: bool,
    },
    /// A plain HTTP request, rewritten to origin form in `head`.
    Plain {
        host: String,
        port: u16,
        head: Vec<u8>,
    },
}

async fn serve(mut conn: UnixStream, policy: &Policy) -> std::io::Result<()> {
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(HEAD_TIMEOUT, conn.read(&mut first))
        .await
        .map_err(|_| timeout_err())??;
    if n == 0 {
        return Ok(());
    }
    let (ask, rest) = if first[0] == 5 {
        let asked = tokio::time::timeout(HEAD_TIMEOUT, socks_request(&mut conn))
            .await
            .map_err(|_| timeout_err())??;
        match asked {
            Some(a) => (a, Vec::new()),
            None => return Ok(()),
        }
    } else {
        match http_request(&mut conn, first[0]).await? {
            Ok(pair) => pair,
            Err(why) => {
                tracing::info!(target: "agentkimi::proxy", "deny: {why}");
                return reply_http(&mut conn, "400 Bad Request", &why).await;
            }
        }
    };
    let (host, port, socks) = match &ask {
        Ask::Tunnel { host, port, socks } => (host.clone(), *port, *socks),
        Ask::Plain { host, port, .. } => (host.clone(), *port, false),
    };
    let kind = match &ask {
        Ask::Tunnel { socks: true, .. } => "SOCKS5",
        Ask::Tunnel { .. } => "CONNECT",
        Ask::Plain { .. } => "HTTP",
    };

    let upstream = match policy.check(&host) {
        Err(why) => Err(why),
        Ok(()) => match policy.resolve(&host, port).await {
            Err(why) => Err(why),
            Ok(addrs) => connect_any(&addrs).await,
        },
    };
    let mut upstream = match upstream {
        Ok(u) => {
            tracing::info!(target: "agentkimi::proxy", "allow {kind} {host}:{port}");
            u
        }
        Err(why) => {
            tracing::info!(target: "agentkimi::proxy", "deny {kind} {host}:{port}: {why}");
            return if socks {
                // 0x02: connection not allowed by ruleset.
                conn.write_all(&[5, 2, 0, 1, 0, 0, 0, 0, 0, 0]).await
            } else {
                reply_http(&mut conn, "403 Forbidden", &why).await
            };
        }
    };

    match ask {
        Ask::Tunnel { socks: true, .. } => {
            conn.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
        }
        Ask::Tunnel { .. } => {
            conn.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await?;
        }
        Ask::Plain { head, .. } => upstream.write_all(&head).await?,
    }
    upstream.write_all(&rest).await?;
    pipe(conn, upstream).await
}

async fn connect_any(addrs: &[SocketAddr]) -> Result<TcpStream, String> {
    let mut last = String::from("no address");
    for addr in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: timed out"),
        }
    }
    Err(format!("cannot connect ({last})"))
}

async fn pipe(a: UnixStream, b: TcpStream) -> std::io::Result<()> {
    let (mut ar, mut aw) = a.into_split();
    let (mut br, mut bw) = b.into_split();
    let up = async {
        let r = tokio::io::copy(&mut ar, &mut bw).await;
        let _ = bw.shutdown().await;
        r
    };
    let down = async {
        let r = tokio::io::copy(&mut br, &mut aw).await;
        let _ = aw.shutdown().await;
        r
    };
    let (u, d) = tokio::join!(up, down);
    u.and(d).map(|_| ())
}

fn timeout_err() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "client sent nothing in time")
}

async fn reply_http<W: AsyncWrite + Unpin>(
    conn: &mut W,
    status: &str,
    why: &str,
) -> std::io::Result<()> {
    let body = format!("agentkimi egress proxy: {why}\n");
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: \
         {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(msg.as_bytes()).await?;
    conn.shutdown().await
}

/// Reads an HTTP request head that began with `first`. Returns what was
/// asked and the bytes read past the head, or why the request is unusable.
async fn http_request<R: AsyncRead + Unpin>(
    conn: &mut R,
    first: u8,
) -> std::io::Result<Result<(Ask, Vec<u8>), String>> {
    let mut buf = vec![first];
    let end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Ok(Err("the request head is too long".into()));
        }
        let mut chunk = [0u8; 2048];
        let n = tokio::time::timeout(HEAD_TIMEOUT, conn.read(&mut chunk))
            .await
            .map_err(|_| timeout_err())??;
        if n == 0 {
            return Ok(Err("the connection closed mid-request".into()));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let rest = buf.split_off(end);
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Ok(Err(format!("malformed request line {request_line:?}")));
    };
    if method.eq_ignore_ascii_case("CONNECT") {
        let Some((host, port)) = split_host_port(target, 443) else {
            return Ok(Err(format!("malformed CONNECT target {target:?}")));
        };
        return Ok(Ok((
            Ask::Tunnel {
                host,
                port,
                socks: false,
            },
            rest,
        )));
    }
    let Some(after) = target.strip_prefix("http://") else {
        return Ok(Err(format!(
            "{target:?} is not an absolute http:// URL; use CONNECT for https"
        )));
    };
    let (authority, path) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    // Credentials in the URL are dropped along with the authority.
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    let Some((host, port)) = split_host_port(authority, 80) else {
        return Ok(Err(format!("malformed URL {target:?}")));
    };
    let mut out = format!("{method} {path} {version}\r\n");
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or_default().trim();
        if name.eq_ignore_ascii_case("proxy-connection")
            || name.eq_ignore_ascii_case("proxy-authorization")
        {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    Ok(Ok((
        Ask::Plain {
            host,
            port,
            head: out.into_bytes(),
        },
        rest,
    )))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn split_host_port(s: &str, default: u16) -> Option<(String, u16)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None => default,
        };
        return Some((host.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h.to_string(), p.parse().ok()?)),
        Some(_) => Some((s.to_string(), default)),
        None => Some((s.to_string(), default)),
    }
}

/// Reads a SOCKS5 greeting (after its first byte) and CONNECT request.
/// Answers protocol errors itself and returns `None` then.
async fn socks_request(conn: &mut UnixStream) -> std::io::Result<Option<Ask>> {
    let mut n = [0u8; 1];
    conn.read_exact(&mut n).await?;
    let mut methods = vec![0u8; usize::from(n[0])];
    conn.read_exact(&mut methods).await?;
    if !methods.contains(&0) {
        conn.write_all(&[5, 0xff]).await?;
        return Ok(None);
    }
    conn.write_all(&[5, 0]).await?;
    let mut req = [0u8; 4];
    conn.read_exact(&mut req).await?;
    let [5, cmd, _, atyp] = req else {
        return Ok(None);
    };
    let host = match atyp {
        3 => {
            let mut len = [0u8; 1];
            conn.read_exact(&mut len).await?;
            let mut name = vec![0u8; usize::from(len[0])];
            conn.read_exact(&mut name).await?;
            String::from_utf8_lossy(&name).into_owned()
        }
        1 => {
            let mut a = [0u8; 4];
            conn.read_exact(&mut a).await?;
            std::net::Ipv4Addr::from(a).to_string()
        }
        4 => {
            let mut a = [0u8; 16];
            conn.read_exact(&mut a).await?;
            std::net::Ipv6Addr::from(a).to_string()
        }
        _ => {
            conn.write_all(&[5, 8, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
            return Ok(None);
        }
    };
    let mut port = [0u8; 2];
    conn.read_exact(&mut port).await?;
    if cmd != 1 {
        // Only CONNECT: no BIND, no UDP.
        conn.write_all(&[5, 7, 0, 1, 0, 0, 0, 0, 0, 0]).await?;
        return Ok(None);
    }
    Ok(Some(Ask::Tunnel {
        host,
        port: u16::from_be_bytes(port),
        socks: true,
    }))
}

/// Starts the in-sandbox forwarder: a thread accepting on
/// `127.0.0.1:`[`SANDBOX_PORT`] that joins each connection to the proxy's
/// Unix socket at `socket`. Runs in the executor, which is synchronous.
///
/// # Errors
///
/// When the port cannot be bound.
pub fn spawn_forwarder(socket: &Path) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", SANDBOX_PORT))?;
    let socket = socket.to_path_buf();
    std::thread::Builder::new()
        .name("proxy-forwarder".into())
        .spawn(move || {
            for conn in listener.incoming().flatten() {
                let socket = socket.clone();
                let _ = std::thread::Builder::new()
                    .name("proxy-conn".into())
                    .spawn(move || forward(conn, &socket));
            }
        })?;
    Ok(())
}

fn forward(tcp: std::net::TcpStream, socket: &Path) {
    let Ok(unix) = std::os::unix::net::UnixStream::connect(socket) else {
        let _ = tcp.shutdown(std::net::Shutdown::Both);
        return;
    };
    let (Ok(mut tcp_r), Ok(mut unix_w)) = (tcp.try_clone(), unix.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut tcp_r, &mut unix_w);
        let _ = unix_w.shutdown(std::net::Shutdown::Write);
    });
    let (mut unix_r, mut tcp_w) = (unix, tcp);
    let _ = std::io::copy(&mut unix_r, &mut tcp_w);
    let _ = tcp_w.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::new(&["crates.io".into(), "*.example.org".into()], &[])
    }

    #[test]
    fn allowlist_matches_exact_names_and_subdomains_only() {
        let p = policy();
        assert!(p.check("crates.io").is_ok());
        assert!(p.check("CRATES.IO.").is_ok());
        assert!(p.check("a.example.org").is_ok());
        assert!(p.check("a.b.example.org").is_ok());
        for bad in [
            "example.org",
            "evilexample.org",
            "static.crates.io",
            "crates.io.evil.net",
            "",
        ] {
            assert!(p.check(bad).is_err(), "{bad} allowed");
        }
    }

    #[test]
    fn raw_addresses_are_refused() {
        let p = Policy::new(&["127.0.0.1".into()], &[]);
        for ip in ["127.0.0.1", "[::1]", "::1", "10.0.0.1"] {
            let e = p.check(ip).unwrap_err();
            assert!(e.contains("raw IP"), "{ip}: {e}");
        }
    }

    #[test]
    fn only_public_addresses_count() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "169.254.1.1",
            "::1",
            "fe80::1",
            "fc00::1",
            "100.64.0.1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["151.101.1.1", "2a04:4e42::1"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn plain_requests_are_rewritten_to_origin_form() {
        let raw = b"GET http://user:pw@a.example.org:8080/x?y=1 HTTP/1.1\r\nHost: a.example.org\r\nProxy-Connection: keep-alive\r\n\r\nBODY";
        let mut r: &[u8] = &raw[1..];
        let (ask, rest) = http_request(&mut r, raw[0]).await.unwrap().unwrap();
        let Ask::Plain { host, port, head } = ask else {
            panic!("not plain");
        };
        assert_eq!((host.as_str(), port), ("a.example.org", 8080));
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET /x?y=1 HTTP/1.1\r\nHost: a.example.org\r\n\r\n"
        );
        assert_eq!(rest, b"BODY");
    }
}
