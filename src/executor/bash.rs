//! The Bash, BashOutput and KillShell tools: shell commands, in the
//! foreground with a timeout or in the background.
//!
//! Each foreground command runs in a fresh `bash -c` (or `sh -c` where bash
//! is missing). Only the working directory carries over from one command to
//! the next: an `EXIT` trap writes the shell's final `pwd -P` to a file, and
//! the next command starts there. The environment deliberately does not
//! carry over, so one command's `export` cannot quietly change what later
//! commands do.
//!
//! A Bash call must never outlive its timeout, whatever the command does.
//! So the shell leads a process group of its own, which is killed whole on
//! timeout and again once the shell exits (a left-behind `sleep 100 &`
//! would otherwise keep the output pipe open), and the pipe is read for at
//! most a short grace period after that, in case some process escaped the
//! group with `setsid` and still holds it. stdout and stderr share one pipe
//! so they interleave as they would on a terminal; the reader keeps the
//! head and tail of the output within a cap and discards the middle while
//! still draining, so a chatty command never blocks on a full pipe.
//!
//! Background shells are the same shell started without a timeout; a thread
//! collects their output until BashOutput fetches it. They are killed when
//! the executor ends (and with it the sandbox).

use std::{
    collections::{BTreeMap, VecDeque},
    fs,
    io::{self, PipeReader, Read as _},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd},
        unix::process::{CommandExt as _, ExitStatusExt as _},
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use regex::Regex;
use rustix::process::{Pid, Signal, kill_process_group};
use serde::Deserialize;
use serde_json::Value;

use super::{
    Outcome, ToolError, ToolResult,
    input::{Field, Kind, decode, opt, req},
};

/// Timeout when the call gives none.
const DEFAULT_TIMEOUT_MS: u64 = 120_000;
/// Longest timeout a call may ask for.
const MAX_TIMEOUT_MS: u64 = 600_000;
/// How long the pipe is still read after the shell has exited (or was
/// killed), for output that is already on its way.
const DRAIN_GRACE: Duration = Duration::from_millis(200);
/// How often the child is checked while no output arrives.
const TICK: Duration = Duration::from_millis(20);
/// Output bytes kept from the start and from the end of a command's output;
/// together they stay under the 30,000-character cap.
const HEAD_BYTES: usize = 15_000;
const TAIL_BYTES: usize = 14_000;
/// Unread output kept per background shell; older bytes are dropped.
const BACKGROUND_BUFFER: usize = 1024 * 1024;
/// Most output one BashOutput call returns, in bytes.
const BACKGROUND_SHOWN: usize = 29_000;
/// Most background shells alive at once.
const MAX_BACKGROUND: usize = 16;

const BASH_FIELDS: &[Field] = &[
    req("command", Kind::Str),
    opt("timeout", Kind::UInt),
    opt("description", Kind::Str),
    opt("run_in_background", Kind::Bool),
];

const OUTPUT_FIELDS: &[Field] = &[req("bash_id", Kind::Str), opt("filter", Kind::Str)];

const KILL_FIELDS: &[Field] = &[req("shell_id", Kind::Str)];

#[derive(Debug, Deserialize)]
struct BashInput {
    command: String,
    timeout: Option<u64>,
    run_in_background: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct BashOutputInput {
    bash_id: String,
    filter: Option<String>,
}

#[derive(Debug, Deserialize)]
struct KillShellInput {
    shell_id: String,
}

/// What lives between shell commands: the working directory and the
/// background shells.
pub(super) struct ShellState {
    root: PathBuf,
    cwd: PathBuf,
    background: BTreeMap<String, Background>,
    next_background: u64,
}

impl ShellState {
    /// State for a worktree; the first command runs in `root`.
    pub(super) fn new(root: PathBuf) -> Self {
        ShellState {
            cwd: root.clone(),
            root,
            background: BTreeMap::new(),
            next_background: 1,
        }
    }

