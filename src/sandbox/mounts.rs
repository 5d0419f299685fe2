//! The user's toolchains inside the sandbox: extra read-only mounts, the
//! secrets masked inside them, and per-session writable caches.
//!
//! Toolchains often live in the home directory (`~/.rustup`, `~/.cargo`,
//! `~/.nvm`, `~/.pyenv`), which the sandbox does not see. `ro_paths` mounts
//! each listed tree read-only at the same path inside, so shebangs, rpaths
//! and the absolute paths baked into rustup's and pyenv's shims keep
//! working. The same trees hold credentials (`~/.cargo/credentials.toml`,
//! `.npmrc` with a token): every name in [`SECRET_PATHS`] found under a
//! mounted tree (up to [`MASK_DEPTH`] levels down, the tree root included)
//! is hidden, files behind `/dev/null` and directories behind an empty
//! read-only tmpfs. The walk runs at every sandbox start, so a credential
//! written while the server runs is hidden from the next turn on.
//!
//! Writable state goes to `$AGENTKIMI_HOME/caches/<session>/`, mounted at
//! [`CACHE_DIR`]: cargo's home and target directory, npm's, pip's, uv's and
//! Go's caches. Builds keep their downloads across turns of a session without
//! touching (or poisoning) the host's caches, and build output stays out of
//! the worktree and so out of the diff.
//!
//! Known shortcoming: secrets nested deeper than [`MASK_DEPTH`] below a
//! mounted root, or under a name not in [`SECRET_PATHS`], stay readable;
//! mount the narrowest trees that hold the toolchain.

use std::path::{Path, PathBuf};

/// Where the session's writable caches are mounted inside the sandbox.
pub const CACHE_DIR: &str = "/cache";

/// How many directory levels below a mounted root are searched for secrets.
pub const MASK_DEPTH: usize = 3;

/// Entries looked at per mounted root at most, so a huge tree cannot stall
/// every sandbox start. Past it the walk stops (and logs a warning).
const WALK_LIMIT: usize = 50_000;

/// Paths that hold credentials, as trailing path components: a mounted
/// entry whose absolute path ends with one of these is masked. Matching on
/// the absolute path makes `/root/.cargo` mounted alone still hide its
/// `credentials.toml` (the path ends with `.cargo/credentials.toml`).
pub const SECRET_PATHS: &[&str] = &[
    ".cargo/credentials",
    ".cargo/credentials.toml",
    ".npmrc",
    ".yarnrc",
    ".yarnrc.yml",
    ".pypirc",
    ".netrc",
    "_netrc",
    ".docker/config.json",
    ".config/gh",
    ".config/hub",
    ".config/gcloud",
    ".git-credentials",
    ".ssh",
    ".aws",
    ".azure",
    ".gnupg",
    ".kube",
    ".pgpass",
    ".gem/credentials",
    ".terraform.d/credentials.tfrc.json",
];

/// Trees never accepted as `ro_paths`: mounting them would hand the sandbox
/// the host's configuration, other users' homes or kernel interfaces.
const REFUSED_ROOTS: &[&str] = &[
    "/", "/home", "/root", "/etc", "/proc", "/sys", "/dev", "/run", "/var", "/boot", "/tmp",
];

/// The toolchain mounts and cache location of a server.
#[derive(Debug, Clone, Default)]
pub struct Mounts {
    ro_paths: Vec<PathBuf>,
    /// The state directory; `None` only in unit tests of the profile.
    home: Option<PathBuf>,
}

impl Mounts {
    /// Checks `ro_paths` against the state directory `home` and the refused
    /// trees. Caches go under `home/caches`.
    ///
    /// # Errors
    ///
    /// A message naming the entry and what to do, when an entry is relative,
    /// missing, or would expose the host (the root, `/etc`, a whole home, the
    /// state directory).
    pub fn new(ro_paths: &[PathBuf], home: &Path) -> Result<Mounts, String> {
        for p in ro_paths {
            check_ro_path(p, home)?;
        }
        Ok(Mounts {
            ro_paths: ro_paths.to_vec(),
            home: Some(home.to_path_buf()),
        })
    }

    /// The mounted toolchain trees.
    pub fn ro_paths(&self) -> &[PathBuf] {
        &self.ro_paths
    }

    /// The host directory of the caches of the session whose worktree is
    /// `worktree` (sessions are keyed by their worktree's directory name).
    /// `None` for a directory that is not a session worktree (the start-up
    /// probe): that sandbox gets a throwaway tmpfs instead.
    pub fn cache_dir(&self, worktree: &Path) -> Option<PathBuf> {
        let home = self.home.as_ref()?;
        let worktrees = home.join("worktrees");
        let parent = worktree.parent()?;
        let same = parent == worktrees
            || matches!(
                (std::fs::canonicalize(parent), std::fs::canonicalize(&worktrees)),
                (Ok(a), Ok(b)) if a == b
            );
        if !same {
            return None;
        }
        Some(home.join("caches").join(worktree.file_name()?))
    }

