//! The MCP server: tool definitions, argument checking, and result
//! rendering.
//!
//! Every argument problem and every failure a caller can fix comes back as a
//! tool result with `isError: true` and a message the calling model can act
//! on, not as a protocol error: MCP clients show tool errors to their model
//! but often hide protocol errors from it. Every successful result carries
//! the same facts twice, as text for clients that read text and as
//! `structuredContent` matching the tool's `outputSchema`.

use std::sync::Arc;

use rmcp::{
    ErrorData as McpError, RoleServer, ServerHandler,
    model::{
        CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
        JsonObject, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
        ServerCapabilities, ServerConfig, Tool,
    },
    service::RequestContext,
};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::session::{
    DiffPage, EndResult, SessionError, SessionList, SessionOptions, SessionStatus, Sessions,
    TurnResult,
};

/// What agentkimi_wait waits when the caller gives no `timeout_s`: below the
/// 60 s request timeout many clients use.
const DEFAULT_WAIT_S: u64 = 50;

/// The longest agentkimi_wait may wait in one call.
const MAX_WAIT_S: u64 = 3600;

/// The MCP face of [`Sessions`].
#[derive(Clone)]
pub struct Server {
    sessions: Arc<Sessions>,
}

impl Server {
    /// Wraps the session manager.
    pub fn new(sessions: Arc<Sessions>) -> Server {
        Server { sessions }
    }
}

fn schema_of<T: schemars::JsonSchema>() -> Arc<JsonObject> {
    let schema =
        serde_json::to_value(schemars::schema_for!(T)).unwrap_or(json!({"type": "object"}));
    Arc::new(schema.as_object().cloned().unwrap_or_default())
}

/// The output schema of the calls that answer with a turn's result or, when
/// the turn still runs, the session's status: either object, told apart by
/// `status` (a result) or `state` (a status). Both schemas' definitions move
/// to the root, where their `#/$defs/...` references point.
fn result_or_status_schema() -> Arc<JsonObject> {
    let mut defs = Map::new();
    let mut branches = Vec::new();
    for schema in [
        serde_json::to_value(schemars::schema_for!(TurnResult)),
        serde_json::to_value(schemars::schema_for!(SessionStatus)),
    ] {
        let Ok(Value::Object(mut schema)) = schema else {
            continue;
        };
        if let Some(Value::Object(d)) = schema.remove("$defs") {
            defs.extend(d);
        }
        schema.remove("$schema");
        branches.push(Value::Object(schema));
    }
    object(json!({
        "type": "object",
        "anyOf": branches,
        "$defs": defs,
    }))
}

fn object(v: Value) -> Arc<JsonObject> {
    Arc::new(v.as_object().cloned().unwrap_or_default())
}

