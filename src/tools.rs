//! The tools offered to the model: their specs, the host-side gate, and the
//! facts the host records about each call.
//!
//! Names and input schemas follow Claude Code's, because Kimi is trained to
//! drive those tools; the descriptions are our own and say exactly how each
//! tool behaves here, since the model reads them on every step.
//!
//! The gate is defence in depth, not the boundary: the sandbox's namespaces
//! already keep a call from touching anything outside the worktree. The gate
//! exists to turn an obvious escape attempt into a clear refusal the model
//! can read, before anything runs.

use std::{
    path::{Component, Path, PathBuf},
    sync::LazyLock,
    time::Duration,
};

use regex::Regex;

use serde_json::{Value, json};

use crate::config::Network;

/// Longest time the host waits for a non-shell tool call before it ends the
/// sandbox.
const FILE_TOOL_LIMIT: Duration = Duration::from_secs(120);
/// Default and largest Bash timeouts, as Claude Code's.
const BASH_DEFAULT_MS: u64 = 120_000;
const BASH_MAX_MS: u64 = 600_000;

/// The tool definitions sent to the model with every step. WebFetch is
/// offered only when the sandbox has the network: without it every fetch
/// would fail, and an offered tool that cannot work wastes the model's steps.
pub fn specs(network: Network) -> Vec<Value> {
    let mut specs = vec![
        json!({
            "name": "Read",
            "description": "Read a text file from the working tree. Returns lines numbered like \
                `cat -n` (number, tab, text), 2000 lines from the start unless you pass \
                `offset` (1-based first line) and `limit` (line count). Lines over 2000 \
                characters are cut with a marker. Empty and binary files are reported as such. \
                A directory is refused: use LS or Glob for those. Relative paths resolve \
                against the working tree. Read a file before you Edit it or overwrite it.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "file_path": {
                        "type": "string",
                        "description": "Path of the file, absolute or relative to the working tree."
                    },
                    "offset": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "First line to read, counting from 1."
                    },
                    "limit": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "Number of lines to read."
                    }
                },
                "required": ["file_path"],
                "additionalProperties": false
            }
        }),
        json!({
            "name": "Write",
            "description": "Create or replace a file with `content`, creating parent \
                directories as needed. The write is atomic and keeps an existing file's \
                permissions. Replacing an existing file is refused unless you have Read it in \
                this session and it has not changed since (a Bash command that rewrote it \
                counts as a change); then Read it and try again. Prefer Edit for changing part \
                of an existing file.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "file_path": {
                        "type": "string",
                        "description": "Path of the file, absolute or relative to the working tree."
                    },
                    "content": {
                        "type": "string",
                        "description": "The complete new content of the file."
                    }
                },
                "required": ["file_path", "content"],
                "additionalProperties": false
            }
        }),
        json!({
            "name": "Edit",
            "description": "Replace text in a file. `old_string` must match the file exactly, \
                whitespace and indentation included, and must occur exactly once unless \
                `replace_all` is true; otherwise the edit is refused and the error shows the \
                nearest candidates or the line numbers of each occurrence. Add surrounding \
                lines to `old_string` to make it unique. Line endings and the file's final \
                newline are preserved. You must have Read the file in this session, and Read it \
                again if it changed since, or the edit is refused. The result shows the edited \
                region with line numbers.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "file_path": {"type": "string", "description": "Path of the file to edit."},
                    "old_string": {"type": "string", "description": "Exact text to replace."},
                    "new_string": {
                        "type": "string",
                        "description": "Replacement text; must differ from old_string."
                    },
                    "replace_all": {
                        "type": "boolean",
                        "default": false,
                        "description": "Replace every occurrence instead of exactly one."
                    }
                },
                "required": ["file_path", "old_string", "new_string"],
                "additionalProperties": false
            }
        }),
        json!({
            "name": "MultiEdit",
            "description": "Apply several Edit operations to one file, in order, each on the \
                result of the previous one. Either all of them apply or none does: if any edit \
                fails, the file is left untouched and the error names the failing edit. The \
                same Read rule as Edit applies.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "file_path": {"type": "string", "description": "Path of the file to edit."},
                    "edits": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "properties": {
                                "old_string": {"type": "string"},
                                "new_string": {"type": "string"},
                                "replace_all": {"type": "boolean", "default": false}
                            },
                            "required": ["old_string", "new_string"],
                            "additionalProperties": false
                        }
                    }
                },
                "required": ["file_path", "edits"],
                "additionalProperties": false
            }
        }),
        json!({
            "name": "Glob",
            "description": "Find files by glob pattern (for example `**/*.rs` or \
                `src/**/test_*.py`), matched against paths relative to `path` (default: the \
                working tree). `*` does not cross `/`, so `*.rs` finds files directly in `path` \
                only; use `**/*.rs` for any depth. Files ignored by .gitignore and hidden files \
                (names starting with a dot) are skipped, whatever the pattern. Results are \
                absolute paths, most recently modified first, at most 100 with a note when more \
                matched.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "pattern": {"type": "string", "description": "Glob pattern."},
                    "path": {
                        "type": "string",
                        "description": "Directory to search; defaults to the working tree."
                    }
                },
                "required": ["pattern"],
                "additionalProperties": false
            }
        }),
        json!({
            "name": "Grep",
            "description": "Search file contents with a regular expression (Rust regex syntax, \
                as ripgrep). Respects .gitignore. Hidden and binary files are skipped. \
                `output_mode`: `files_with_matches` (default; matching file paths, newest \
                first), `content` (matching lines as `path:text`, or `path:line:text` with \
                `-n`, with context via `-A`/`-B`/`-C`), or `count` (`path:count`). Paths in the \
                output are absolute. Output over 30,000 characters is cut with a note. Filter \
                files with `glob` (e.g. `*.ts`) or `type` (e.g. `rust`, `py`). `-i` ignores \
                case; `multiline` lets `.` and patterns span lines. `head_limit` keeps only the \
                first N results.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "pattern": {
                        "type": "string",
                        "description": "Regular expression to search for."
                    },
                    "path": {
                        "type": "string",
                        "description": "File or directory to search; defaults to the working tree."
                    },
                    "glob": {
                        "type": "string",
                        "description": "Only search files matching this glob."
                    },
                    "type": {
                        "type": "string",
                        "description": "Only search files of this type (ripgrep type names)."
                    },
                    "output_mode": {
                        "type": "string",
                        "enum": ["content", "files_with_matches", "count"]
                    },
                    "-i": {"type": "boolean", "description": "Case-insensitive search."},
                    "-n": {"type": "boolean", "description": "Show line numbers (content mode)."},
                    "-A": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Lines of context after each match."
                    },
                    "-B": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Lines of context before each match."
                    },
                    "-C": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Lines of context around each match."
                    },
                    "multiline": {"type": "boolean", "description": "Allow matches across lines."},
                    "head_limit": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "Keep only the first N results."
                    }
                },
                "required": ["pattern"],
                "additionalProperties": false
            }
        }),
        json!({
            "name": "LS",
            "description": "List a directory: entries sorted by name, directories marked with a \
                trailing `/`, hidden and git-ignored entries included, at most 1000. `ignore` \
                takes glob patterns of names to leave out. Use Glob to find files in \
                subdirectories.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "Directory to list."},
                    "ignore": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "Glob patterns to leave out."
                    }
                },
                "required": ["path"],
                "additionalProperties": false
            }
        }),
        json!({
            "name": "Bash",
            "description": "Run a command with bash in the sandbox. The working directory \
                carries over between calls (a `cd` sticks); environment variables and shell \
                state do not. stdin is empty; stdout and stderr are returned together, followed \
                by the exit code and duration. Output over about 30,000 characters is cut in \
                the middle with a marker saying how much. `timeout` is in milliseconds: 120000 \
                by default, 600000 at most; at the timeout the command and everything it \
                started is killed. Processes left running when the command exits are stopped. \
                git does not work in the sandbox; the host records your changes.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The command line to run."},
                    "timeout": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 600000,
                        "description": "Timeout in milliseconds."
                    },
                    "description": {
                        "type": "string",
                        "description": "Five to ten words on what the command does."
                    },
                    "run_in_background": {
                        "type": "boolean",
                        "description": "Start the command in the background and return its \
                            shell id at once; read its output with BashOutput, stop it with \
                            KillShell. Background commands end with the turn."
                    }
                },
                "required": ["command"],
                "additionalProperties": false
            }
        }),
        json!({
            "name": "BashOutput",
            "description": "Return the output a background shell (started by Bash with \
                run_in_background) produced since the last BashOutput call for it, and whether \
                it is still running or its exit code. `filter` keeps only lines matching a \
                regular expression; lines filtered out are not returned again.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "bash_id": {"type": "string", "description": "The shell id Bash returned."},
                    "filter": {
                        "type": "string",
                        "description": "Regular expression; only matching lines are returned."
                    }
                },
                "required": ["bash_id"],
                "additionalProperties": false
            }
        }),
        json!({
            "name": "KillShell",
            "description": "Stop a background shell and every process it started.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "shell_id": {"type": "string", "description": "The shell id Bash returned."}
                },
                "required": ["shell_id"],
                "additionalProperties": false
            }
        }),
        json!({
            "name": "TodoWrite",
            "description": "Keep a todo list for this task: send the whole list each time (it replaces the previous one). Each item has `content` (imperative: \"Run the tests\"), `status` (`pending`, `in_progress` or `completed`) and `activeForm` (present continuous: \"Running the tests\"). Keep exactly one item in_progress while you work, and mark an item completed as soon as it is done. The list is kept for the whole session, shown to the engineer who gave you the task, and returned to you as the result. Use it for tasks of three or more steps; skip it for trivial ones.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "todos": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "content": {"type": "string", "minLength": 1},
                                "status": {
                                    "type": "string",
                                    "enum": ["pending", "in_progress", "completed"]
                                },
                                "activeForm": {"type": "string", "minLength": 1},
                                "id": {"type": "string"}
                            },
                            "required": ["content", "status"],
                            "additionalProperties": false
                        }
                    }
                },
                "required": ["todos"],
                "additionalProperties": false
            }
        }),
    ];
    if network != Network::Off {
        specs.push(json!({
            "name": "WebFetch",
            "description": "Fetch a web page from inside the sandbox and return its readable \
                text: HTML is turned into Markdown-like text (headings, lists, links as \
                [text](url)); plain text and JSON come back as they are. `http://` URLs are \
                upgraded to `https://` except for localhost and loopback addresses. Redirects \
                to the same host are followed; a redirect to another host is reported with its \
                target so you can fetch that URL yourself. The text is cut at 100,000 \
                characters with a marker; the request times out after 30 seconds. `prompt` says \
                what you are looking for: it is echoed above the page text so you can answer it \
                from the page (no second model reads the page for you). Only for public \
                documentation and similar pages; the page cannot see your files.",
            "input_schema": {
                "type": "object",
                "properties": {
                    "url": {
                        "type": "string",
                        "format": "uri",
                        "description": "Full URL of the page."
                    },
                    "prompt": {
                        "type": "string",
                        "description": "What you want to learn from the page."
                    }
                },
                "required": ["url", "prompt"],
                "additionalProperties": false
            }
        }));
    }
    specs
}

