//! Resource limits of a sandbox: processes, file size, worktree disk use.
//!
//! Namespaces and seccomp decide what the sandbox may touch; these limits
//! decide how much of the machine it may use, so a fork bomb, an endless
//! writer or a runaway build cannot starve the host.
//!
//! - Processes: a per-sandbox `pids` cgroup (v2, or v1 as on hosts that
//!   still mount the legacy hierarchies) whose `pids.max` caps every process
//!   and thread inside. `RLIMIT_NPROC` is not enough on its own: the kernel
//!   counts it per real uid on the host and ignores it for root, and the
//!   sandbox uid maps to the server's uid. When no cgroup can be created
//!   (an unprivileged server without a delegated cgroup), `RLIMIT_NPROC` is
//!   the fallback, which holds for a non-root server and not for root; the
//!   `doctor` command reports which one is in force.
//! - File size: `RLIMIT_FSIZE`, set before bwrap starts and inherited by
//!   everything inside; a write past it fails with `EFBIG`.
//! - Worktree disk use: the worktree is on the host's disk, so it is
//!   measured while a tool call runs and after it; past the limit the
//!   sandbox is killed and the turn ends with a message saying why.
//! - `/tmp` (which holds HOME) is a tmpfs sized by bwrap (`--size`).

use std::{
    collections::HashSet,
    ffi::CString,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// Mebibytes to bytes, saturating.
pub fn mib(n: u64) -> u64 {
    n.saturating_mul(1 << 20)
}

/// Which kind of process limit sandboxes get on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessLimit {
    /// A per-sandbox cgroup under this directory, which has the `pids`
    /// controller.
    Cgroup {
        /// The parent of the per-sandbox cgroups (`…/agentkimi`).
        parent: PathBuf,
        /// Whether it is the unified (v2) hierarchy.
        v2: bool,
    },
    /// Only `RLIMIT_NPROC`, with the reason no cgroup could be used.
    Rlimit(String),
}

impl ProcessLimit {
    /// Finds a `pids` cgroup hierarchy this process may create cgroups in,
    /// and proves it by creating and removing one.
    pub fn detect() -> ProcessLimit {
        let mut why = Vec::new();
        let root = Path::new("/sys/fs/cgroup");
        let candidates = [
            (root.to_path_buf(), true),
            (root.join("unified"), true),
            (root.join("pids"), false),
        ];
        for (base, v2) in candidates {
            let ok = if v2 {
                std::fs::read_to_string(base.join("cgroup.subtree_control"))
                    .is_ok_and(|s| s.split_whitespace().any(|c| c == "pids"))
            } else {
                base.join("tasks").exists()
            };
            if !ok {
                continue;
            }
            let parent = base.join("agentkimi");
            match prepare_parent(&parent, v2).and_then(|()| {
                let probe = SandboxCgroup::create(
                    &ProcessLimit::Cgroup {
                        parent: parent.clone(),
                        v2,
                    },
                    16,
                    None,
                )?;
                drop(probe);
                Ok(())
            }) {
                Ok(()) => return ProcessLimit::Cgroup { parent, v2 },
                Err(e) => why.push(format!("{}: {e}", parent.display())),
            }
        }
        if why.is_empty() {
            why.push("no cgroup hierarchy with the pids controller is mounted".into());
        }
        ProcessLimit::Rlimit(why.join("; "))
    }
}

fn prepare_parent(parent: &Path, v2: bool) -> std::io::Result<()> {
    match std::fs::create_dir(parent) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    if v2 {
        // Children of the parent get a pids.max only once the parent hands
        // the controller down.
        std::fs::write(parent.join("cgroup.subtree_control"), "+pids")?;
    }
    remove_stale(parent);
    Ok(())
}

/// Removes per-sandbox cgroups left by servers that died without cleaning
/// up. Names carry the creating server's pid; only those of dead servers
/// are touched, and `rmdir` refuses a cgroup that still has processes.
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("sb-"))
            .and_then(|n| n.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir(entry.path());
        }
    }
}

static NEXT_CGROUP: AtomicU64 = AtomicU64::new(1);

/// Empty per-sandbox cgroups kept for reuse, which saves creating and
/// setting up a cgroup for every sandbox (about 1.5 ms here). Joining one
/// still costs about 12 ms on cgroup v1 from this multi-threaded server,
/// fresh or reused: the kernel's attach path waits for an RCU grace period.
/// That wait is the largest single cost of starting a sandbox, and joining
/// before exec is the only way to have every sandboxed process counted.
/// Pooled cgroups are named after this server's pid, so a later server
/// removes them with the other stale ones if this one dies.
pub type CgroupPool = std::sync::Arc<std::sync::Mutex<Vec<PathBuf>>>;

