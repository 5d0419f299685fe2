//! The sandbox: a bubblewrap process tree that runs the executor.
//!
//! One sandbox per running turn. The host starts `bwrap` with the profile
//! built here, which runs this same binary (bind-mounted read-only) as
//! `agentkimi sandbox-exec`; tool calls then travel over the executor's stdin
//! and stdout, one JSON line each way (see `protocol`). Ending the sandbox
//! kills `bwrap`; `--die-with-parent` and the PID namespace take every
//! process inside with it, detached or not.
//!
//! What the profile gives the sandbox, and why:
//! - fresh user, PID, IPC, UTS, cgroup and network namespaces: the sandbox
//!   sees none of the host's processes, and no network (not even the host's
//!   loopback) unless the configuration turns it on;
//! - an unprivileged uid/gid with every capability dropped, also when the
//!   server runs as root; the worktree is still writable because the
//!   sandbox uid maps to the uid that owns it;
//! - `/usr` read-only with `/bin`, `/lib`, `/lib64`, `/sbin` recreated as the
//!   host has them (Debian's loader lives under `/usr/lib64`, reached through
//!   the `/lib64` link);
//! - a synthetic `/etc` naming the sandbox user, plus the few host files
//!   that programs need to start and that hold no secrets;
//! - private tmpfs `/tmp` and `HOME`, the worktree read-write at its host
//!   path, and nothing else: no `/home`, `/root`, `/run`, host sockets.
//!
//! The process running `bwrap` is started with an empty environment, so the
//! API key, which lives in the host's environment, is not in `bwrap`'s
//! `/proc/<pid>/environ` either.

pub mod limits;
pub mod mounts;
pub mod probe;
pub mod proxy;
pub mod seccomp;

use std::{
    collections::VecDeque,
    io::Write,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::{SinkExt, StreamExt};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, ChildStdin, ChildStdout, Command},
};
use tokio_util::codec::{FramedRead, FramedWrite, LinesCodec};

use crate::{
    config::{Config, Limits, Network},
    protocol::{ExecRequest, ExecResponse, MAX_RESPONSE_LINE},
};
use limits::{ProcessLimit, SandboxCgroup, mib};

/// User name inside the sandbox.
pub const SANDBOX_USER: &str = "kimi";
/// Uid and gid inside the sandbox.
pub const SANDBOX_UID: u32 = 1000;
/// Home directory inside the sandbox (on the private `/tmp` tmpfs).
pub const SANDBOX_HOME: &str = "/tmp/home";
/// Where the executor binary is mounted inside the sandbox.
const EXECUTOR_PATH: &str = "/opt/agentkimi/agentkimi";
/// `PATH` inside the sandbox.
const SANDBOX_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Host files under `/etc` that the sandbox sees read-only. Each is needed
/// by ordinary programs to start and holds no secret: the loader's cache,
/// Debian's alternatives links (`cc`, `python3`-style names), the time zone.
const HOST_ETC_FILES: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "localtime",
    "mime.types",
];

/// Extra host `/etc` entries when the network is on: name resolution and the
/// certificate store.
const HOST_ETC_NET_FILES: &[&str] = &["ssl", "ca-certificates", "ca-certificates.conf", "gai.conf"];

/// Why the sandbox failed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// bwrap or user namespaces are missing; the message says how to fix it.
    #[error("{0}")]
    Unavailable(String),
    /// The executor exited or broke the protocol.
    #[error("the sandbox stopped unexpectedly: {0}")]
    Died(String),
    /// A tool call ran past the host's limit; the sandbox was killed.
    #[error(
        "the tool call did not finish within {0} s; the sandbox was stopped (background \
         processes ended) and will be restarted for the next tool call"
    )]
    Hung(u64),
    /// The worktree grew past its disk limit; the sandbox was killed and
    /// the turn must end.
    #[error(
        "the worktree uses more than its limit of {limit_mb} MiB of disk \
         (AGENTKIMI_MAX_WORKTREE_MB); the sandbox was stopped and the turn ended. Delete large \
         generated files (build output, downloads, logs) in the next turn, or raise the limit"
    )]
    DiskLimit {
        /// The limit in MiB.
        limit_mb: u64,
    },
    /// Local I/O failure while preparing the sandbox.
    #[error("cannot prepare the sandbox: {0}")]
    Io(#[from] std::io::Error),
}