/// Tools the host answers itself, without the executor.
pub const HOST_TOOLS: &[&str] = &["TodoWrite"];

/// The names of the tools in [`specs`].
pub fn names(network: Network) -> Vec<String> {
    specs(network)
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect()
}

/// The host's own time bound for one call: the tool's own timeout plus a
/// margin, so the executor always answers first when it works.
pub fn host_limit(tool: &str, input: &Value) -> Duration {
    if tool == "Bash" {
        let ms = input
            .get("timeout")
            .and_then(Value::as_u64)
            .unwrap_or(BASH_DEFAULT_MS);
        return Duration::from_millis(ms.clamp(1, BASH_MAX_MS)) + Duration::from_secs(15);
    }
    FILE_TOOL_LIMIT
}

/// A short description of what a call acts on, for records and progress:
/// the file, pattern or command.
pub fn target(tool: &str, input: &Value) -> String {
    let field = match tool {
        "Read" | "Write" | "Edit" | "MultiEdit" => "file_path",
        "Glob" | "Grep" => "pattern",
        "LS" => "path",
        "Bash" => "command",
        "WebFetch" => "url",
        "BashOutput" => "bash_id",
        "KillShell" => "shell_id",
        "TodoWrite" => {
            let n = input
                .get("todos")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            return format!("{n} item(s)");
        }
        _ => return String::new(),
    };
    let text = input.get(field).and_then(Value::as_str).unwrap_or("");
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() > 100 {
        format!("{}…", one_line.chars().take(100).collect::<String>())
    } else {
        one_line
    }
}

