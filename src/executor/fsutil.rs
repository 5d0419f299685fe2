//! File-system helpers shared by the tools: resolving the paths the model
//! sends, wording "not found" errors with hints, and replacing a file's
//! contents atomically.
//!
//! Paths get no special treatment here. The sandbox's mount namespace
//! decides what the executor can reach, and the host checks paths before a
//! call gets this far, so the executor only performs ordinary file
//! operations on whatever path it is given.

use std::{
    fs, io,
    io::Write as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use super::text::edit_distance;

/// Resolves a path from tool input: relative paths are taken from the
/// worktree root, absolute paths are used as given. `.` components and
/// repeated slashes are dropped so messages show a clean path; `..` is kept,
/// because removing it without the file system could change the meaning
/// across a symlink.
pub(super) fn resolve(root: &Path, path: &str) -> PathBuf {
    let joined = if Path::new(path).is_absolute() {
        PathBuf::from(path)
    } else {
        root.join(path)
    };
    joined.components().collect()
}

/// The message for a path that does not exist: the path, and either up to
/// three similar names from its directory or the fact that the directory is
/// missing too.
pub(super) fn not_found(kind: &str, path: &Path) -> String {
    let mut message = format!("{kind} not found: {}", path.display());
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return message;
    };
    if !parent.is_dir() {
        message.push_str(&format!(
            " (the directory {} does not exist either)",
            parent.display()
        ));
        return message;
    }
    let similar = similar_names(parent, &name.to_string_lossy());
    if !similar.is_empty() {
        let shown: Vec<String> = similar
            .iter()
            .map(|n| parent.join(n).display().to_string())
            .collect();
        message.push_str(&format!("; did you mean: {}", shown.join(", ")));
    }
    message
}

/// Up to three entries of `dir` whose names are close to `name`: a small
/// edit distance, or the same name up to the extension. Only the first
/// few thousand entries are looked at, so a huge directory stays cheap.
fn similar_names(dir: &Path, name: &str) -> Vec<String> {
    const MAX_SCANNED: usize = 5000;
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let wanted = name.to_lowercase();
    let wanted_stem = wanted.split('.').next().unwrap_or_default().to_string();
    let limit = (wanted.chars().count() / 3).max(2);

    let mut found: Vec<(usize, String)> = entries
        .take(MAX_SCANNED)
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let candidate = entry.file_name().to_string_lossy().into_owned();
            let lower = candidate.to_lowercase();
            let distance = edit_distance(&wanted, &lower);
            let same_stem =
                !wanted_stem.is_empty() && lower.split('.').next() == Some(wanted_stem.as_str());
            (distance <= limit || same_stem).then_some((distance, candidate))
        })
        .collect();
    found.sort();
    found.into_iter().take(3).map(|(_, n)| n).collect()
}

/// Whether [`write_atomic`] created a new file or replaced an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Written {
    Created,
    Replaced,
}

/// Writes `bytes` to `path` so that readers see either the old or the new
/// contents, never a mix: the bytes go to a temporary file in the same
/// directory, which is then renamed over the target. Parent directories are
/// created as needed, and an existing file keeps its permission bits.
///
/// If `path` is a symlink, the file it points to is replaced and the link
/// stays, as a plain write would do; renaming over the link itself would
/// silently turn it into a regular file.
///
/// # Errors
///
/// Any I/O error creating the directory, writing or renaming; the temporary
/// file is removed on failure.
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<Written> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let is_link = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    let target = if is_link {
        fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
    } else {
        path.to_path_buf()
    };
    let existing = fs::metadata(&target).ok();
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path has no file name",
        ));
    };
    fs::create_dir_all(dir)?;

    let tmp = dir.join(format!(
        ".{}.agentkimi-{}-{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        if let Some(meta) = &existing {
            file.set_permissions(meta.permissions())?;
        }
        drop(file);
        fs::rename(&tmp, &target)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(if existing.is_some() {
        Written::Replaced
    } else {
        Written::Created
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn resolve_paths() {
        let root = Path::new("/w/tree");
        assert_eq!(resolve(root, "src/a.rs"), PathBuf::from("/w/tree/src/a.rs"));
        assert_eq!(
            resolve(root, "./src//a.rs"),
            PathBuf::from("/w/tree/src/a.rs")
        );
        assert_eq!(resolve(root, "/etc/hosts"), PathBuf::from("/etc/hosts"));
        assert_eq!(resolve(root, "../x"), PathBuf::from("/w/tree/../x"));
    }

    #[test]
    fn not_found_suggests_similar_names() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["main.rs", "lib.rs", "unrelated.txt", "main.ts"] {
            fs::write(dir.path().join(name), "").unwrap();
        }
        let message = not_found("file", &dir.path().join("mian.rs"));
        let d = dir.path().display();
        assert_eq!(
            message,
            format!("file not found: {d}/mian.rs; did you mean: {d}/main.rs")
        );
        let message = not_found("file", &dir.path().join("main.py"));
        assert_eq!(
            message,
            format!("file not found: {d}/main.py; did you mean: {d}/main.rs, {d}/main.ts")
        );
        let message = not_found("file", &dir.path().join("nope/x"));
        assert_eq!(
            message,
            format!("file not found: {d}/nope/x (the directory {d}/nope does not exist either)")
        );
    }

    #[test]
    fn atomic_write_keeps_mode_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("script.sh");
        assert_eq!(write_atomic(&file, b"one").unwrap(), Written::Created);
        fs::set_permissions(&file, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(write_atomic(&file, b"two").unwrap(), Written::Replaced);
        assert_eq!(fs::read(&file).unwrap(), b"two");
        let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);

        let link = dir.path().join("link.sh");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        write_atomic(&link, b"three").unwrap();
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&file).unwrap(), b"three");

        let nested = dir.path().join("a/b/c.txt");
        assert_eq!(write_atomic(&nested, b"x").unwrap(), Written::Created);
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }
}