/// What every sandbox of this server shares: where bwrap is, the executor
/// binary, the generated `/etc`, the network policy.
#[derive(Debug, Clone)]
pub struct Profile {
    bwrap: PathBuf,
    executor: PathBuf,
    etc_dir: PathBuf,
    network: Network,
    /// Compiled seccomp programs, loaded by bwrap in order.
    seccomp: Vec<Vec<u8>>,
    limits: Limits,
    process_limit: ProcessLimit,
    /// Emptied sandbox cgroups waiting to be reused.
    cgroup_pool: limits::CgroupPool,
    /// Toolchain mounts, their masked secrets and the session caches.
    mounts: mounts::Mounts,
    /// The egress proxy, in allowlist mode.
    proxy: Option<Arc<proxy::EgressProxy>>,
}

impl Profile {
    /// Finds bwrap, writes the synthetic `/etc` under the state directory,
    /// and checks that a sandbox can actually start here.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Unavailable`] with advice when bwrap is missing or
    /// user namespaces are disabled. There is no unsandboxed fallback.
    pub async fn prepare(config: &Config) -> Result<Profile, SandboxError> {
        let bwrap = find_in_path("bwrap").ok_or_else(|| {
            SandboxError::Unavailable(
                "bubblewrap (bwrap) is not installed, and agentkimi never runs tool calls \
                 unsandboxed. Install it: `sudo apt-get install bubblewrap` (Debian, Ubuntu), \
                 `sudo dnf install bubblewrap` (Fedora) or `sudo pacman -S bubblewrap` (Arch)"
                    .into(),
            )
        })?;
        let executor = std::env::current_exe()?;
        let etc_dir = config.sandbox_dir().join("etc");
        write_etc(&etc_dir)?;
        let seccomp = seccomp::programs(config.network != Network::Off).map_err(|e| {
            SandboxError::Unavailable(format!("cannot build the seccomp filter: {e}"))
        })?;
        let process_limit = ProcessLimit::detect();
        if let ProcessLimit::Rlimit(why) = &process_limit {
            tracing::warn!(
                "no pids cgroup for sandboxes ({why}); falling back to RLIMIT_NPROC, which \
                 the kernel ignores when the server runs as root"
            );
        }
        let mounts = mounts::Mounts::new(&config.ro_paths, &config.home)
            .map_err(SandboxError::Unavailable)?;
        let profile = Profile {
            bwrap,
            executor,
            etc_dir,
            network: config.network,
            seccomp,
            limits: config.limits,
            process_limit,
            cgroup_pool: limits::CgroupPool::default(),
            mounts,
            proxy: start_proxy(config)?,
        };
        profile.probe().await?;
        Ok(profile)
    }

    /// The network policy sandboxes of this profile get.
    pub fn network(&self) -> Network {
        self.network
    }

    /// This profile with the network cut off, for a session that asked for
    /// a stricter policy than the server's. There is deliberately no way to
    /// go the other way.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Unavailable`] when the seccomp filter cannot be built.
    pub fn without_network(&self) -> Result<Profile, SandboxError> {
        let seccomp = seccomp::programs(false).map_err(|e| {
            SandboxError::Unavailable(format!("cannot build the seccomp filter: {e}"))
        })?;
        Ok(Profile {
            network: Network::Off,
            seccomp,
            proxy: None,
            ..self.clone()
        })
    }

    /// The bwrap binary sandboxes are started with.
    pub fn bwrap(&self) -> &Path {
        &self.bwrap
    }

    /// How the number of processes in a sandbox is limited on this machine.
    pub fn process_limit(&self) -> &ProcessLimit {
        &self.process_limit
    }