/// The tools this server offers.
pub fn tool_list() -> Vec<Tool> {
    let start = Tool::new(
        "agentkimi_start",
        "Start a Kimi coding session on a task. Kimi works autonomously in a sandboxed git \
         worktree (a new branch agentkimi/<id> off HEAD when `workdir` is inside a git \
         repository, or a scratch repository when it is omitted) and returns its summary and \
         the git diff of everything it changed. Continue with agentkimi_send; finish with \
         agentkimi_end, which keeps the branch.",
        object(json!({
            "type": "object",
            "properties": {
                "prompt": {
                    "type": "string",
                    "description": "The task for Kimi, with the context it needs."
                },
                "workdir": {
                    "type": "string",
                    "description": "Absolute path of a directory inside a git repository to \
                        work on. Omit for a scratch repository."
                },
                "wait": {
                    "type": "boolean",
                    "default": true,
                    "description": "Wait for the turn to end (default). false: return at once \
                        with the session id and status while Kimi works on; collect the result \
                        with agentkimi_wait."
                },
                "model": {
                    "type": "string",
                    "description": "Model for this session instead of the server's."
                },
                "timeout_s": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 86400,
                    "description": "Wall-clock limit of each turn of this session, in seconds."
                },
                "max_steps": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 1000,
                    "description": "Model calls allowed per turn of this session."
                },
                "instructions": {
                    "type": "string",
                    "description": "Extra instructions appended to Kimi's system prompt for \
                        this session."
                },
                "network": {"type": "string", "enum": ["off", "on"], "description": "Sandbox network for this session. May only be stricter than the server's setting: \"off\" always works, \"on\" only when the server allows it."}
            },
            "required": ["prompt"]
        })),
    )
    .with_raw_output_schema(result_or_status_schema());
    let send = Tool::new(
        "agentkimi_send",
        "Send a follow-up message to a Kimi session (review feedback, the next step). Kimi \
         continues with the whole conversation and the same worktree, and the result has its \
         new summary and the diff of the session's work so far.",
        object(json!({
            "type": "object",
            "properties": {
                "session_id": {
                    "type": "string",
                    "description": "The session id returned by agentkimi_start."
                },
                "message": {"type": "string", "description": "The message for Kimi."},
                "wait": {
                    "type": "boolean",
                    "default": true,
                    "description": "Wait for the turn to end (default). false: return at once \
                        while Kimi works on; collect the result with agentkimi_wait."
                }
            },
            "required": ["session_id", "message"]
        })),
    )
    .with_raw_output_schema(result_or_status_schema());
    let end = Tool::new(
        "agentkimi_end",
        "End a Kimi session: commits anything left, removes its worktree, and keeps the branch \
         agentkimi/<id> with all the work for review and merge.",
        object(json!({
            "type": "object",
            "properties": {
                "session_id": {
                    "type": "string",
                    "description": "The session id returned by agentkimi_start."
                }
            },
            "required": ["session_id"]
        })),
    )
    .with_raw_output_schema(schema_of::<EndResult>());
    let id_only = || {
        object(json!({
            "type": "object",
            "properties": {
                "session_id": {
                    "type": "string",
                    "description": "The session id returned by agentkimi_start."
                }
            },
            "required": ["session_id"]
        }))
    };
    let status = Tool::new(
        "agentkimi_status",
        "Show what a Kimi session is doing: running (current step, last action, time), \
         finished (result waiting for agentkimi_wait), idle or ended, with the last result in \
         short and the tokens used. Returns at once.",
        id_only(),
    )
    .with_raw_output_schema(schema_of::<SessionStatus>());
    let wait = Tool::new(
        "agentkimi_wait",
        "Wait for a session's turn (started with wait: false) to end and return its result: \
         summary, diff, tool calls, tokens. If it is still running after timeout_s, returns \
         the session's status instead; call again to keep waiting. When no turn runs, returns \
         the last turn's result.",
        object(json!({
            "type": "object",
            "properties": {
                "session_id": {
                    "type": "string",
                    "description": "The session id returned by agentkimi_start."
                },
                "timeout_s": {"type": "integer", "minimum": 0, "maximum": MAX_WAIT_S, "default": DEFAULT_WAIT_S, "description": "Longest wait in seconds."}
            },
            "required": ["session_id"]
        })),
    )
    .with_raw_output_schema(result_or_status_schema());
    let list = Tool::new(
        "agentkimi_list",
        "List the Kimi sessions this server knows, most recently active first, with their \
         state, branch, turns, last activity and workdir.",
        object(json!({"type": "object", "properties": {}})),
    )
    .with_raw_output_schema(schema_of::<SessionList>());
    let diff = Tool::new(
        "agentkimi_diff",
        "Show a session's diff from its base commit: the whole diff or one file, in pages of \
         about 60 kB (pass next_offset to get the next page). Works for ended sessions too \
         (then it shows what is on the branch).",
        object(json!({
            "type": "object",
            "properties": {
                "session_id": {
                    "type": "string",
                    "description": "The session id returned by agentkimi_start."
                },
                "path": {
                    "type": "string",
                    "description": "Only this file (path relative to the repository root)."
                },
                "offset": {
                    "type": "integer",
                    "minimum": 0,
                    "default": 0,
                    "description": "Byte offset of the page: 0, or next_offset from the \
                        previous page."
                }
            },
            "required": ["session_id"]
        })),
    )
    .with_raw_output_schema(schema_of::<DiffPage>());
    let cancel = Tool::new(
        "agentkimi_cancel",
        "Stop a session's running turn. Kimi stops within about a second; the work so far is \
         committed on the branch and the turn's result (status cancelled) is returned. The \
         session stays open for agentkimi_send.",
        id_only(),
    )
    .with_raw_output_schema(result_or_status_schema());
    vec![start, send, end, status, wait, list, diff, cancel]
}