    /// bwrap arguments that mount the toolchains, mask their secrets, mount
    /// the session's caches and set the environment pointing at both.
    /// `base_path` is the sandbox's `PATH` without toolchains. They go after
    /// the profile's own arguments so this `PATH` wins. `offline` (network
    /// off) adds a read-only view of a mounted cargo home's registry to the
    /// session's `CARGO_HOME`, so crates the host already downloaded build
    /// with `--offline`; with a network, cargo needs that registry writable
    /// and starts from an empty one instead.
    pub fn args(&self, worktree: &Path, base_path: &str, offline: bool) -> Vec<String> {
        let mut a = Vec::new();
        let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
        for root in &self.ro_paths {
            let r = root.to_string_lossy();
            push(&["--ro-bind", &r, &r]);
        }
        for mask in self.masks() {
            let m = mask.path.to_string_lossy();
            if mask.dir {
                push(&["--perms", "0000", "--tmpfs", &m, "--remount-ro", &m]);
            } else {
                push(&["--ro-bind", "/dev/null", &m]);
            }
        }

        // The caches: persistent per session when the host directory can be
        // made, otherwise a throwaway tmpfs so builds still work.
        let made = self.cache_dir(worktree).map(|host_cache| {
            CACHE_SUBDIRS
                .iter()
                .try_for_each(|d| std::fs::create_dir_all(host_cache.join(d)))
                .map(|()| host_cache.clone())
                .map_err(|e| (host_cache, e))
        });
        match made {
            Some(Ok(host_cache)) => push(&["--bind", &host_cache.to_string_lossy(), CACHE_DIR]),
            Some(Err((host_cache, e))) => {
                tracing::warn!(
                    "cannot create the cache directory {}: {e}; this sandbox gets a \
                     temporary one",
                    host_cache.display()
                );
                push(&["--tmpfs", CACHE_DIR]);
            }
            None => push(&["--tmpfs", CACHE_DIR]),
        }

        if offline {
            for root in &self.ro_paths {
                if root.file_name().is_some_and(|n| n == ".cargo") {
                    for part in ["index", "cache"] {
                        let host = root.join("registry").join(part);
                        if host.is_dir() {
                            push(&[
                                "--ro-bind",
                                &host.to_string_lossy(),
                                &format!("{CACHE_DIR}/cargo/registry/{part}"),
                            ]);
                        }
                    }
                }
            }
        }

        let mut path: Vec<String> = Vec::new();
        let mut env: Vec<(String, String)> = Vec::new();
        for root in &self.ro_paths {
            toolchain_env(root, &mut path, &mut env);
        }
        if Path::new("/usr/local/go/bin").is_dir() {
            path.push("/usr/local/go/bin".into());
        }
        path.push(base_path.to_string());
        env.push(("PATH".into(), path.join(":")));
        for (k, sub) in CACHE_ENV {
            env.push((k.to_string(), format!("{CACHE_DIR}/{sub}")));
        }
        for (k, v) in &env {
            push(&["--setenv", k, v]);
        }
        a
    }

    /// Every secret under the mounted trees, found now.
    pub fn masks(&self) -> Vec<Mask> {
        let mut out: Vec<Mask> = Vec::new();
        for root in &self.ro_paths {
            walk(root, 0, &mut 0, &self.ro_paths, &mut out);
        }
        // A path masked twice (nested roots) would only stack mounts.
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out.dedup_by(|a, b| a.path == b.path);
        out
    }
}

/// Deletes the caches of the session whose worktree was `worktree`, under
/// the state directory `home`; a session's caches die with its worktree.
pub fn remove_session_cache(home: &Path, worktree: &Path) {
    let Some(key) = worktree.file_name() else {
        return;
    };
    let dir = home.join("caches").join(key);
    // remove_dir_all does not follow symlinks a build left in the cache.
    match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!("cannot remove the session cache {}: {e}", dir.display());
        }
        _ => {}
    }
}

/// Subdirectories of a session's cache directory.
const CACHE_SUBDIRS: &[&str] = &[
    "cargo", "target", "npm", "pip", "uv", "go", "go-build", "xdg",
];

/// Cache variables and where under [`CACHE_DIR`] each points.
const CACHE_ENV: &[(&str, &str)] = &[
    ("CARGO_HOME", "cargo"),
    ("CARGO_TARGET_DIR", "target"),
    ("npm_config_cache", "npm"),
    ("PIP_CACHE_DIR", "pip"),
    ("UV_CACHE_DIR", "uv"),
    ("GOPATH", "go"),
    ("GOMODCACHE", "go/pkg/mod"),
    ("GOCACHE", "go-build"),
    ("XDG_CACHE_HOME", "xdg"),
];