    /// Runs `argv` (a command inside the sandbox, e.g. a probe) under the
    /// full profile with an empty scratch directory as the worktree, and
    /// returns its exit status and output. For `doctor`.
    ///
    /// # Errors
    ///
    /// When bwrap cannot be started.
    pub async fn run_probe(&self, argv: &[String]) -> Result<std::process::Output, SandboxError> {
        let dir = self.etc_dir.with_file_name("probe");
        std::fs::create_dir_all(&dir)?;
        let cgroup = self.cgroup();
        let (mut cmd, _fds) = self.command(&dir, &dir, argv, cgroup.as_ref())?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok(cmd.output().await?)
    }

    /// A fresh cgroup for one sandbox, when this machine offers one. A
    /// failure here falls back to the rlimit and is logged, never fatal:
    /// the namespaces still hold, only the process cap is weaker.
    fn cgroup(&self) -> Option<SandboxCgroup> {
        if matches!(self.process_limit, ProcessLimit::Rlimit(_)) {
            return None;
        }
        match SandboxCgroup::create(
            &self.process_limit,
            self.limits.max_procs,
            Some(&self.cgroup_pool),
        ) {
            Ok(cg) => Some(cg),
            Err(e) => {
                tracing::warn!("cannot create a cgroup for the sandbox: {e}");
                None
            }
        }
    }

    /// This profile with `executor` as the binary run inside the sandbox
    /// instead of the running one; for a benchmark or test harness whose
    /// own binary is not agentkimi.
    pub fn with_executor(self, executor: PathBuf) -> Profile {
        Profile { executor, ..self }
    }

    /// Runs `true` under the full profile (seccomp filter included),
    /// turning bwrap's complaint into advice when it fails. This is the
    /// floor a sandboxed tool call cannot beat.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Unavailable`] when the sandbox cannot start.
    pub async fn probe(&self) -> Result<(), SandboxError> {
        let dir = std::env::temp_dir();
        let cgroup = self.cgroup();
        let (mut cmd, _fds) =
            self.command(&dir, &dir, &["/usr/bin/true".into()], cgroup.as_ref())?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let out = cmd.output().await.map_err(|e| {
            SandboxError::Unavailable(format!("cannot run {}: {e}", self.bwrap.display()))
        })?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(SandboxError::Unavailable(unavailable_advice(&stderr)))
    }