/// The cgroup of one sandbox. Dropping it kills whatever is still inside,
/// then hands it back to the pool it came from (or removes it).
#[derive(Debug)]
pub struct SandboxCgroup {
    dir: PathBuf,
    v2: bool,
    procs: CString,
    pool: Option<CgroupPool>,
}

impl SandboxCgroup {
    /// Creates a cgroup allowing `max` processes under `limit`'s parent.
    ///
    /// # Errors
    ///
    /// When `limit` is not a cgroup, or the cgroup cannot be made.
    pub fn create(
        limit: &ProcessLimit,
        max: u64,
        pool: Option<&CgroupPool>,
    ) -> std::io::Result<SandboxCgroup> {
        let ProcessLimit::Cgroup { parent, v2 } = limit else {
            return Err(std::io::Error::other("no cgroup hierarchy is in use"));
        };
        let reused = pool.and_then(|p| p.lock().unwrap_or_else(|e| e.into_inner()).pop());
        let dir = match reused {
            Some(dir) => dir,
            None => {
                let n = NEXT_CGROUP.fetch_add(1, Ordering::Relaxed);
                let dir = parent.join(format!("sb-{}-{n}", std::process::id()));
                std::fs::create_dir(&dir)?;
                dir
            }
        };
        let cg = SandboxCgroup {
            procs: CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
                .map_err(std::io::Error::other)?,
            dir,
            v2: *v2,
            pool: pool.cloned(),
        };
        std::fs::write(cg.dir.join("pids.max"), max.to_string())?;
        Ok(cg)
    }

    /// `cgroup.procs` as a C string, for the child to join between fork
    /// and exec (writing `0` moves the writer).
    pub fn procs_path(&self) -> &CString {
        &self.procs
    }

    /// The highest number of processes the cgroup held at once, where the
    /// kernel reports it.
    pub fn peak(&self) -> Option<u64> {
        std::fs::read_to_string(self.dir.join("pids.peak"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// Kills every process in the cgroup and waits (briefly) until it is
    /// empty. The PID namespace already ends them when bwrap dies; this is
    /// the second guarantee, and it does not depend on bwrap's pid.
    pub fn kill_all(&self) {
        if self.v2 && std::fs::write(self.dir.join("cgroup.kill"), "1").is_ok() {
            self.wait_empty();
            return;
        }
        // Processes die within a millisecond or two of SIGKILL; poll at
        // that pace (for at most half a second) so ending a turn does not
        // wait on a coarse sleep.
        for _ in 0..500 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn wait_empty(&self) {
        for _ in 0..500 {
            if self.pids().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for SandboxCgroup {
    fn drop(&mut self) {
        self.kill_all();
        if let Some(pool) = &self.pool
            && self.pids().is_empty()
        {
            pool.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(self.dir.clone());
            return;
        }
        for _ in 0..20 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        tracing::warn!(cgroup = %self.dir.display(), "could not remove a sandbox cgroup");
    }
}

/// Disk space used by the files under `root`, in bytes, counted by
/// allocated blocks (a sparse file costs what it occupies), each inode once
/// (hard links do not multiply), links never followed. Stops counting once
/// past `stop_at`, so a check of a huge tree stays cheap.
pub fn disk_usage(root: &Path, stop_at: u64) -> u64 {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
                continue;
            }
            total = total.saturating_add(meta.blocks().saturating_mul(512));
            if total > stop_at {
                return total;
            }
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_usage_counts_blocks_once_and_skips_links() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::write(&big, vec![1u8; 1 << 20]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::hard_link(&big, dir.path().join("sub/hard")).unwrap();
        std::os::unix::fs::symlink("/usr", dir.path().join("usr-link")).unwrap();
        // A sparse file of 1 GiB occupies almost nothing.
        let sparse = std::fs::File::create(dir.path().join("sparse")).unwrap();
        sparse.set_len(1 << 30).unwrap();

        let used = disk_usage(dir.path(), u64::MAX);
        assert!(used >= 1 << 20, "{used}");
        assert!(used < 3 << 20, "{used}");
        assert!(disk_usage(dir.path(), 1000) > 1000);
    }
}