    /// Runs Bash.
    pub(super) fn run(&mut self, input: &Value) -> ToolResult {
        let args: BashInput = decode("Bash", input, BASH_FIELDS)?;
        if args.command.trim().is_empty() {
            return Err(ToolError::new(
                "Bash: `command` is empty; give a shell command to run",
            ));
        }

        let mut notes = String::new();
        if !self.cwd.is_dir() {
            notes.push_str(&format!(
                "[the working directory {} no longer exists; running in {}]\n",
                self.cwd.display(),
                self.root.display()
            ));
            self.cwd = self.root.clone();
        }
        if args.run_in_background.unwrap_or(false) {
            return self.start_background(&args.command, notes);
        }

        let timeout_ms = match args.timeout {
            Some(0) => {
                return Err(ToolError::new(
                    "Bash: `timeout` must be a positive number of milliseconds",
                ));
            }
            Some(ms) if ms > MAX_TIMEOUT_MS => {
                notes.push_str(&format!(
                    "[timeout {ms} ms is above the maximum of {MAX_TIMEOUT_MS} ms; using \
                     {MAX_TIMEOUT_MS} ms]\n"
                ));
                MAX_TIMEOUT_MS
            }
            Some(ms) => ms,
            None => DEFAULT_TIMEOUT_MS,
        };

        let cwd_file = CwdFile::new();
        let script = format!("{}{}", cwd_file.trap(), args.command);
        let (child, reader) = spawn_shell(&script, &self.cwd, true)?;
        let run = supervise(child, reader, Duration::from_millis(timeout_ms));

        if run.status.is_some()
            && let Some(dir) = cwd_file.read()
        {
            self.cwd = dir;
        }
        Ok(render(notes, run, timeout_ms))
    }

    fn start_background(&mut self, command: &str, mut notes: String) -> ToolResult {
        let mut running = 0;
        for shell in self.background.values_mut() {
            if shell.poll().is_none() {
                running += 1;
            }
        }
        if running >= MAX_BACKGROUND {
            return Err(ToolError::new(format!(
                "{running} background shells are already running; stop some with KillShell \
                 before starting another"
            )));
        }

        let (child, reader) = spawn_shell(command, &self.cwd, false)?;
        let id = format!("bash_{}", self.next_background);
        self.next_background += 1;
        let pid = child.id();
        self.background
            .insert(id.clone(), Background::start(child, reader));

        notes.push_str(&format!(
            "Started background shell {id} (pid {pid}) in {}. Read its output with BashOutput \
             {{\"bash_id\": \"{id}\"}}; stop it with KillShell {{\"shell_id\": \"{id}\"}}.",
            self.cwd.display()
        ));
        Ok(Outcome::text(notes))
    }

    /// Runs BashOutput: the output a background shell produced since the
    /// last call, and whether it is still running.
    pub(super) fn output(&mut self, input: &Value) -> ToolResult {
        let args: BashOutputInput = decode("BashOutput", input, OUTPUT_FIELDS)?;
        let filter = match args.filter.as_deref().filter(|f| !f.is_empty()) {
            Some(f) => Some(Regex::new(f).map_err(|e| {
                ToolError::new(format!("BashOutput: invalid filter regex {f:?}: {e}"))
            })?),
            None => None,
        };
        let ids: Vec<String> = self.background.keys().cloned().collect();
        let shell = self
            .background
            .get_mut(&args.bash_id)
            .ok_or_else(|| unknown_shell(&args.bash_id, &ids))?;

        let status = shell.poll();
        let (bytes, dropped) = shell.take_unread();
        let mut text = String::from_utf8_lossy(&bytes).into_owned();
        if let Some(filter) = &filter {
            text = text
                .lines()
                .filter(|line| filter.is_match(line))
                .map(|line| format!("{line}\n"))
                .collect();
        }

        let mut output = String::new();
        let elapsed = shell.started.elapsed().as_secs_f64();
        output.push_str(&match status {
            None => format!("[{}: running, {elapsed:.1} s]", args.bash_id),
            Some(status) => format!(
                "[{}: {}, {elapsed:.1} s]",
                args.bash_id,
                describe_exit(status)
            ),
        });
        let mut truncated = dropped > 0;
        if dropped > 0 {
            output.push_str(&format!(
                "\n[{dropped} earlier bytes were dropped because output was not read in time]"
            ));
        }
        if text.len() > BACKGROUND_SHOWN {
            let mut cut = text.len() - BACKGROUND_SHOWN;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            output.push_str(&format!(
                "\n[… {cut} bytes not shown; the latest output follows]"
            ));
            text.drain(..cut);
            truncated = true;
        }
        if text.is_empty() {
            output.push_str("\n(no new output)");
        } else {
            output.push('\n');
            output.push_str(text.strip_suffix('\n').unwrap_or(&text));
        }
        Ok(Outcome {
            output,
            exit_code: status.and_then(|s| s.code()),
            truncated,
            ..Outcome::default()
        })
    }