    /// The bwrap command running `argv` with `worktree` writable and `cwd` as
    /// the working directory, and the pipe ends carrying its seccomp
    /// programs, which must stay open until the command is spawned. With
    /// `cgroup`, bwrap joins it before it starts, so everything inside is
    /// counted from the first process on.
    fn command(
        &self,
        worktree: &Path,
        cwd: &Path,
        argv: &[String],
        cgroup: Option<&SandboxCgroup>,
    ) -> Result<(Command, Vec<OwnedFd>), SandboxError> {
        let mut cmd = Command::new(&self.bwrap);
        // bwrap's own process keeps the environment it is started with, and
        // its /proc/<pid>/environ is readable by the same uid: start it with
        // nothing, so the key cannot be found there.
        cmd.env_clear();
        cmd.args(self.args(worktree, cwd));

        // Each program goes through a pipe: it is far smaller than a pipe's
        // buffer, so writing it all before the spawn cannot block. The read
        // ends are close-on-exec here and opened up only in the child, so a
        // sandbox spawned concurrently from another thread never inherits
        // this one's filter pipes.
        let mut keep = Vec::with_capacity(self.seccomp.len());
        for prog in &self.seccomp {
            let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
                .map_err(std::io::Error::from)?;
            std::fs::File::from(write).write_all(prog)?;
            cmd.arg("--add-seccomp-fd")
                .arg(read.as_raw_fd().to_string());
            keep.push(read);
        }
        let fds: Vec<i32> = keep.iter().map(AsRawFd::as_raw_fd).collect();
        let procs = cgroup.map(|cg| cg.procs_path().clone());
        let fsize = mib(self.limits.max_file_mb);
        // Without a cgroup, RLIMIT_NPROC is what is left. The kernel counts
        // it against every process of the server's uid on the host (the
        // sandbox uid maps to it), so the allowance is added to what that
        // uid already runs; it does nothing for root.
        let nproc = procs
            .is_none()
            .then(|| self.limits.max_procs + processes_of_this_uid());
        // SAFETY: the closure runs between fork and exec and only calls
        // fcntl, open, write, close and setrlimit, which are
        // async-signal-safe, on values computed before the fork.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &fds {
                    let flags = libc::fcntl(*fd, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(*fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // No core dumps: a crashing tool must not write the memory
                // of the sandbox into the worktree.
                let zero = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                if libc::setrlimit(libc::RLIMIT_CORE, &zero) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // A write past this fails with EFBIG instead of filling the
                // disk with one file.
                let fsize = libc::rlimit {
                    rlim_cur: fsize,
                    rlim_max: fsize,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &fsize) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(n) = nproc {
                    let n = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NPROC, &n) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Join the sandbox's cgroup: writing 0 to cgroup.procs
                // moves the writing process, and bwrap and all it starts
                // inherit the cgroup.
                if let Some(procs) = &procs {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if written != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        cmd.arg("--");
        cmd.args(argv);
        cmd.kill_on_drop(true);
        Ok((cmd, keep))
    }

    /// The bwrap arguments, before `--` and the command.
    pub fn args(&self, worktree: &Path, cwd: &Path) -> Vec<String> {
        let mut a: Vec<String> = Vec::with_capacity(96);
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        push(&[
            "--unshare-user",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
        ]);
        push(&["--unshare-cgroup-try"]);
        if self.network != Network::On {
            push(&["--unshare-net"]);
        }
        let uid = SANDBOX_UID.to_string();
        push(&["--uid", &uid, "--gid", &uid, "--hostname", "agentkimi"]);
        push(&[
            "--die-with-parent",
            "--new-session",
            "--clearenv",
            "--cap-drop",
            "ALL",
        ]);

        push(&["--ro-bind", "/usr", "/usr"]);
        for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(top);
            match std::fs::read_link(&host) {
                Ok(target) => push(&[
                    "--symlink",
                    &target.to_string_lossy(),
                    &host.to_string_lossy(),
                ]),
                Err(_) if host.is_dir() => push(&[
                    "--ro-bind",
                    &host.to_string_lossy(),
                    &host.to_string_lossy(),
                ]),
                Err(_) => {}
            }
        }

        // /tmp lives in memory: its size bounds what the sandbox can take
        // from the host's RAM through it.
        let tmp_size = mib(self.limits.max_tmp_mb).to_string();
        push(&[
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--size",
            &tmp_size,
            "--tmpfs",
            "/tmp",
            "--dir",
            SANDBOX_HOME,
        ]);
        push(&["--dir", "/etc"]);
        for name in ["passwd", "group", "hosts", "nsswitch.conf"] {
            let src = self.etc_dir.join(name);
            push(&["--ro-bind", &src.to_string_lossy(), &format!("/etc/{name}")]);
        }
        let mut etc: Vec<&str> = HOST_ETC_FILES.to_vec();
        if self.network == Network::Allowlist {
            // Certificates for TLS through the proxy; no resolver.
            etc.extend_from_slice(&["ssl", "ca-certificates", "ca-certificates.conf"]);
        }
        if self.network == Network::On {
            etc.extend_from_slice(HOST_ETC_NET_FILES);
            // resolv.conf is often a link into /run; bind what it points to.
            if let Ok(real) = std::fs::canonicalize("/etc/resolv.conf") {
                push(&["--ro-bind", &real.to_string_lossy(), "/etc/resolv.conf"]);
            }
        }
        for name in etc {
            let path = format!("/etc/{name}");
            push(&["--ro-bind-try", &path, &path]);
        }

        push(&["--ro-bind", &self.executor.to_string_lossy(), EXECUTOR_PATH]);
        let wt = worktree.to_string_lossy();
        push(&["--bind", &wt, &wt]);
        push(&["--chdir", &cwd.to_string_lossy()]);

        for (k, v) in [
            ("HOME", SANDBOX_HOME),
            ("USER", SANDBOX_USER),
            ("LOGNAME", SANDBOX_USER),
            ("PATH", SANDBOX_PATH),
            ("LANG", "C.UTF-8"),
            ("TMPDIR", "/tmp"),
            ("TERM", "dumb"),
            ("SHELL", "/bin/bash"),
        ] {
            push(&["--setenv", k, v]);
        }
        a.extend(
            self.mounts
                .args(worktree, SANDBOX_PATH, self.network == Network::Off),
        );
        if let Some(p) = &self.proxy {
            a.extend(p.sandbox_args());
        }
        a
    }
}

/// Starts the egress proxy when the policy is `allowlist`.
fn start_proxy(config: &Config) -> Result<Option<Arc<proxy::EgressProxy>>, SandboxError> {
    if config.network != Network::Allowlist {
        return Ok(None);
    }
    let socket = config
        .sandbox_dir()
        .join(format!("proxy-{}.sock", std::process::id()));
    let policy = proxy::Policy::new(&config.allowed_domains, &config.proxy_resolve);
    let p = proxy::EgressProxy::start(&socket, policy).map_err(|e| {
        SandboxError::Unavailable(format!(
            "cannot start the egress proxy on {}: {e}; a Unix socket path must be shorter \
             than 108 bytes, so use a shorter AGENTKIMI_HOME, or set AGENTKIMI_NETWORK=off",
            socket.display()
        ))
    })?;
    tracing::info!(
        "egress proxy on {} allows {}",
        socket.display(),
        config.allowed_domains.join(", ")
    );
    Ok(Some(Arc::new(p)))
}

fn unavailable_advice(stderr: &str) -> String {
    let lower = stderr.to_lowercase();
    if lower.contains("namespace")
        || lower.contains("uid map")
        || lower.contains("permission denied")
    {
        format!(
            "bubblewrap cannot create a sandbox here ({stderr}). Unprivileged user namespaces \
             are probably disabled: enable them with `sudo sysctl -w \
             kernel.unprivileged_userns_clone=1` (Debian) or `sudo sysctl -w \
             kernel.apparmor_restrict_unprivileged_userns=0` (Ubuntu 23.10+), or give bwrap an \
             AppArmor profile. agentkimi never runs tool calls unsandboxed"
        )
    } else {
        format!(
            "bubblewrap failed to start a sandbox ({stderr}); run `agentkimi doctor` for \
             details. agentkimi never runs tool calls unsandboxed"
        )
    }
}

/// How many processes of this process's real uid run on the host.
fn processes_of_this_uid() -> u64 {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .filter(|e| e.metadata().is_ok_and(|m| m.uid() == uid))
                .count() as u64
        })
        .unwrap_or(0)
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Writes the synthetic `/etc` files. Each is written to a temporary name and
/// renamed, so a second server process writing at the same time never leaves
/// a half-written file for a sandbox to read.
fn write_etc(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let uid = SANDBOX_UID;
    let files = [
        (
            "passwd",
            format!(
                "{SANDBOX_USER}:x:{uid}:{uid}:agentkimi sandbox:{SANDBOX_HOME}:/bin/bash\n\
                 nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
            ),
        ),
        (
            "group",
            format!("{SANDBOX_USER}:x:{uid}:\nnogroup:x:65534:\n"),
        ),
        (
            "hosts",
            "127.0.0.1\tlocalhost agentkimi\n::1\tlocalhost ip6-localhost\n".to_string(),
        ),
        (
            "nsswitch.conf",
            "passwd: files\ngroup: files\nhosts: files dns\n".to_string(),
        ),
    ];
    for (name, content) in files {
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        std::fs::write(&tmp, content)?;
        std::fs::rename(&tmp, dir.join(name))?;
    }
    Ok(())
}

/// A running sandbox with its executor.
pub struct Sandbox {
    child: Child,
    /// Declared after `child`, so it is dropped (killing stragglers and
    /// removing the cgroup) after bwrap was killed.
    cgroup: Option<SandboxCgroup>,
    worktree: PathBuf,
    worktree_limit: u64,
    writer: FramedWrite<ChildStdin, LinesCodec>,
    reader: FramedRead<ChildStdout, LinesCodec>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    next_id: u64,
}

impl Sandbox {
    /// Starts a sandbox over `worktree`, with the executor's working
    /// directory at `cwd` (the worktree or a directory inside it).
    ///
    /// # Errors
    ///
    /// When bwrap cannot be started.
    pub fn spawn(profile: &Profile, worktree: &Path, cwd: &Path) -> Result<Sandbox, SandboxError> {
        let argv = [
            EXECUTOR_PATH.to_string(),
            "sandbox-exec".to_string(),
            "--root".to_string(),
            worktree.to_string_lossy().into_owned(),
        ];
        let cgroup = profile.cgroup();
        let (mut cmd, fds) = profile.command(worktree, cwd, &argv, cgroup.as_ref())?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn()?;
        drop(fds);
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(SandboxError::Died(
                "the executor's pipes were not created".into(),
            ));
        };

