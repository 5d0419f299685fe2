//! The layer check behind `agentkimi doctor`: a probe that runs inside a
//! real sandbox and reports, layer by layer, whether the profile took
//! effect on this machine.
//!
//! Reading the bwrap arguments proves nothing about a given kernel: an old
//! bwrap may ignore a flag, a kernel may lack seccomp. So the probe (this
//! same binary, started as the hidden `sandbox-probe` command under the full
//! profile) looks from the inside: its own capability sets and seccomp mode,
//! a denied system call that must fail, its uid, the network devices it can
//! see, the host directories that must be absent. The host turns each line
//! into pass or fail with a fix.

use std::path::Path;

use super::{EXECUTOR_PATH, Network, Profile, SANDBOX_HOME, SANDBOX_UID, SandboxError};

/// One checked layer: its name and either what was seen or what to fix.
pub type Check = (String, Result<String, String>);

/// Runs inside the sandbox: prints one line per check, `pass` or `fail`,
/// a tab, the check's name, a tab, what was seen.
pub fn run_inside() {
    for (name, ok, seen) in inside_checks() {
        println!("{}\t{name}\t{seen}", if ok { "pass" } else { "fail" });
    }
}

fn inside_checks() -> Vec<(&'static str, bool, String)> {
    let mut out = Vec::new();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };

    let caps: Vec<String> = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"]
        .iter()
        .map(|c| format!("{c}={}", field(c)))
        .collect();
    let no_caps = caps.iter().all(|c| c.ends_with("=0000000000000000"));
    out.push(("capabilities", no_caps, caps.join(" ")));

    let nnp = field("NoNewPrivs");
    out.push(("no_new_privs", nnp == "1", format!("NoNewPrivs={nnp}")));

    // A call the filter denies must fail with EPERM. unshare would
    // otherwise succeed for an unprivileged process in most kernels, and
    // PTRACE_TRACEME is harmless when it does.
    // SAFETY: both calls take integer arguments only.
    let (unshare, ptrace) = unsafe {
        let u = libc::unshare(libc::CLONE_NEWUSER);
        let u_err = std::io::Error::last_os_error().raw_os_error();
        let p = libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) as i32;
        let p_err = std::io::Error::last_os_error().raw_os_error();
        ((u, u_err), (p, p_err))
    };
    let seccomp = field("Seccomp");
    let denied = unshare.0 != 0
        && unshare.1 == Some(libc::EPERM)
        && ptrace.0 != 0
        && ptrace.1 == Some(libc::EPERM);
    out.push((
        "seccomp",
        seccomp == "2" && denied,
        format!(
            "Seccomp={seccomp}; unshare(CLONE_NEWUSER) {}; ptrace {}",
            outcome(unshare),
            outcome(ptrace)
        ),
    ));

    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    out.push(("unprivileged uid", uid == SANDBOX_UID, format!("uid {uid}")));

    let devices: Vec<String> = std::fs::read_to_string("/proc/self/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|d| d.trim().to_string()))
        .collect();
    // SAFETY: socket takes integers; a returned descriptor is closed.
    let inet = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        if fd >= 0 {
            libc::close(fd);
        }
        fd >= 0
    };
    out.push((
        "network isolation",
        devices.iter().all(|d| d == "lo") && !inet,
        format!(
            "devices {devices:?}; AF_INET socket {}",
            if inet { "allowed" } else { "refused" }
        ),
    ));

    let present: Vec<&str> = ["/home", "/root", "/run", "/var/run", "/run/user"]
        .into_iter()
        .filter(|p| Path::new(p).exists())
        .collect();
    let home_empty = std::fs::read_dir(SANDBOX_HOME).is_ok_and(|mut d| d.next().is_none());
    out.push((
        "filesystem view",
        present.is_empty() && home_empty,
        format!("host directories present: {present:?}; HOME empty: {home_empty}"),
    ));
    out
}

fn outcome((ret, err): (i32, Option<i32>)) -> String {
    if ret == 0 {
        "succeeded".into()
    } else {
        format!(
            "failed ({})",
            std::io::Error::from_raw_os_error(err.unwrap_or(0))
        )
    }
}

/// How to fix a failed check, by name.
fn fix(name: &str) -> &'static str {
    match name {
        "capabilities" => {
            "bwrap left capabilities in the sandbox; install bubblewrap 0.4 or newer, which \
             supports --cap-drop ALL"
        }
        "no_new_privs" => {
            "no_new_privs is not set; bubblewrap sets it when it loads a seccomp filter: \
             install bubblewrap 0.5 or newer"
        }
        "seccomp" => {
            "the seccomp filter is not in force; the kernel needs CONFIG_SECCOMP_FILTER and \
             bubblewrap must support --add-seccomp-fd (0.5 or newer)"
        }
        "unprivileged uid" => {
            "the sandbox does not run as uid 1000; install bubblewrap 0.4 or newer (--uid \
             with --unshare-user)"
        }
        "network isolation" => {
            "the sandbox reaches a network; set AGENTKIMI_NETWORK=off (or AGENTKIMI_NO_NET=1) \
             unless the network is wanted"
        }
        "filesystem view" => {
            "host directories are visible in the sandbox; this build's profile should never \
             mount them: reinstall agentkimi"
        }
        _ => "see the detail above",
    }
}

impl Profile {
    /// Runs the probe inside a sandbox of this profile and returns one
    /// check per layer.
    ///
    /// # Errors
    ///
    /// When the sandbox cannot be started at all.
    pub async fn check_layers(&self) -> Result<Vec<Check>, SandboxError> {
        let out = self
            .run_probe(&[EXECUTOR_PATH.to_string(), "sandbox-probe".to_string()])
            .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut checks = Vec::new();
        for line in text.lines() {
            let mut parts = line.splitn(3, '\t');
            let (Some(verdict), Some(name), Some(seen)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let result = if name == "network isolation" && self.network() == Network::On {
                Ok(format!(
                    "the network is on by configuration (AGENTKIMI_NETWORK=on): {seen}"
                ))
            } else if verdict == "pass" {
                Ok(seen.to_string())
            } else {
                Err(format!("{seen}. Fix: {}", fix(name)))
            };
            checks.push((name.to_string(), result));
        }
        if checks.is_empty() {
            return Err(SandboxError::Died(format!(
                "the probe printed nothing: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(checks)
    }
}
