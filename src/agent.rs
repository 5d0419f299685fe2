//! The turn loop: prompt, model step, tool dispatch, limits, summary.
//!
//! A turn is one `agentkimi_start` or `agentkimi_send`. It runs model steps
//! until the model answers without a tool call (its text is the summary), or
//! until a limit stops it: the step limit, the turn's wall clock, or a
//! cancellation. Whatever stops it, the transcript is left valid for the
//! provider (every tool call has a result, no half message), so the next
//! `agentkimi_send` can continue the conversation.
//!
//! Every message is written to the store as it happens: a crash loses at
//! most the step in flight.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Network,
    llm::{LlmError, Message, Provider, StepRequest, Usage},
    reads::ReadLedger,
    sandbox::{Profile, Sandbox},
    store::{Store, StoredMessage},
    todos::{self, TodoItem},
    tools,
};

/// How a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TurnStatus {
    /// The model finished and wrote its summary.
    Completed,
    /// The model used every step the turn allowed.
    StepLimit,
    /// The turn's wall-clock limit ran out.
    Timeout,
    /// The caller cancelled the turn.
    Cancelled,
    /// The model could not be reached or refused the request.
    Failed,
}

impl TurnStatus {
    /// The status as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            TurnStatus::Completed => "completed",
            TurnStatus::StepLimit => "step_limit",
            TurnStatus::Timeout => "timeout",
            TurnStatus::Cancelled => "cancelled",
            TurnStatus::Failed => "failed",
        }
    }
}

/// What the host recorded about one tool call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ToolCallRecord {
    /// Tool name as the model called it.
    pub name: String,
    /// What the call acted on: a file, a pattern or a command.
    pub target: String,
    /// Whether the call succeeded.
    pub ok: bool,
    /// Why it failed, in short.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Exit code of a Bash command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Time the call took, in milliseconds.
    pub duration_ms: u64,
}

/// One shell command the model ran with Bash in a turn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CommandRecord {
    /// The command line as the model sent it.
    pub command: String,
    /// Its exit code; `None` when it was killed (timeout, signal), failed to
    /// start, or was started in the background.
    pub exit_code: Option<i32>,
    /// Time the call took, in milliseconds.
    pub duration_ms: u64,
    /// Whether it was killed at its timeout.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
    /// Whether it was started with `run_in_background` (its exit code is
    /// then not known when the call returns).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub background: bool,
}

/// The result of one turn.
#[derive(Debug, Clone)]
pub struct TurnOutcome {
    /// How the turn ended.
    pub status: TurnStatus,
    /// The model's final text, or the last text it wrote before a limit.
    pub summary: String,
    /// Model calls made.
    pub steps: u32,
    /// Tool calls made, in order.
    pub tool_calls: Vec<ToolCallRecord>,
    /// Bash commands run, in order.
    pub commands: Vec<CommandRecord>,
    /// The session's todo list as it stands at the end of the turn.
    pub todos: Vec<TodoItem>,
    /// Tokens used in this turn.
    pub usage: Usage,
    /// Why the turn stopped early, in words for the caller.
    pub note: Option<String>,
}

/// Something that happened during a turn, for progress reporting.
#[derive(Debug, Clone)]
pub enum TurnEvent {
    /// A model step is starting.
    Step(u32),
    /// A model request is being retried.
    Retry(String),
    /// A tool call finished.
    ToolCall(ToolCallRecord),
    /// The model rewrote its todo list.
    Todos(Vec<TodoItem>),
}

/// Everything one turn needs.
pub struct TurnContext<'a> {
    /// The model provider.
    pub provider: &'a Provider,
    /// The sandbox profile.
    pub profile: &'a Profile,
    /// The session store.
    pub store: &'a Store,
    /// Session id.
    pub session_id: &'a str,
    /// Turn number.
    pub turn: u32,
    /// The session's worktree.
    pub worktree: &'a Path,
    /// Where the model starts (the worktree or the subdirectory the caller
    /// named as `workdir`).
    pub start_dir: &'a Path,
    /// Model name.
    pub model: &'a str,
    /// Output token limit per step.
    pub max_tokens: u32,
    /// Model calls allowed.
    pub max_steps: u32,
    /// Wall-clock limit.
    pub timeout: Duration,
    /// Whether the host-side gate checks tool calls (off only in tests).
    pub gate: bool,
    /// The model's context window in tokens; older tool outputs are
    /// compacted when the transcript nears it.
    pub context_tokens: usize,
    /// Fires when the caller cancels.
    pub cancel: CancellationToken,
    /// Told about each step and tool call.
    pub on_event: &'a (dyn Fn(TurnEvent) + Send + Sync),
}