    /// Runs KillShell: stops a background shell and everything it started.
    pub(super) fn kill(&mut self, input: &Value) -> ToolResult {
        let args: KillShellInput = decode("KillShell", input, KILL_FIELDS)?;
        let ids: Vec<String> = self.background.keys().cloned().collect();
        let mut shell = self
            .background
            .remove(&args.shell_id)
            .ok_or_else(|| unknown_shell(&args.shell_id, &ids))?;
        let output = match shell.poll() {
            Some(status) => format!(
                "background shell {} had already finished ({})",
                args.shell_id,
                describe_exit(status)
            ),
            None => {
                shell.kill();
                format!("killed background shell {}", args.shell_id)
            }
        };
        Ok(Outcome::text(output))
    }
}

impl Drop for ShellState {
    fn drop(&mut self) {
        for shell in self.background.values_mut() {
            shell.kill();
        }
    }
}

fn unknown_shell(id: &str, ids: &[String]) -> ToolError {
    let known = if ids.is_empty() {
        "there are no background shells".to_string()
    } else {
        format!("known ones: {}", ids.join(", "))
    };
    ToolError::new(format!(
        "no background shell {id:?}; {known} (ids come from Bash with run_in_background)"
    ))
}

/// The shell that runs commands: bash, or POSIX sh on systems without it.
fn shell_path() -> &'static str {
    if Path::new("/bin/bash").exists() {
        "/bin/bash"
    } else {
        "/bin/sh"
    }
}

/// Starts `script` in a new process group, stdin from /dev/null, stdout and
/// stderr into one pipe. With `nonblocking`, reads from the returned end
/// never block, which the foreground supervisor relies on to honour its
/// deadline.
fn spawn_shell(
    script: &str,
    cwd: &Path,
    nonblocking: bool,
) -> Result<(Child, PipeReader), ToolError> {
    let shell = shell_path();
    let cannot = |e: io::Error| ToolError::new(format!("could not start {shell}: {e}"));
    let (reader, writer) = io::pipe().map_err(cannot)?;
    if nonblocking {
        rustix::io::ioctl_fionbio(&reader, true).map_err(|e| cannot(e.into()))?;
    }
    let writer_too = writer.try_clone().map_err(cannot)?;

    let mut command = Command::new(shell);
    command
        .arg("-c")
        .arg(script)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer_too)
        .process_group(0);
    let child = command.spawn().map_err(cannot)?;
    // The Command still holds the pipe's write ends; drop them now, or the
    // reader would never see end-of-file.
    drop(command);
    Ok((child, reader))
}

/// Kills the process group led by `child`. The group may already be gone,
/// which is fine.
fn kill_group(child: &Child) {
    let _ = kill_process_group(Pid::from_child(child), Signal::KILL);
}

/// Where the shell leaves its final working directory.
struct CwdFile {
    path: PathBuf,
}

impl CwdFile {
    fn new() -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        // The path goes into the shell script, so it must not need quoting;
        // an exotic TMPDIR falls back to /tmp.
        let mut dir = std::env::temp_dir();
        let plain = dir.to_str().is_some_and(|s| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-".contains(&b))
        });
        if !plain {
            dir = PathBuf::from("/tmp");
        }
        let path = dir.join(format!(
            "agentkimi-cwd-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        CwdFile { path }
    }

    /// The prefix that records the working directory when the shell exits.
    /// It goes on the same line as the command so bash's "line N" in error
    /// messages still matches the command's own lines. A command that sets
    /// its own EXIT trap replaces this one; the working directory then
    /// simply stays where it was. stderr is silenced before the file is
    /// opened, so an unwritable temp dir adds no noise to the output.
    fn trap(&self) -> String {
        format!(
            "trap 'pwd -P 2>/dev/null >| \"{}\"' EXIT; ",
            self.path.display()
        )
    }

    /// The directory the shell ended in, if it was recorded and still
    /// exists.
    fn read(&self) -> Option<PathBuf> {
        let text = fs::read_to_string(&self.path).ok()?;
        let dir = PathBuf::from(text.strip_suffix('\n').unwrap_or(&text));
        (dir.is_absolute() && dir.is_dir()).then_some(dir)
    }
}