/// Pulls a required, non-empty string argument out of `args`.
fn required_str(args: &Map<String, Value>, name: &str, tool: &str) -> Result<String, String> {
    match optional_str(args, name, tool)? {
        Some(s) => Ok(s),
        // optional_str treats a blank string as absent; here that is its
        // own mistake, worth its own message.
        None if matches!(args.get(name), Some(Value::String(_))) => Err(format!(
            "{tool}: `{name}` is empty; pass a non-empty string"
        )),
        None => Err(format!("{tool} needs the argument `{name}` (a string)")),
    }
}

fn optional_str(
    args: &Map<String, Value>,
    name: &str,
    tool: &str,
) -> Result<Option<String>, String> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "{tool}: `{name}` must be a string, not {}",
            json_kind(other)
        )),
    }
}

fn optional_bool(
    args: &Map<String, Value>,
    name: &str,
    tool: &str,
) -> Result<Option<bool>, String> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(format!(
            "{tool}: `{name}` must be true or false, not {}",
            json_kind(other)
        )),
    }
}

fn optional_u64(args: &Map<String, Value>, name: &str, tool: &str) -> Result<Option<u64>, String> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
            format!("{tool}: `{name}` must be a whole number of at least 0, not {n}")
        }),
        Some(other) => Err(format!(
            "{tool}: `{name}` must be a whole number, not {}",
            json_kind(other)
        )),
    }
}

/// The per-session options of agentkimi_start.
fn session_options(args: &Map<String, Value>, tool: &str) -> Result<SessionOptions, String> {
    let max_steps =
        optional_u64(args, "max_steps", tool)?.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    Ok(SessionOptions {
        model: optional_str(args, "model", tool)?,
        timeout_s: optional_u64(args, "timeout_s", tool)?,
        max_steps,
        instructions: optional_str(args, "instructions", tool)?,
        network: optional_str(args, "network", tool)?,
    })
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn error_result(msg: impl Into<String>) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(msg.into())])
}

fn structured<T: Serialize>(text: String, value: &T) -> CallToolResult {
    let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
    r.structured_content = serde_json::to_value(value).ok();
    r
}

impl Server {
    async fn dispatch(
        &self,
        name: &str,
        args: Map<String, Value>,
        ctx: RequestContext<RoleServer>,
    ) -> CallToolResult {
        let progress = progress_reporter(&ctx);
        let result: Result<CallToolResult, String> = async {
            match name {
                "agentkimi_start" => {
                    let prompt = required_str(&args, "prompt", name)?;
                    let workdir = optional_str(&args, "workdir", name)?;
                    let wait = optional_bool(&args, "wait", name)?.unwrap_or(true);
                    let options = session_options(&args, name)?;
                    let r = self
                        .sessions
                        .start_with(
                            &prompt,
                            workdir.as_deref(),
                            &options,
                            wait,
                            ctx.ct.clone(),
                            progress,
                        )
                        .await
                        .map_err(session_error)?;
                    Ok(structured(r.render(), &r))
                }
                "agentkimi_send" => {
                    let id = required_str(&args, "session_id", name)?;
                    let message = required_str(&args, "message", name)?;
                    let wait = optional_bool(&args, "wait", name)?.unwrap_or(true);
                    let r = self
                        .sessions
                        .send_with(id.trim(), &message, wait, ctx.ct.clone(), progress)
                        .await
                        .map_err(session_error)?;
                    Ok(structured(r.render(), &r))
                }
                "agentkimi_status" => {
                    let id = required_str(&args, "session_id", name)?;
                    let r = self
                        .sessions
                        .status(id.trim())
                        .await
                        .map_err(session_error)?;
                    Ok(structured(r.render(), &r))
                }
                "agentkimi_wait" => {
                    let id = required_str(&args, "session_id", name)?;
                    let secs = optional_u64(&args, "timeout_s", name)?.unwrap_or(DEFAULT_WAIT_S);
                    if secs > MAX_WAIT_S {
                        return Err(format!(
                            "{name}: timeout_s {secs} is above {MAX_WAIT_S}; wait in shorter \
                             calls (the status between them shows progress)"
                        ));
                    }
                    let r = self
                        .sessions
                        .wait(id.trim(), std::time::Duration::from_secs(secs), progress)
                        .await
                        .map_err(session_error)?;
                    Ok(structured(r.render(), &r))
                }
                "agentkimi_cancel" => {
                    let id = required_str(&args, "session_id", name)?;
                    let r = self
                        .sessions
                        .cancel(id.trim())
                        .await
                        .map_err(session_error)?;
                    Ok(structured(r.render(), &r))
                }
                "agentkimi_list" => {
                    let r = self.sessions.list().await.map_err(session_error)?;
                    Ok(structured(r.render(), &r))
                }
                "agentkimi_diff" => {
                    let id = required_str(&args, "session_id", name)?;
                    let path = optional_str(&args, "path", name)?;
                    let offset = optional_u64(&args, "offset", name)?.unwrap_or(0);
                    let offset = usize::try_from(offset).unwrap_or(usize::MAX);
                    let r = self
                        .sessions
                        .diff_page(id.trim(), path.as_deref(), offset)
                        .await
                        .map_err(session_error)?;
                    Ok(structured(r.render(), &r))
                }
                "agentkimi_end" => {
                    let id = required_str(&args, "session_id", name)?;
                    let r = self.sessions.end(id.trim()).await.map_err(session_error)?;
                    Ok(structured(r.render(), &r))
                }
                other => Err(format!(
                    "unknown tool {other:?}; this server offers agentkimi_start, agentkimi_send, \
                     agentkimi_status, agentkimi_wait, agentkimi_cancel, agentkimi_list, \
                     agentkimi_diff and agentkimi_end"
                )),
            }
        }
        .await;
        result.unwrap_or_else(error_result)
    }
}