        // The executor's stderr is for diagnostics only: keep the last lines
        // for error messages and log them at debug level.
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail = stderr_tail.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(target: "agentkimi::executor", "{}", truncate(&line, 500));
                let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                if t.len() == 20 {
                    t.pop_front();
                }
                t.push_back(truncate(&line, 500));
            }
        });

        Ok(Sandbox {
            child,
            cgroup,
            worktree: worktree.to_path_buf(),
            worktree_limit: mib(profile.limits.max_worktree_mb),
            writer: FramedWrite::new(stdin, LinesCodec::new()),
            reader: FramedRead::new(stdout, LinesCodec::new_with_max_length(MAX_RESPONSE_LINE)),
            stderr_tail,
            next_id: 1,
        })
    }

    /// Runs one tool call in the executor. `limit` is the host's own bound on
    /// the call; past it the whole sandbox is killed, so a call can never
    /// hang a turn.
    ///
    /// # Errors
    ///
    /// [`SandboxError::Hung`] past `limit`, [`SandboxError::Died`] when the
    /// executor exits or answers out of protocol. Either way the sandbox is
    /// dead and must be replaced.
    pub async fn call(
        &mut self,
        tool: &str,
        input: &serde_json::Value,
        limit: Duration,
    ) -> Result<ExecResponse, SandboxError> {
        let id = self.next_id;
        self.next_id += 1;
        let req = ExecRequest {
            id,
            tool: tool.to_string(),
            input: input.clone(),
        };
        let line = serde_json::to_string(&req).map_err(|e| SandboxError::Died(e.to_string()))?;

        let worktree = self.worktree.clone();
        let max = self.worktree_limit;

        let exchange = async {
            self.writer
                .send(line)
                .await
                .map_err(|e| SandboxError::Died(e.to_string()))?;
            match self.reader.next().await {
                Some(Ok(line)) => serde_json::from_str::<ExecResponse>(&line)
                    .map_err(|e| SandboxError::Died(format!("unreadable executor answer: {e}"))),
                Some(Err(e)) => Err(SandboxError::Died(format!("executor output: {e}"))),
                None => Err(SandboxError::Died(self.stderr_summary())),
            }
        };
        // The worktree is on the host's disk, so its size is watched while
        // the call runs (a loop writing files fills a disk in seconds) and
        // checked once more when it ends. The interval grows with the cost
        // of a walk, so a huge tree is not walked back to back.
        let over = move || {
            let wt = worktree.clone();
            async move {
                tokio::task::spawn_blocking(move || {
                    let started = std::time::Instant::now();
                    (limits::disk_usage(&wt, max) > max, started.elapsed())
                })
                .await
                .unwrap_or((false, Duration::ZERO))
            }
        };
        let watch = {
            let over = over.clone();
            async move {
                let mut pause = Duration::from_millis(100);
                loop {
                    tokio::time::sleep(pause).await;
                    let (full, took) = over().await;
                    if full {
                        return;
                    }
                    pause = (took * 20).max(Duration::from_millis(100));
                }
            }
        };
        let disk_error = || SandboxError::DiskLimit {
            limit_mb: max >> 20,
        };
        let mut result = tokio::select! {
            r = tokio::time::timeout(limit, exchange) => match r {
                Ok(r) => r,
                Err(_) => Err(SandboxError::Hung(limit.as_secs())),
            },
            () = watch => Err(disk_error()),
        };
        if result.is_ok() && writes(tool) && over().await.0 {
            result = Err(disk_error());
        }
        match result {
            Ok(resp) if resp.id == id => Ok(resp),
            Ok(resp) => Err(SandboxError::Died(format!(
                "executor answered request {} to request {id}",
                resp.id
            ))),
            Err(e) => {
                self.kill().await;
                Err(e)
            }
        }
    }

    fn stderr_summary(&self) -> String {
        let tail = self.stderr_tail.lock().unwrap_or_else(|p| p.into_inner());
        if tail.is_empty() {
            "the executor exited".into()
        } else {
            tail.iter().cloned().collect::<Vec<_>>().join(" | ")
        }
    }

    /// Ends the sandbox: kills bwrap, which takes every process inside with
    /// it, and reaps it.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
        if let Some(cg) = &self.cgroup {
            cg.kill_all();
            tracing::debug!(peak_processes = ?cg.peak(), "sandbox ended");
        }
    }

    /// The most processes the sandbox held at once, when its cgroup
    /// reports it.
    pub fn peak_processes(&self) -> Option<u64> {
        self.cgroup.as_ref().and_then(SandboxCgroup::peak)
    }

    /// The host pid of the `bwrap` process, for tests that check the tree is
    /// gone.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Whether `tool` can grow the worktree (and so is followed by a size