/// The host-side gate. Returns a refusal the model can read, or `None` when
/// the call may go to the executor.
///
/// File paths must resolve inside the worktree. Resolution is symlink-safe:
/// the deepest existing ancestor of the path is canonicalised (following
/// links as the kernel would), and the rest is appended lexically with `..`
/// refused, so neither a link inside the worktree nor `..` can point the tool
/// outside.
pub fn gate(tool: &str, input: &Value, worktree: &Path) -> Option<String> {
    let paths: Vec<&str> = match tool {
        "Read" | "Write" | "Edit" | "MultiEdit" => input
            .get("file_path")
            .and_then(Value::as_str)
            .into_iter()
            .collect(),
        "Glob" | "Grep" | "LS" => input
            .get("path")
            .and_then(Value::as_str)
            .into_iter()
            .collect(),
        _ => Vec::new(),
    };
    if tool == "Bash"
        && let Some(command) = input.get("command").and_then(Value::as_str)
        && let Some(why) = hostile_command(command)
    {
        return Some(why);
    }
    for p in paths {
        if let Err(why) = confine(p, worktree) {
            return Some(why);
        }
    }
    None
}

/// Commands refused before they run, each with the reason the model reads.
/// The list is short on purpose: only commands that have no use in a build
/// and can only be an attempt on the sandbox. Program names count only in
/// command position (start, or after `;`, `&`, `|`, `(`, `$(`, a newline),
/// so `grep sudo notes.md` or `echo mount` still run. None of this is the
/// boundary: each of these fails inside the sandbox anyway, and the hostile
/// test suite proves it with the gate off.
static HOSTILE: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    let rules: [(&str, &str); 5] = [
        (
            r"(?m)(^|[;&|(\n]|\$\()\s*(sudo|su|pkexec|doas|nsenter|unshare|mount|umount|chroot|setcap|capsh)\b",
            "this command asks for privileges or namespaces the sandbox does not give: there is no \
             root, no password and no capability here. Do the work as the sandbox user, inside the \
             working tree",
        ),
        (
            r"/proc/(\*|[0-9]+|self|thread-self|\$\w+|\$\{\w+\})/(environ|mem)\b",
            "reading process environments or memory is refused: the sandbox holds no API key or \
             credential to find, and the environment you need is the one your command gets",
        ),
        (
            r"\bkill\s+(-9\s+|-KILL\s+|-SIGKILL\s+|-s\s+\w+\s+)?-1\s*($|[;&|)])",
            "`kill -1` would kill every process in the sandbox, the tool executor included; kill \
             the process ids you started instead (KillShell stops a background shell)",
        ),
        (
            r":\s*\(\s*\)\s*\{\s*:\s*\|\s*:\s*&",
            "a fork bomb is refused; the sandbox caps its processes and would only stall this \
             turn",
        ),
        (
            r"\bTIOCSTI\b",
            "TIOCSTI (pushing input into a terminal) is refused; the sandbox has no terminal",
        ),
    ];
    rules
        .into_iter()
        .filter_map(|(re, why)| Regex::new(re).ok().map(|r| (r, why)))
        .collect()
});