fn session_error(e: SessionError) -> String {
    e.to_string()
}

/// Sends `notifications/progress` when the caller asked for them (by passing
/// a progress token); otherwise does nothing. Progress also keeps clients'
/// idle timers from firing during a long turn.
fn progress_reporter(ctx: &RequestContext<RoleServer>) -> crate::session::Progress {
    let Some(token) = ctx.meta.get_progress_token() else {
        return Arc::new(|_| {});
    };
    let peer = ctx.peer.clone();
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    Arc::new(move |message: String| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let peer = peer.clone();
        let token = token.clone();
        tokio::spawn(async move {
            let mut p = ProgressNotificationParam::new(token, n as f64);
            p.message = Some(message);
            let _ = peer.notify_progress(p).await;
        });
    })
}

impl ServerHandler for Server {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("agentkimi", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "agentkimi hands coding tasks to Kimi, which works autonomously in a sandboxed \
                 git worktree. Call agentkimi_start with a self-contained task, review the \
                 returned summary and diff, continue with agentkimi_send, and finish with \
                 agentkimi_end (the work stays on branch agentkimi/<id>). For long tasks or \
                 several in parallel pass wait: false, then follow with agentkimi_status and \
                 collect with agentkimi_wait; agentkimi_cancel stops a turn, agentkimi_list \
                 and agentkimi_diff show sessions and their work.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(tool_list()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = request.arguments.unwrap_or_default();
        Ok(self.dispatch(&request.name, args, context).await.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_errors_say_what_to_pass() {
        let args: Map<String, Value> =
            serde_json::from_value(json!({"prompt": 3, "workdir": ""})).unwrap();
        let e = required_str(&args, "prompt", "agentkimi_start").unwrap_err();
        assert!(e.contains("must be a string, not a number"), "{e}");
        assert_eq!(
            optional_str(&args, "workdir", "agentkimi_start").unwrap(),
            None
        );
        let e = required_str(&Map::new(), "session_id", "agentkimi_send").unwrap_err();
        assert!(e.contains("needs the argument `session_id`"), "{e}");
        let args: Map<String, Value> = serde_json::from_value(json!({"prompt": "  "})).unwrap();
        assert!(
            required_str(&args, "prompt", "x")
                .unwrap_err()
                .contains("empty")
        );
    }

    #[test]
    fn every_tool_has_input_and_object_output_schemas() {
        for t in tool_list() {
            assert_eq!(
                t.input_schema.get("type"),
                Some(&json!("object")),
                "{}",
                t.name
            );
            let out = t.output_schema.as_ref().unwrap();
            assert_eq!(out.get("type"), Some(&json!("object")), "{}", t.name);
        }
    }
}