/// One secret to hide inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mask {
    /// Absolute path, the same inside and outside.
    pub path: PathBuf,
    /// A directory (hidden by an empty tmpfs) rather than a file (hidden by
    /// `/dev/null`).
    pub dir: bool,
}

fn is_secret(path: &Path) -> bool {
    SECRET_PATHS.iter().any(|s| path.ends_with(Path::new(s)))
}

fn walk(p: &Path, depth: usize, seen: &mut usize, roots: &[PathBuf], out: &mut Vec<Mask>) {
    *seen += 1;
    if *seen > WALK_LIMIT {
        if *seen == WALK_LIMIT + 1 {
            tracing::warn!(
                "stopped looking for secrets under {} after {WALK_LIMIT} entries; mount a \
                 narrower tree",
                p.display()
            );
        }
        return;
    }
    let Ok(meta) = std::fs::symlink_metadata(p) else {
        return;
    };
    let ft = meta.file_type();
    if is_secret(p) {
        if ft.is_symlink() {
            // The link resolves inside the sandbox. Its target is visible
            // only if it lies in a mounted tree: hide the target then.
            if let Ok(target) = std::fs::canonicalize(p)
                && roots.iter().any(|r| target.starts_with(r))
            {
                out.push(Mask {
                    dir: target.is_dir(),
                    path: target,
                });
            }
        } else if ft.is_dir() {
            out.push(Mask {
                path: p.to_path_buf(),
                dir: true,
            });
        } else if ft.is_file() {
            out.push(Mask {
                path: p.to_path_buf(),
                dir: false,
            });
        }
        return;
    }
    if !ft.is_dir() || depth >= MASK_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(p) else {
        return;
    };
    for e in entries.flatten() {
        walk(&e.path(), depth + 1, seen, roots, out);
    }
}

fn check_ro_path(p: &Path, home: &Path) -> Result<(), String> {
    let shown = p.display();
    if !p.is_absolute() {
        return Err(format!(
            "ro_paths entry {shown} is not an absolute path; write it in full, e.g. /root/.cargo"
        ));
    }
    let real = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let real_home = std::fs::canonicalize(home).unwrap_or_else(|_| home.to_path_buf());
    for cand in [p, real.as_path()] {
        let whole_home = cand.parent() == Some(Path::new("/home"));
        if REFUSED_ROOTS.iter().any(|r| cand == Path::new(r)) || whole_home {
            return Err(format!(
                "ro_paths entry {shown} is refused: it would show the sandbox a whole system \
                 or home directory. List the toolchain directories themselves (run `agentkimi \
                 doctor` for suggestions)"
            ));
        }
        if real_home.starts_with(cand) || cand.starts_with(&real_home) || home.starts_with(cand) {
            return Err(format!(
                "ro_paths entry {shown} is refused: it overlaps the agentkimi state directory \
                 {}, which holds every session's worktree and history",
                home.display()
            ));
        }
    }
    if !p.exists() {
        return Err(format!(
            "ro_paths entry {shown} does not exist; remove it from ro_paths \
             (AGENTKIMI_RO_PATHS or config.toml), or install the toolchain there"
        ));
    }
    Ok(())
}

/// PATH entries and variables a mounted toolchain root needs.
fn toolchain_env(root: &Path, path: &mut Vec<String>, env: &mut Vec<(String, String)>) {
    let name = root
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let r = root.to_string_lossy().into_owned();
    let mut add_dir = |d: PathBuf| {
        if d.is_dir() {
            path.push(d.to_string_lossy().into_owned());
        }
    };
    match name.as_str() {
        ".rustup" => env.push(("RUSTUP_HOME".into(), r)),
        ".nvm" => {
            env.push(("NVM_DIR".into(), r));
            if let Some(bin) = nvm_default_bin(root) {
                add_dir(bin);
            }
        }
        ".pyenv" => {
            env.push(("PYENV_ROOT".into(), r));
            add_dir(root.join("shims"));
            add_dir(root.join("bin"));
        }
        _ => add_dir(root.join("bin")),
    }
}

/// The `bin` directory of nvm's default Node version: the one named by
/// `alias/default` (a version or a prefix of one), else the newest installed.
fn nvm_default_bin(root: &Path) -> Option<PathBuf> {
    let versions = root.join("versions/node");
    let mut installed: Vec<String> = std::fs::read_dir(&versions)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    installed.sort_by_key(|v| version_key(v));
    let wanted = std::fs::read_to_string(root.join("alias/default"))
        .ok()
        .map(|s| s.trim().trim_start_matches('v').to_string());
    let pick = wanted
        .and_then(|w| {
            installed
                .iter()
                .rev()
                .find(|v| v.trim_start_matches('v').starts_with(&w))
                .cloned()
        })
        .or_else(|| installed.last().cloned())?;
    Some(versions.join(pick).join("bin"))
}

