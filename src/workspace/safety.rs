//! Guarding the files libgit2 reads from the worktree by name.
//!
//! libgit2 opens `.gitignore` and `.gitattributes` in every directory it
//! visits, and `.gitmodules` at the top, by path: it follows symlinks and
//! opens whatever is there. A FIFO with no writer would block the host
//! forever (the sandbox that could write to it is gone), a device node could
//! do anything a read does, and a symlink could make the host read files
//! outside the worktree. Git itself refuses symlinked versions of these files
//! in the work tree. Since libgit2 offers no switch for this, the worktree
//! is scanned before each diff and commit and any such entry that is not a
//! regular file stops the operation with an error the model can act on.

use std::{
    ffi::OsStr,
    fs::{self, FileType},
    os::unix::{ffi::OsStrExt, fs::FileTypeExt},
    path::Path,
};

use super::{WorkspaceError, display_path, io_err};

/// File names libgit2 reads from the work tree.
const READ_BY_NAME: [&str; 3] = [".gitignore", ".gitattributes", ".gitmodules"];

/// Fails with [`WorkspaceError::UnsafeGitFile`] if any `.gitignore`,
/// `.gitattributes` or `.gitmodules` under `worktree` is a symlink, FIFO,
/// socket or device node.
///
/// Walks the whole tree without following symlinks, skipping `.git` entries
/// as libgit2 does. Directories it cannot read are skipped: libgit2 cannot
/// read them either.
pub(super) fn check_git_files(worktree: &Path) -> Result<(), WorkspaceError> {
    let mut stack = vec![worktree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if dir == worktree => return Err(io_err("read the worktree", worktree)(e)),
            Err(_) => continue,
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if name.eq_ignore_ascii_case(".git") {
                continue;
            }
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            if file_type.is_dir() {
                stack.push(entry.path());
                continue;
            }
            if file_type.is_file() || !READ_BY_NAME.iter().any(|n| OsStr::new(n) == name) {
                continue;
            }
            let path = entry.path();
            let relative = path.strip_prefix(worktree).unwrap_or(&path);
            return Err(WorkspaceError::UnsafeGitFile {
                path: display_path(relative.as_os_str().as_bytes()),
                kind: kind_name(file_type),
            });
        }
    }
    Ok(())
}

/// A short description of a non-regular, non-directory file type.
fn kind_name(file_type: FileType) -> &'static str {
    if file_type.is_symlink() {
        "symbolic link"
    } else if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "device node"
    } else {
        "special file"
    }
}