/// check).
fn writes(tool: &str) -> bool {
    matches!(tool, "Bash" | "Write" | "Edit" | "MultiEdit" | "BashOutput")
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(network: Network) -> Profile {
        Profile {
            bwrap: "/usr/bin/bwrap".into(),
            executor: "/x/agentkimi".into(),
            etc_dir: "/state/sandbox/etc".into(),
            network,
            seccomp: Vec::new(),
            limits: Limits::default(),
            process_limit: ProcessLimit::Rlimit("test".into()),
            cgroup_pool: limits::CgroupPool::default(),
            mounts: mounts::Mounts::default(),
            proxy: None,
        }
    }

    #[test]
    fn profile_isolates_by_default() {
        let a = profile(Network::Off).args(Path::new("/wt"), Path::new("/wt/sub"));
        let joined = a.join(" ");
        for flag in [
            "--unshare-user",
            "--unshare-pid",
            "--unshare-net",
            "--clearenv",
            "--die-with-parent",
            "--new-session",
        ] {
            assert!(a.iter().any(|x| x == flag), "missing {flag}");
        }
        assert!(joined.contains("--cap-drop ALL"));
        assert!(joined.contains("--bind /wt /wt"));
        assert!(joined.contains("--chdir /wt/sub"));
        for host_dir in ["/home", "/root", "/run", "/var"] {
            assert!(
                !a.iter()
                    .any(|x| x == host_dir || x.starts_with(&format!("{host_dir}/"))),
                "{host_dir} mounted"
            );
        }
        assert!(!joined.contains("/etc/ssl"));
    }

    #[test]
    fn network_on_shares_the_net_namespace_and_certs() {
        let a = profile(Network::On).args(Path::new("/wt"), Path::new("/wt"));
        assert!(!a.iter().any(|x| x == "--unshare-net"));
        assert!(a.iter().any(|x| x == "/etc/ssl"));
    }
}