fn version_key(v: &str) -> Vec<u64> {
    v.trim_start_matches('v')
        .split('.')
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

/// A toolchain tree `agentkimi doctor` found on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preset {
    /// What it is, for the doctor's line ("rustup toolchains").
    pub name: &'static str,
    /// The tree to mount.
    pub path: PathBuf,
}

/// Looks for the usual toolchain trees under `user_home` (and root's home
/// when that is a different one): rustup, cargo, nvm, pyenv, uv, Go.
pub fn detect_presets(user_home: Option<&Path>) -> Vec<Preset> {
    let mut homes: Vec<PathBuf> = user_home.map(Path::to_path_buf).into_iter().collect();
    if !homes.iter().any(|h| h == Path::new("/root")) {
        homes.push("/root".into());
    }
    let mut out = Vec::new();
    for h in &homes {
        for (name, rel) in [
            ("rustup toolchains", ".rustup"),
            ("cargo binaries", ".cargo"),
            ("nvm (Node)", ".nvm"),
            ("pyenv (Python)", ".pyenv"),
            ("uv tools and Pythons", ".local/share/uv"),
            ("Go workspace", "go"),
        ] {
            let p = h.join(rel);
            if p.is_dir() && !out.iter().any(|x: &Preset| x.path == p) {
                out.push(Preset { name, path: p });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_trees_that_expose_the_host() {
        let home = tempfile::tempdir().unwrap();
        for p in ["/", "/etc", "/root", "/home"] {
            let e = Mounts::new(&[PathBuf::from(p)], home.path()).unwrap_err();
            assert!(e.contains("refused"), "{p}: {e}");
        }
        let e = Mounts::new(&[PathBuf::from("relative/bin")], home.path()).unwrap_err();
        assert!(e.contains("absolute"), "{e}");
        let e = Mounts::new(&[PathBuf::from("/no/such/toolchain")], home.path()).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        let state = home.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let e = Mounts::new(&[home.path().to_path_buf()], &state).unwrap_err();
        assert!(e.contains("state directory"), "{e}");
    }

    #[test]
    fn finds_secrets_at_any_depth_up_to_the_limit() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join(".cargo");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::write(root.join("credentials.toml"), "token").unwrap();
        std::fs::create_dir_all(root.join("a/.ssh")).unwrap();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/.npmrc"), "t").unwrap();
        std::fs::create_dir_all(root.join("a/b/c/d")).unwrap();
        std::fs::write(root.join("a/b/c/d/.netrc"), "deep").unwrap();
        let home = t.path().join("state");
        let m = Mounts::new(std::slice::from_ref(&root), &home).unwrap();
        let masks = m.masks();
        let paths: Vec<&Path> = masks.iter().map(|m| m.path.as_path()).collect();
        assert!(paths.contains(&root.join("credentials.toml").as_path()));
        assert!(paths.contains(&root.join("a/b/.npmrc").as_path()));
        assert!(masks.contains(&Mask {
            path: root.join("a/.ssh"),
            dir: true
        }));
        // Deeper than MASK_DEPTH: the documented limit.
        assert!(!paths.contains(&root.join("a/b/c/d/.netrc").as_path()));
    }

    #[test]
    fn env_puts_toolchains_on_path_and_caches_in_cache_dir() {
        let t = tempfile::tempdir().unwrap();
        let cargo = t.path().join(".cargo");
        let rustup = t.path().join(".rustup");
        std::fs::create_dir_all(cargo.join("bin")).unwrap();
        std::fs::create_dir_all(&rustup).unwrap();
        let home = t.path().join("state");
        let m = Mounts::new(&[cargo.clone(), rustup.clone()], &home).unwrap();
        let a = m.args(&home.join("worktrees/sess1"), "/usr/bin:/bin", true);
        let joined = a.join(" ");
        assert!(joined.contains(&format!(
            "--setenv PATH {}:/usr/bin:/bin",
            cargo.join("bin").display()
        )));
        assert!(joined.contains(&format!("--setenv RUSTUP_HOME {}", rustup.display())));
        assert!(joined.contains("--setenv CARGO_HOME /cache/cargo"));
        assert!(joined.contains("--setenv CARGO_TARGET_DIR /cache/target"));
        assert!(home.join("caches/sess1/cargo").is_dir());
        assert!(joined.contains(&format!(
            "--bind {} /cache",
            home.join("caches/sess1").display()
        )));
    }
}
