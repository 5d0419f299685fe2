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

use crate::session::{EndResult, SessionError, Sessions, TurnResult};

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
                "prompt": {"type": "string", "description": "The task for Kimi, with the context it needs."},
                "workdir": {"type": "string", "description": "Absolute path of a directory inside a git repository to work on. Omit for a scratch repository."}
            },
            "required": ["prompt"]
        })),
    )
    .with_raw_output_schema(schema_of::<TurnResult>());
    let send = Tool::new(
        "agentkimi_send",
        "Send a follow-up message to a Kimi session (review feedback, the next step). Kimi \
         continues with the whole conversation and the same worktree, and the result has its \
         new summary and the diff of the session's work so far.",
        object(json!({
            "type": "object",
            "properties": {
                "session_id": {"type": "string", "description": "The session id returned by agentkimi_start."},
                "message": {"type": "string", "description": "The message for Kimi."}
            },
            "required": ["session_id", "message"]
        })),
    )
    .with_raw_output_schema(schema_of::<TurnResult>());
    let end = Tool::new(
        "agentkimi_end",
        "End a Kimi session: commits anything left, removes its worktree, and keeps the branch \
         agentkimi/<id> with all the work for review and merge.",
        object(json!({
            "type": "object",
            "properties": {
                "session_id": {"type": "string", "description": "The session id returned by agentkimi_start."}
            },
            "required": ["session_id"]
        })),
    )
    .with_raw_output_schema(schema_of::<EndResult>());
    vec![start, send, end]
}

/// Pulls a required, non-empty string argument out of `args`.
fn required_str(args: &Map<String, Value>, name: &str, tool: &str) -> Result<String, String> {
    match args.get(name) {
        None | Some(Value::Null) => Err(format!("{tool} needs the argument `{name}` (a string)")),
        Some(Value::String(s)) if s.trim().is_empty() => Err(format!(
            "{tool}: `{name}` is empty; pass a non-empty string"
        )),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!(
            "{tool}: `{name}` must be a string, not {}",
            json_kind(other)
        )),
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
                    let r = self
                        .sessions
                        .start(&prompt, workdir.as_deref(), ctx.ct.clone(), progress)
                        .await
                        .map_err(session_error)?;
                    Ok(structured(r.render(), &r))
                }
                "agentkimi_send" => {
                    let id = required_str(&args, "session_id", name)?;
                    let message = required_str(&args, "message", name)?;
                    let r = self
                        .sessions
                        .send(id.trim(), &message, ctx.ct.clone(), progress)
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
                    "unknown tool {other:?}; this server offers agentkimi_start, agentkimi_send \
                     and agentkimi_end"
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
                 agentkimi_end (the work stays on branch agentkimi/<id>).",
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