/// The reason `command` is refused, when it matches a hostile rule.
fn hostile_command(command: &str) -> Option<String> {
    HOSTILE
        .iter()
        .find(|(re, _)| re.is_match(command))
        .map(|(_, why)| format!("refused by the host: {why}"))
}

/// Resolves `path` (absolute, or relative to `worktree`) and checks that it
/// stays inside `worktree`.
///
/// # Errors
///
/// A message for the model saying why the path is refused.
pub fn confine(path: &str, worktree: &Path) -> Result<PathBuf, String> {
    let root = std::fs::canonicalize(worktree).map_err(|e| {
        format!(
            "the working tree {} is not accessible: {e}",
            worktree.display()
        )
    })?;
    let requested = Path::new(path);
    let joined = if requested.is_absolute() {
        requested.to_path_buf()
    } else {
        root.join(requested)
    };

    // Walk up to the deepest ancestor that exists and canonicalise it.
    let mut existing = joined.as_path();
    let mut rest: Vec<Component<'_>> = Vec::new();
    let resolved_base = loop {
        match std::fs::canonicalize(existing) {
            Ok(p) => break p,
            Err(_) => {
                let Some(parent) = existing.parent() else {
                    return Err(format!("{path}: cannot be resolved"));
                };
                if let Some(name) = existing.components().next_back() {
                    rest.push(name);
                }
                existing = parent;
            }
        }
    };
    let mut resolved = resolved_base;
    for c in rest.iter().rev() {
        match c {
            Component::Normal(n) => resolved.push(n),
            Component::CurDir => {}
            _ => {
                return Err(format!(
                    "{path}: `..` through a path that does not exist yet is not allowed; use a \
                     path inside the working tree {}",
                    root.display()
                ));
            }
        }
    }
    if resolved.starts_with(&root) {
        Ok(resolved)
    } else {
        Err(format!(
            "{path} is outside the working tree {}; this session can only touch files there",
            root.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_well_formed_and_unique() {
        let specs = specs(Network::On);
        let names = names(Network::On);
        assert_eq!(names.len(), specs.len());
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
        for s in &specs {
            assert_eq!(s["input_schema"]["type"], "object", "{}", s["name"]);
            assert!(s["description"].as_str().unwrap().len() > 40);
        }
    }

    #[test]
    fn every_offered_tool_is_one_the_executor_runs() {
        let executor: Vec<&str> = crate::executor::tool_names().to_vec();
        for name in names(Network::On) {
            assert!(
                executor.contains(&name.as_str()) || HOST_TOOLS.contains(&name.as_str()),
                "{name} is offered but not executed"
            );
        }
    }

    #[test]
    fn web_fetch_is_offered_only_with_the_network() {
        assert!(!names(Network::Off).iter().any(|n| n == "WebFetch"));
        assert!(names(Network::On).iter().any(|n| n == "WebFetch"));
        for name in [
            "Read",
            "Write",
            "Edit",
            "MultiEdit",
            "Glob",
            "Grep",
            "LS",
            "Bash",
            "BashOutput",
            "KillShell",
            "TodoWrite",
        ] {
            assert!(names(Network::Off).iter().any(|n| n == name), "{name}");
        }
    }

    #[test]
    fn confine_keeps_paths_inside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("wt");
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("etc-link")).unwrap();
        std::os::unix::fs::symlink("../..", root.join("src/up")).unwrap();

        assert!(confine("src/new.rs", &root).is_ok());
        assert!(confine("new-dir/deeper/file", &root).is_ok());
        let canon = std::fs::canonicalize(&root).unwrap();
        assert!(confine(canon.join("src").to_str().unwrap(), &root).is_ok());

        for bad in [
            "/etc/passwd",
            "../outside",
            "etc-link/passwd",
            "src/up/x",
            "missing/../../x",
            "/proc/self/root/etc",
        ] {
            assert!(confine(bad, &root).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn gate_checks_only_path_fields() {
        let dir = tempfile::tempdir().unwrap();
        assert!(gate("Read", &json!({"file_path": "/etc/shadow"}), dir.path()).is_some());
        assert!(
            gate(
                "Grep",
                &json!({"pattern": "x", "path": "/root"}),
                dir.path()
            )
            .is_some()
        );
        assert!(gate("Grep", &json!({"pattern": "/etc/x"}), dir.path()).is_none());
        assert!(gate("Bash", &json!({"command": "ls"}), dir.path()).is_none());
    }

    #[test]
    fn gate_refuses_obviously_hostile_commands_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let bash = |c: &str| gate("Bash", &json!({"command": c}), dir.path());
        assert_eq!(HOSTILE.len(), 5, "every rule compiles");
        for bad in [
            "sudo apt-get install x",
            "cd /tmp && su -c id root",
            "echo hi; mount -o remount,rw /usr",
            "x=$(unshare -Ur id)",
            "cat /proc/1/environ",
            "tr '\\0' '\\n' < /proc/self/environ",
            "for p in /proc/*/environ; do cat $p; done",
            "dd if=/proc/$pid/mem",
            "kill -9 -1",
            "kill -1",
            ":(){ :|:& };:",
            "python3 -c 'import termios; termios.TIOCSTI'",
        ] {
            let why = bash(bad).unwrap_or_else(|| panic!("{bad} should be refused"));
            assert!(why.starts_with("refused by the host: "), "{why}");
        }
        for fine in [
            "cargo build --release",
            "grep -rn sudo docs/",
            "echo mount the volume",
            "ls /proc/self/status",
            "kill -9 12345",
            "kill -1 12345",
            "make -j2 && ./run_tests",
            "python3 -m unittest",
        ] {
            assert!(bash(fine).is_none(), "{fine} should run");
        }
    }

    #[test]
    fn host_limit_follows_bash_timeout() {
        assert_eq!(
            host_limit("Bash", &json!({"timeout": 1000})),
            Duration::from_secs(16)
        );
        assert_eq!(
            host_limit("Bash", &json!({"timeout": 99_999_999})),
            Duration::from_secs(615)
        );
        assert_eq!(host_limit("Read", &json!({})), FILE_TOOL_LIMIT);
    }
}