/// Why the loop stopped before the model finished.
enum Stop {
    Cancelled,
    Timeout,
}

/// The system prompt, in our own words. It tells the model where it is, what
/// it can and cannot do, and how to end a turn.
pub fn system_prompt(worktree: &Path, start_dir: &Path, network: Network) -> String {
    let net = match network {
        Network::Off => {
            "There is no network access: package downloads and web requests fail, so work with \
             what is installed and what is in the working tree."
        }
        Network::On => "The network is available.",
        Network::Allowlist => {
            "The network is reachable only through an HTTP proxy that lets through a list of \
             allowed host names (package registries by default); the proxy settings are already \
             in the environment, so cargo, pip, npm and curl use them. DNS does not work \
             directly and other hosts are refused."
        }
    };
    format!(
        "You are Kimi, working as an autonomous software engineer on a task handed to you by \
another engineer. You work alone until the task is done; nobody answers questions mid-turn, so \
make reasonable decisions and state them in your summary.

# Environment
- Working tree: {wt}. It is a git worktree holding the project. Start in {start}. All your \
changes must be made inside the working tree; paths elsewhere are refused or do not exist.
- Everything you run executes in a sandbox: an unprivileged user, a private /tmp and home \
directory, read-only system directories. {net}
- git does not work in the sandbox and you do not need it: the host records every change you \
make and commits it for review after your turn. Do not try to commit, branch or push.
- Tools: Read, Write, Edit, MultiEdit, Glob, Grep, LS, Bash, BashOutput and KillShell for \
background commands, and TodoWrite for your plan{web}. You must Read a file in this session \
before you Edit it or overwrite it with Write, and Read it again if it changed since (for \
example after a Bash command rewrote it); otherwise the call is refused. Prefer Edit over \
rewriting whole files. Use Glob and Grep to find code rather than guessing paths. Bash commands \
have a timeout (2 minutes by default); start servers and watchers with run_in_background, and \
know that every background process is stopped when your turn ends.
- For a task of several steps, keep a todo list with TodoWrite and update it as you go; the \
engineer sees it.

# How to work
- Understand the relevant code first, then change it, then verify: build it and run the tests \
that cover your change (add tests when the task calls for it). Fix what fails.
- Keep changes focused on the task; match the project's style.

# Ending the turn
When you are done, or cannot go further, reply without calling a tool. That reply is your \
summary for the engineer who gave you the task. It should say:
1. what you changed and why (files and the gist of each change);
2. how you verified it, with the commands you ran;
3. the test output that shows the result, in one fenced code block (```), trimmed to the \
relevant part;
4. anything left undone, assumptions you made, or risks to review.",
        wt = worktree.display(),
        start = start_dir.display(),
        web = if network != Network::Off {
            ", and WebFetch to read a web page"
        } else {
            ""
        },
    )
}

/// Runs one turn with `user_text` as the new user message.
///
/// Never fails as a whole: provider faults, limits and cancellation end the
/// turn with a status and a note, and the transcript stays valid.
pub async fn run_turn(ctx: &TurnContext<'_>, system: &str, user_text: &str) -> TurnOutcome {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + ctx.timeout;
    let network = ctx.profile.network();
    let specs = tools::specs(network);
    let known_tools = tools::names(network);

    let mut out = TurnOutcome {
        status: TurnStatus::Completed,
        summary: String::new(),
        steps: 0,
        tool_calls: Vec::new(),
        commands: Vec::new(),
        todos: Vec::new(),
        usage: Usage::default(),
        note: None,
    };

    let mut messages = match load_transcript(ctx) {
        Ok(m) => m,
        Err(e) => return failed(out, format!("cannot read the session's transcript: {e:#}")),
    };
    let mut ledger = match ReadLedger::load(ctx.store, ctx.session_id, ctx.worktree, &messages) {
        Ok(l) => l,
        Err(e) => return failed(out, format!("cannot load the files read so far: {e:#}")),
    };
    out.todos = match ctx.store.todos(ctx.session_id) {
        Ok(v) => v
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default(),
        Err(e) => return failed(out, format!("cannot load the session's todo list: {e:#}")),
    };
    let user = Message {
        role: "user".into(),
        content: vec![json!({"type": "text", "text": user_text})],
    };
    if let Err(e) = persist(ctx, &user) {
        return failed(out, format!("cannot save the message: {e:#}"));
    }
    messages.push(user);

    let mut sandbox: Option<Sandbox> = None;
    let mut last_text = String::new();
    let mut stop: Option<Stop> = None;
    // Set when the worktree outgrew its disk limit: the turn ends after
    // this step's results are saved.
    let mut disk_full: Option<String> = None;

    while out.steps < ctx.max_steps {
        out.steps += 1;
        (ctx.on_event)(TurnEvent::Step(out.steps));
        let compacted = compact(&mut messages, ctx.context_tokens);
        if compacted > 0 {
            tracing::info!(
                compacted,
                "compacted old tool outputs to stay within the context window"
            );
        }
        let req = StepRequest {
            model: ctx.model,
            system,
            messages: &messages,
            tools: &specs,
            max_tokens: ctx.max_tokens,
        };
        let model_started = Instant::now();
        let step = tokio::select! {
            r = ctx.provider.step(&req, &ctx.cancel, |_, msg| {
                (ctx.on_event)(TurnEvent::Retry(msg.to_string()))
            }) => Ok(r),
            _ = tokio::time::sleep_until(deadline) => Err(Stop::Timeout),
        };
        let reply = match step {
            Err(s) => {
                stop = Some(s);
                break;
            }
            Ok(Err(LlmError::Cancelled)) => {
                stop = Some(Stop::Cancelled);
                break;
            }
            Ok(Err(e)) => {
                out.status = TurnStatus::Failed;
                out.note = Some(format!(
                    "the model request failed: {e}. The session is intact; send a message to try \
                     again."
                ));
                break;
            }
            Ok(Ok(r)) => r,
        };
        log_timing("model", model_started);
        out.usage.add(&reply.usage);

        let mut content = reply.content;
        if content.is_empty() {
            // An empty assistant message would be refused when the
            // transcript is sent back; keep the alternation valid.
            content.push(json!({"type": "text", "text": "(no reply)"}));
        }
        let text = text_of(&content);
        if !text.trim().is_empty() {
            last_text = text;
        }
        let assistant = Message {
            role: "assistant".into(),
            content,
        };
        if let Err(e) = persist(ctx, &assistant) {
            out.status = TurnStatus::Failed;
            out.note = Some(format!("cannot save the model's reply: {e:#}"));
            break;
        }
        let calls: Vec<(String, String, Value)> = assistant
            .content
            .iter()
            .filter(|b| b["type"] == "tool_use")
            .map(|b| {
                (
                    b["id"].as_str().unwrap_or("").to_string(),
                    b["name"].as_str().unwrap_or("").to_string(),
                    b["input"].clone(),
                )
            })
            .collect();
        messages.push(assistant);

        if calls.is_empty() {
            if reply.stop_reason.as_deref() == Some("max_tokens") {
                out.note = Some("the model's reply was cut at the output token limit".into());
            }
            break;
        }

        let mut results = Vec::with_capacity(calls.len());
        for (id, name, input) in calls {
            if let Some(s) = &stop {
                let why = match s {
                    Stop::Cancelled => "the turn was cancelled before this tool call ran",
                    Stop::Timeout => "the turn's time ran out before this tool call ran",
                };
                results.push(tool_result(&id, why, true));
                continue;
            }
            if let Some(why) = &disk_full {
                results.push(tool_result(&id, why, true));
                continue;
            }
            let invalid = reply
                .invalid_tool_inputs
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(_, why)| why.as_str());
            let started = Instant::now();
            let (record, text, is_error) =
                match refusal(ctx, &ledger, &known_tools, &name, &input, invalid) {
                    Some((short, message)) => (
                        record_of(&name, &input, false, Some(short), None, started),
                        message,
                        true,
                    ),
                    None if name == "TodoWrite" => match todo_write(ctx, &input) {
                        Ok(list) => {
                            let text = todos::result_text(&list);
                            (ctx.on_event)(TurnEvent::Todos(list.clone()));
                            out.todos = list;
                            (
                                record_of(&name, &input, true, None, None, started),
                                text,
                                false,
                            )
                        }
                        Err(why) => (
                            record_of(&name, &input, false, Some(why.clone()), None, started),
                            why,
                            true,
                        ),
                    },
                    None => {
                        let call = execute(ctx, &mut sandbox, &name, &input);
                        let outcome = tokio::select! {
                            r = call => Ok(r),
                            _ = ctx.cancel.cancelled() => Err(Stop::Cancelled),
                            _ = tokio::time::sleep_until(deadline) => Err(Stop::Timeout),
                        };
                        match outcome {
                            Ok(Ok(resp)) => {
                                if resp.ok
                                    && let Err(e) = ledger.record(
                                        ctx.store,
                                        ctx.session_id,
                                        &name,
                                        &input,
                                        ctx.worktree,
                                    )
                                {
                                    tracing::warn!("cannot record a file the model read: {e:#}");
                                }
                                if name == "Bash" {
                                    out.commands.push(command_record(&input, &resp));
                                }
                                let err = (!resp.ok).then(|| first_line(&resp.output));
                                let rec = record_of(
                                    &name,
                                    &input,
                                    resp.ok,
                                    err,
                                    resp.meta.exit_code,
                                    started,
                                );
                                (rec, resp.output, !resp.ok)
                            }
                            Ok(Err(e)) => {
                                sandbox = None;
                                let msg = e.to_string();
                                if matches!(e, crate::sandbox::SandboxError::DiskLimit { .. }) {
                                    disk_full = Some(msg.clone());
                                }
                                (
                                    record_of(
                                        &name,
                                        &input,
                                        false,
                                        Some(msg.clone()),
                                        None,
                                        started,
                                    ),
                                    msg,
                                    true,
                                )
                            }
                            Err(s) => {
                                // The call was abandoned mid-flight: end the
                                // sandbox so nothing it started keeps running.
                                if let Some(mut sb) = sandbox.take() {
                                    sb.kill().await;
                                }
                                let msg = match s {
                                    Stop::Cancelled => {
                                        "the turn was cancelled while this tool call \
                                                    ran; it was stopped"
                                    }
                                    Stop::Timeout => {
                                        "the turn's time ran out while this tool call \
                                                  ran; it was stopped"
                                    }
                                };
                                stop = Some(s);
                                (
                                    record_of(
                                        &name,
                                        &input,
                                        false,
                                        Some(msg.into()),
                                        None,
                                        started,
                                    ),
                                    msg.to_string(),
                                    true,
                                )
                            }
                        }
                    }
                };
            tracing::debug!(
                tool = %record.name,
                target = %record.target,
                ok = record.ok,
                ms = record.duration_ms,
                "tool call"
            );
            (ctx.on_event)(TurnEvent::ToolCall(record.clone()));
            out.tool_calls.push(record);
            results.push(tool_result(&id, &text, is_error));
        }
        let results = Message {
            role: "user".into(),
            content: results,
        };
        if let Err(e) = persist(ctx, &results) {
            out.status = TurnStatus::Failed;
            out.note = Some(format!("cannot save the tool results: {e:#}"));
            break;
        }
        messages.push(results);
        if stop.is_some() {
            break;
        }
        if let Some(why) = disk_full.take() {
            out.status = TurnStatus::Failed;
            out.note = Some(why);
            break;
        }
        if ctx.cancel.is_cancelled() {
            stop = Some(Stop::Cancelled);
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            stop = Some(Stop::Timeout);
            break;
        }
        if out.steps == ctx.max_steps {
            out.status = TurnStatus::StepLimit;
            out.note = Some(format!(
                "the turn stopped after {} model calls, its step limit (AGENTKIMI_MAX_STEPS); the \
                 work so far is kept. Send a message (for example \"continue\") to go on.",
                ctx.max_steps
            ));
        }
    }

    if let Some(mut sb) = sandbox.take() {
        sb.kill().await;
    }
    match stop {
        Some(Stop::Cancelled) => {
            out.status = TurnStatus::Cancelled;
            out.note = Some("the turn was cancelled; the work so far is kept and committed".into());
        }
        Some(Stop::Timeout) => {
            out.status = TurnStatus::Timeout;
            out.note = Some(format!(
                "the turn reached its time limit of {} s (AGENTKIMI_TURN_TIMEOUT_MS); the work so \
                 far is kept. Send a message to continue.",
                ctx.timeout.as_secs()
            ));
        }
        None => {}
    }
    out.summary = last_text;
    tracing::info!(
        status = out.status.as_str(),
        steps = out.steps,
        tool_calls = out.tool_calls.len(),
        input_tokens = out.usage.input_tokens,
        output_tokens = out.usage.output_tokens,
        ms = started.elapsed().as_millis() as u64,
        "turn ended"
    );
    out
}

/// Why a tool call must not run, as a short reason for the records and a
/// message for the model, or `None` when it may run. The checks, in order:
/// the input parsed, the tool exists, the host-side gate (unless switched
/// off for tests), and the read-before-write rule.
fn refusal(
    ctx: &TurnContext<'_>,
    ledger: &ReadLedger,
    known_tools: &[String],
    name: &str,
    input: &Value,
    invalid_json: Option<&str>,
) -> Option<(String, String)> {
    if let Some(why) = invalid_json {
        let message = format!(
            "the input of this {name} call was not valid JSON ({why}); send it again as one JSON \
             object"
        );
        return Some((why.to_string(), message));
    }
    if !known_tools.iter().any(|t| t == name) {
        let message = format!(
            "there is no tool named {name:?}; the tools are: {}",
            known_tools.join(", ")
        );
        return Some(("unknown tool".into(), message));
    }
    let refused = ctx
        .gate
        .then(|| tools::gate(name, input, ctx.worktree))
        .flatten()
        .or_else(|| ledger.check(name, input, ctx.worktree))?;
    Some((refused.clone(), refused))
}

/// Runs TodoWrite on the host: checks the list and stores it for the
/// session.
fn todo_write(ctx: &TurnContext<'_>, input: &Value) -> Result<Vec<TodoItem>, String> {
    let list = todos::parse(input)?;
    let value = serde_json::to_value(&list)
        .map_err(|e| format!("TodoWrite: cannot encode the list: {e}"))?;
    ctx.store
        .set_todos(ctx.session_id, &value)
        .map_err(|e| format!("TodoWrite: the host could not save the list ({e:#}); try again"))?;
    Ok(list)
}

/// What the result's `commands` list says about one Bash call.
fn command_record(input: &Value, resp: &crate::protocol::ExecResponse) -> CommandRecord {
    CommandRecord {
        command: input["command"].as_str().unwrap_or_default().to_string(),
        exit_code: resp.meta.exit_code,
        duration_ms: resp.meta.duration_ms,
        timed_out: resp.meta.timed_out,
        background: input["run_in_background"] == Value::Bool(true),
    }
}

fn failed(mut out: TurnOutcome, note: String) -> TurnOutcome {
    out.status = TurnStatus::Failed;
    out.note = Some(note);
    out
}

async fn execute(
    ctx: &TurnContext<'_>,
    sandbox: &mut Option<Sandbox>,
    name: &str,
    input: &Value,
) -> Result<crate::protocol::ExecResponse, crate::sandbox::SandboxError> {
    // The first call of a sandbox also pays for bwrap setting up the
    // namespaces and the executor starting: logged apart from later calls.
    let first = sandbox.is_none();
    if first {
        let t = Instant::now();
        *sandbox = Some(Sandbox::spawn(ctx.profile, ctx.worktree, ctx.start_dir)?);
        log_timing("sandbox_spawn", t);
    }
    let Some(sb) = sandbox.as_mut() else {
        return Err(crate::sandbox::SandboxError::Died("no sandbox".into()));
    };
    let t = Instant::now();
    let result = sb.call(name, input, tools::host_limit(name, input)).await;
    log_timing(if first { "tool_first" } else { "tool" }, t);
    result
}

fn record_of(
    name: &str,
    input: &Value,
    ok: bool,
    error: Option<String>,
    exit_code: Option<i32>,
    started: Instant,
) -> ToolCallRecord {
    ToolCallRecord {
        name: name.to_string(),
        target: tools::target(name, input),
        ok,
        error: error.map(|e| first_line(&e)),
        exit_code,
        duration_ms: started.elapsed().as_millis() as u64,
    }
}

fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("").trim();
    if line.chars().count() > 200 {
        format!("{}…", line.chars().take(200).collect::<String>())
    } else {
        line.to_string()
    }
}

fn tool_result(id: &str, text: &str, is_error: bool) -> Value {
    // Tool-call ids go back exactly as the model sent them: Kimi's ids
    // (`functions.Write:0`) are not Anthropic's shape and must not be
    // rewritten.
    let text = if text.is_empty() { "(no output)" } else { text };
    json!({"type": "tool_result", "tool_use_id": id, "content": text, "is_error": is_error})
}

/// The text blocks of a message, joined.
pub fn text_of(content: &[Value]) -> String {
    content
        .iter()
        .filter(|b| b["type"] == "text")
        .filter_map(|b| b["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Logs how long one phase of a turn took, at debug level under the target
/// `agentkimi::timing` (`phase=… us=…`), so the benchmark in `bench/` can
/// break a turn's time down without a profiler.
pub fn log_timing(phase: &'static str, since: Instant) {
    tracing::debug!(target: "agentkimi::timing", phase, us = since.elapsed().as_micros() as u64);
}

fn persist(ctx: &TurnContext<'_>, m: &Message) -> anyhow::Result<()> {
    let t = Instant::now();
    ctx.store.append_message(
        ctx.session_id,
        ctx.turn,
        &StoredMessage {
            role: m.role.clone(),
            content: Value::Array(m.content.clone()),
        },
    )?;
    log_timing("store", t);
    Ok(())
}

/// The result given to a tool call whose turn died with the server.
const INTERRUPTED_CALL: &str =
    "the server stopped before this tool call finished; check the file state before retrying";

/// Loads the transcript and repairs what a crash can leave behind: an
/// assistant message whose tool calls never got results. Providers refuse a
/// transcript like that, so the missing results are added (and saved) as
/// errors saying the server stopped.
fn load_transcript(ctx: &TurnContext<'_>) -> anyhow::Result<Vec<Message>> {
    let stored = ctx.store.messages(ctx.session_id)?;
    let mut messages: Vec<Message> = stored
        .into_iter()
        .map(|m| Message {
            role: m.role,
            content: match m.content {
                Value::Array(a) => a,
                other => vec![other],
            },
        })
        .collect();
    if let Some(last) = messages.last()
        && last.role == "assistant"
    {
        let pending: Vec<Value> = last
            .content
            .iter()
            .filter(|b| b["type"] == "tool_use")
            .filter_map(|b| b["id"].as_str())
            .map(|id| tool_result(id, INTERRUPTED_CALL, true))
            .collect();
        if !pending.is_empty() {
            let repair = Message {
                role: "user".into(),
                content: pending,
            };
            persist(ctx, &repair)?;
            messages.push(repair);
        }
    }
    Ok(messages)
}

/// Messages at the end of the transcript that compaction never touches: the
/// model needs its latest tool outputs verbatim.
const KEEP_RECENT: usize = 8;
/// Tool outputs and inputs shorter than this are not worth compacting.
const COMPACT_MIN_CHARS: usize = 400;

/// A rough token count: about four bytes of JSON per token. Good enough to
/// decide when to compact; the provider's own count is in each step's usage.
fn estimate_tokens(messages: &[Message]) -> usize {
    messages
        .iter()
        .flat_map(|m| m.content.iter())
        .map(|b| b.to_string().len() / 4)
        .sum()
}

/// Keeps the transcript within the model's context window. When the
/// estimate passes three quarters of `context_tokens`, the oldest tool
/// outputs (and large tool inputs, such as whole files given to Write) are
/// replaced by a short marker, oldest first, until the estimate is under
/// half the window. The model is told what was removed, so it can re-run a
/// tool when it needs the output again. Only the copy sent to the model is
/// compacted; the stored transcript stays whole. Returns how many blocks
/// were compacted.
fn compact(messages: &mut [Message], context_tokens: usize) -> usize {
    let mut estimate = estimate_tokens(messages);
    if estimate <= context_tokens / 4 * 3 {
        return 0;
    }
    let target = context_tokens / 2;
    let end = messages.len().saturating_sub(KEEP_RECENT);
    let mut compacted = 0;
    for m in &mut messages[..end] {
        for block in &mut m.content {
            if estimate <= target {
                return compacted;
            }
            let before = block.to_string().len() / 4;
            let changed = match block["type"].as_str() {
                Some("tool_result") => compact_string(&mut block["content"], "output"),
                Some("tool_use") => match block.get_mut("input").and_then(Value::as_object_mut) {
                    Some(input) => {
                        let mut any = false;
                        for v in input.values_mut() {
                            any |= compact_string(v, "input");
                        }
                        any
                    }
                    None => false,
                },
                _ => false,
            };
            if changed {
                compacted += 1;
                estimate = estimate.saturating_sub(before) + block.to_string().len() / 4;
            }
        }
    }
    compacted
}

fn compact_string(value: &mut Value, what: &str) -> bool {
    let len = match value {
        Value::String(s) if s.len() >= COMPACT_MIN_CHARS => s.len(),
        // Tool results may also carry content as a list of text blocks.
        Value::Array(items) => items.iter().map(|i| i.to_string().len()).sum(),
        _ => return false,
    };
    if len < COMPACT_MIN_CHARS {
        return false;
    }
    *value = Value::String(format!(
        "[{what} of {len} bytes removed to keep the conversation within the context window; \
         run the tool again if you need it]"
    ));
    true
}

/// The content of the last fenced code block in `summary`: by the system
/// prompt's convention, the test output.
pub fn test_output(summary: &str) -> Option<String> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in summary.lines() {
        if line.trim_start().starts_with("```") {
            match current.take() {
                Some(body) => blocks.push(body.join("\n")),
                None => current = Some(Vec::new()),
            }
        } else if let Some(body) = current.as_mut() {
            body.push(line);
        }
    }
    blocks.pop().filter(|b| !b.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_output_is_the_last_fenced_block() {
        let s = "Changed x.\n```rust\nfn a() {}\n```\nTests:\n```\nok 3 passed\n```\nDone.";
        assert_eq!(test_output(s).as_deref(), Some("ok 3 passed"));
        assert_eq!(test_output("no blocks"), None);
        assert_eq!(test_output("```\nunterminated"), None);
    }

    #[test]
    fn system_prompt_names_the_worktree_and_rules() {
        let p = system_prompt(Path::new("/w/t"), Path::new("/w/t/sub"), Network::Off);
        assert!(p.contains("/w/t"));
        assert!(p.contains("Start in /w/t/sub"));
        assert!(p.contains("git does not work"));
        assert!(p.contains("no network"));
        assert!(p.contains("TodoWrite"));
        assert!(p.contains("Read a file in this session before you Edit it"));
        assert!(!p.contains("WebFetch"));
        let p = system_prompt(Path::new("/w/t"), Path::new("/w/t"), Network::On);
        assert!(p.contains("WebFetch"));
    }

    #[test]
    fn compaction_shrinks_old_outputs_and_keeps_recent_ones_and_ids() {
        let big = "x".repeat(40_000);
        let mut messages = Vec::new();
        for i in 0..30 {
            messages.push(Message {
                role: "assistant".into(),
                content: vec![
                    json!({"type": "tool_use", "id": format!("t{i}"), "name": "Write",
                                     "input": {"file_path": "f", "content": big}}),
                ],
            });
            messages.push(Message {
                role: "user".into(),
                content: vec![tool_result(&format!("t{i}"), &big, false)],
            });
        }
        let before = estimate_tokens(&messages);
        let n = compact(&mut messages, 200_000);
        assert!(n > 0);
        assert!(
            estimate_tokens(&messages) <= 100_000,
            "{} of {before}",
            estimate_tokens(&messages)
        );
        // Ids survive; the last messages are untouched.
        assert_eq!(messages[0].content[0]["id"], "t0");
        assert_eq!(messages[1].content[0]["tool_use_id"], "t0");
        assert!(
            messages[1].content[0]["content"]
                .as_str()
                .unwrap()
                .contains("removed")
        );
        let last = messages.last().unwrap();
        assert_eq!(
            last.content[0]["content"].as_str().unwrap().len(),
            big.len()
        );
        // Under the threshold nothing changes.
        let mut small = messages[..2].to_vec();
        assert_eq!(compact(&mut small, 200_000), 0);
    }

    #[test]
    fn tool_results_keep_ids_verbatim() {
        let r = tool_result("functions.Write:0", "", false);
        assert_eq!(r["tool_use_id"], "functions.Write:0");
        assert_eq!(r["content"], "(no output)");
    }
}