impl Drop for CwdFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// How a foreground command ended.
struct Finished {
    /// The exit status, unless the command timed out.
    status: Option<ExitStatus>,
    timed_out: bool,
    output: Capture,
    elapsed: Duration,
}

/// Waits for `child` while draining the non-blocking `reader`, within
/// `timeout`.
fn supervise(mut child: Child, reader: PipeReader, timeout: Duration) -> Finished {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut output = Capture::default();
    let mut open = true;
    let mut status = None;
    let mut timed_out = false;

    // Phase one: until the shell exits or the deadline passes.
    loop {
        match child.try_wait() {
            Ok(Some(s)) => {
                status = Some(s);
                break;
            }
            Ok(None) => {}
            // The child cannot be waited for; treat it like a timeout so it
            // is killed rather than left behind.
            Err(_) => break,
        }
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            break;
        }
        let wait = (deadline - now).min(TICK);
        if open && wait_readable(reader.as_fd(), wait) {
            open = output.drain(&reader);
        } else if !open {
            thread::sleep(wait.min(Duration::from_millis(5)));
        }
    }

    // Phase two: nothing of the command may outlive the call.
    kill_group(&child);
    if status.is_none() {
        let give_up = Instant::now() + Duration::from_secs(2);
        while Instant::now() < give_up {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    // Phase three: what is already in the pipe, briefly.
    let grace_end = Instant::now() + DRAIN_GRACE;
    while open {
        let now = Instant::now();
        if now >= grace_end || !wait_readable(reader.as_fd(), grace_end - now) {
            break;
        }
        open = output.drain(&reader);
    }

    Finished {
        status,
        timed_out,
        output,
        elapsed: started.elapsed(),
    }
}

/// Waits until `fd` is readable (data or end-of-file) or `timeout` passes.
fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let mut pollfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let millis = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pollfd` is a valid, exclusively borrowed pollfd array of
    // length one for the duration of the call, and `fd` is open because it
    // is borrowed.
    let ready = unsafe { libc::poll(&mut pollfd, 1, millis) };
    ready > 0
}

/// A command's output within the cap: the first [`HEAD_BYTES`], the last
/// [`TAIL_BYTES`], and a count of what fell in between.
#[derive(Default)]
struct Capture {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    dropped_bytes: u64,
    dropped_lines: u64,
}

impl Capture {
    /// Reads everything available from the non-blocking `reader`; returns
    /// `false` at end-of-file or on a read error.
    fn drain(&mut self, mut reader: &PipeReader) -> bool {
        let mut buf = [0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => self.push(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    fn push(&mut self, mut data: &[u8]) {
        let room = HEAD_BYTES - self.head.len();
        let take = room.min(data.len());
        self.head.extend_from_slice(&data[..take]);
        data = &data[take..];
        if data.is_empty() {
            return;
        }

        // Make room in the tail, dropping its oldest bytes (and, when the
        // new data alone is longer than the tail, the start of the data).
        if data.len() >= TAIL_BYTES {
            let old: Vec<u8> = self.tail.drain(..).collect();
            self.count_dropped(&old);
            let skip = data.len() - TAIL_BYTES;
            self.count_dropped(&data[..skip]);
            data = &data[skip..];
        } else {
            let overflow = (self.tail.len() + data.len()).saturating_sub(TAIL_BYTES);
            if overflow > 0 {
                let old: Vec<u8> = self.tail.drain(..overflow).collect();
                self.count_dropped(&old);
            }
        }
        self.tail.extend(data);
    }

    fn count_dropped(&mut self, bytes: &[u8]) {
        self.dropped_bytes += bytes.len() as u64;
        self.dropped_lines += bytes.iter().filter(|&&b| b == b'\n').count() as u64;
    }

    fn truncated(&self) -> bool {
        self.dropped_bytes > 0
    }

    /// The kept output as text. When the middle was cut, the cut is moved
    /// to line boundaries where there are any, and a marker says how much is
    /// missing.
    fn into_text(mut self) -> String {
        let mut tail: Vec<u8> = self.tail.drain(..).collect();
        if self.dropped_bytes == 0 {
            let mut all = std::mem::take(&mut self.head);
            all.extend_from_slice(&tail);
            return String::from_utf8_lossy(&all).into_owned();
        }

        let mut head = std::mem::take(&mut self.head);
        if let Some(end) = head.iter().rposition(|&b| b == b'\n') {
            let cut = head.split_off(end + 1);
            self.count_dropped(&cut);
        }
        if let Some(start) = tail.iter().position(|&b| b == b'\n') {
            let kept = tail.split_off(start + 1);
            let cut = std::mem::replace(&mut tail, kept);
            self.count_dropped(&cut);
        }
        format!(
            "{}[… {} bytes ({} lines) cut from the middle of the output …]\n{}",
            String::from_utf8_lossy(&head),
            self.dropped_bytes,
            self.dropped_lines,
            String::from_utf8_lossy(&tail)
        )
    }
}

/// Formats a duration in seconds with one decimal, or whole seconds when
/// exact.
fn seconds(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{} s", ms / 1000)
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "ended".to_string(),
    }
}

fn render(notes: String, run: Finished, timeout_ms: u64) -> Outcome {
    let truncated = run.output.truncated();
    let mut output = notes;
    let captured = run.output.into_text();
    output.push_str(&captured);
    if !output.is_empty() && !output.ends_with('\n') {
        output.push('\n');
    }

    let elapsed = format!("{:.1} s", run.elapsed.as_secs_f64());
    if run.timed_out {
        output.push_str(&format!(
            "[command timed out after {} and was killed]",
            seconds(timeout_ms)
        ));
    } else {
        match run.status {
            Some(status) => output.push_str(&format!("[{}, {elapsed}]", describe_exit(status))),
            None => output.push_str(&format!("[the command's status is unknown, {elapsed}]")),
        }
    }

    Outcome {
        output,
        exit_code: run.status.and_then(|s| s.code()),
        truncated,
        timed_out: run.timed_out,
    }
}

/// A command running in the background and the output it has produced.
struct Background {
    child: Child,
    status: Option<ExitStatus>,
    started: Instant,
    buffer: Arc<Mutex<Unread>>,
    reader: Option<thread::JoinHandle<()>>,
}

/// Output of a background shell not yet fetched by BashOutput.
#[derive(Default)]
struct Unread {
    bytes: VecDeque<u8>,
    dropped: u64,
}

impl Background {
    fn start(child: Child, reader: PipeReader) -> Self {
        let buffer = Arc::new(Mutex::new(Unread::default()));
        let sink = Arc::clone(&buffer);
        // A thread with blocking reads is the simplest way to keep draining
        // between tool calls; it ends at end-of-file, which comes at the
        // latest when the shell's process group is killed.
        let reader = thread::Builder::new()
            .name("agentkimi-bg-reader".to_string())
            .spawn(move || collect(reader, &sink))
            .ok();
        Background {
            child,
            status: None,
            started: Instant::now(),
            buffer,
            reader,
        }
    }

    /// The exit status once the shell has ended. After it ends, whatever it
    /// left running in its group is killed, as for foreground commands.
    fn poll(&mut self) -> Option<ExitStatus> {
        if self.status.is_none()
            && let Ok(Some(status)) = self.child.try_wait()
        {
            self.status = Some(status);
            kill_group(&self.child);
        }
        self.status
    }

    fn kill(&mut self) {
        kill_group(&self.child);
        if self.status.is_none() {
            self.status = self.child.wait().ok();
        }
        if let Some(reader) = self.reader.take() {
            // The group is dead, so end-of-file is near unless something
            // escaped the group; never wait on that.
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
    }

    fn take_unread(&mut self) -> (Vec<u8>, u64) {
        match self.buffer.lock() {
            Ok(mut unread) => {
                let dropped = std::mem::take(&mut unread.dropped);
                (unread.bytes.drain(..).collect(), dropped)
            }
            Err(_) => (Vec::new(), 0),
        }
    }
}

fn collect(mut reader: PipeReader, sink: &Mutex<Unread>) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let Ok(mut unread) = sink.lock() else { return };
        unread.bytes.extend(&buf[..n]);
        let overflow = unread.bytes.len().saturating_sub(BACKGROUND_BUFFER);
        if overflow > 0 {
            unread.bytes.drain(..overflow);
            unread.dropped += overflow as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn shell() -> (tempfile::TempDir, ShellState) {
        let dir = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(dir.path()).unwrap();
        (dir, ShellState::new(root))
    }

    fn bash(state: &mut ShellState, input: Value) -> Outcome {
        state.run(&input).unwrap()
    }

    /// The output with the varying duration in the footer replaced by `T`.
    fn stable(output: &str) -> String {
        let re = Regex::new(r", \d+\.\d s\]$").unwrap();
        re.replace(output, ", T]").into_owned()
    }

    #[test]
    fn output_format_and_exit_code() {
        let (_dir, mut sh) = shell();
        let out = bash(
            &mut sh,
            json!({"command": "echo hello; echo oops >&2; echo bye; exit 3"}),
        );
        assert_eq!(stable(&out.output), "hello\noops\nbye\n[exit code 3, T]");
        assert_eq!(out.exit_code, Some(3));
        assert!(!out.timed_out && !out.truncated);

        let out = bash(&mut sh, json!({"command": "false"}));
        assert_eq!(stable(&out.output), "[exit code 1, T]");

        let out = bash(&mut sh, json!({"command": "true"}));
        assert_eq!(stable(&out.output), "[exit code 0, T]");
        assert_eq!(out.exit_code, Some(0));

        let out = bash(&mut sh, json!({"command": "printf 'no newline'"}));
        assert_eq!(stable(&out.output), "no newline\n[exit code 0, T]");

        let out = bash(&mut sh, json!({"command": "kill -9 $$"}));
        assert_eq!(stable(&out.output), "[killed by signal 9, T]");
        assert_eq!(out.exit_code, None);
    }

    #[test]
    fn cwd_persists_but_environment_does_not() {
        let (dir, mut sh) = shell();
        let root = fs::canonicalize(dir.path()).unwrap();
        fs::create_dir(root.join("sub")).unwrap();

        bash(&mut sh, json!({"command": "cd sub"}));
        let out = bash(&mut sh, json!({"command": "pwd"}));
        assert_eq!(
            stable(&out.output),
            format!("{}/sub\n[exit code 0, T]", root.display())
        );

        // `exit` still records where the shell was.
        bash(&mut sh, json!({"command": "cd .. && exit 1"}));
        let out = bash(&mut sh, json!({"command": "pwd"}));
        assert_eq!(
            stable(&out.output),
            format!("{}\n[exit code 0, T]", root.display())
        );

        bash(&mut sh, json!({"command": "export X=1; Y=2"}));
        let out = bash(&mut sh, json!({"command": "echo \"[$X$Y]\""}));
        assert_eq!(stable(&out.output), "[]\n[exit code 0, T]");

        // A directory that disappears sends the next command back to the root.
        bash(&mut sh, json!({"command": "mkdir gone && cd gone"}));
        fs::remove_dir(root.join("gone")).unwrap();
        let out = bash(&mut sh, json!({"command": "pwd"}));
        assert_eq!(
            stable(&out.output),
            format!(
                "[the working directory {r}/gone no longer exists; running in {r}]\n{r}\n[exit \
                 code 0, T]",
                r = root.display()
            )
        );
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let (_dir, mut sh) = shell();
        let started = Instant::now();
        let out = bash(
            &mut sh,
            json!({"command": "echo start; sleep 100; echo never", "timeout": 500}),
        );
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "{:?}",
            started.elapsed()
        );
        assert!(out.timed_out);
        assert_eq!(out.exit_code, None);
        assert_eq!(
            out.output,
            "start\n[command timed out after 0.5 s and was killed]"
        );
    }

    #[test]
    fn leftover_background_processes_do_not_block() {
        let (_dir, mut sh) = shell();
        let started = Instant::now();
        let out = bash(&mut sh, json!({"command": "sleep 100 & echo left"}));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(stable(&out.output), "left\n[exit code 0, T]");

        // A process that left the group keeps the pipe open; the call still
        // returns after the grace period.
        let started = Instant::now();
        let out = bash(&mut sh, json!({"command": "setsid sleep 3 & echo escaped"}));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(out.output.starts_with("escaped\n"), "{}", out.output);
    }

    #[test]
    fn output_is_capped_with_marker() {
        let (_dir, mut sh) = shell();
        let out = bash(&mut sh, json!({"command": "yes | head -c 1000000"}));
        assert!(out.truncated);
        assert!(out.output.chars().count() <= 30_000, "{}", out.output.len());
        let marker = Regex::new(
            r"\n\[… (\d+) bytes \((\d+) lines\) cut from the middle of the output …\]\n",
        )
        .unwrap();
        let caps = marker.captures(&out.output).expect("marker");
        let cut_bytes: usize = caps[1].parse().unwrap();
        let cut_lines: usize = caps[2].parse().unwrap();
        assert_eq!(cut_lines * 2, cut_bytes);
        let kept = out.output.matches("y\n").count();
        assert_eq!(kept * 2 + cut_bytes, 1_000_000);
        assert!(out.output.starts_with("y\ny\n"));
        assert!(stable(&out.output).ends_with("y\ny\n[exit code 0, T]"));
    }

    #[test]
    fn timeout_is_validated_and_clamped() {
        let (_dir, mut sh) = shell();
        let err = sh
            .run(&json!({"command": "true", "timeout": 0}))
            .unwrap_err();
        assert_eq!(
            err.0,
            "Bash: `timeout` must be a positive number of milliseconds"
        );
        let out = bash(&mut sh, json!({"command": "true", "timeout": 900000}));
        assert_eq!(
            stable(&out.output),
            "[timeout 900000 ms is above the maximum of 600000 ms; using 600000 ms]\n[exit code \
             0, T]"
        );
        let err = sh.run(&json!({"command": "  "})).unwrap_err();
        assert_eq!(
            err.0,
            "Bash: `command` is empty; give a shell command to run"
        );
    }

    #[test]
    fn background_shells() {
        let (_dir, mut sh) = shell();
        let out = bash(
            &mut sh,
            json!({
                "command": "echo one; echo two; sleep 0.3; echo three",
                "run_in_background": true
            }),
        );
        assert!(
            out.output
                .starts_with("Started background shell bash_1 (pid "),
            "{}",
            out.output
        );

        // Read until it finishes. Each read returns only what is new, so
        // the lines are gathered across reads.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = String::new();
        let out = loop {
            let out = sh
                .output(&json!({"bash_id": "bash_1", "filter": "^t"}))
                .unwrap();
            seen.push_str(&out.output);
            if out.exit_code.is_some() || Instant::now() > deadline {
                break out;
            }
            thread::sleep(Duration::from_millis(100));
        };
        assert!(
            out.output.starts_with("[bash_1: exit code 0, "),
            "{}",
            out.output
        );
        // The filter kept "two" and "three" and dropped "one".
        assert!(!seen.contains("one"), "{seen}");
        assert!(seen.contains("two") && seen.contains("three"), "{seen}");

        let out = bash(
            &mut sh,
            json!({"command": "sleep 100", "run_in_background": true}),
        );
        assert!(out.output.contains("bash_2"));
        let out = sh.output(&json!({"bash_id": "bash_2"})).unwrap();
        assert!(
            out.output.starts_with("[bash_2: running, "),
            "{}",
            out.output
        );
        assert!(out.output.ends_with("\n(no new output)"), "{}", out.output);

        let started = Instant::now();
        let out = sh.kill(&json!({"shell_id": "bash_2"})).unwrap();
        assert_eq!(out.output, "killed background shell bash_2");
        assert!(started.elapsed() < Duration::from_secs(2));

        let err = sh.kill(&json!({"shell_id": "bash_2"})).unwrap_err();
        assert_eq!(
            err.0,
            "no background shell \"bash_2\"; known ones: bash_1 (ids come from Bash with \
             run_in_background)"
        );
    }
}
