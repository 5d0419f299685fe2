//! The Anthropic Messages API with streaming (server-sent events).
//!
//! Moonshot serves Kimi through this protocol. The stream is assembled into
//! whole content blocks: text and thinking deltas are appended, tool inputs
//! arrive as JSON fragments that are parsed once the block stops. Event and
//! block types we do not know are tolerated: unknown events are skipped,
//! unknown blocks are kept as the provider sent them, so a provider that adds
//! a feature does not break a session.

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{Value, json};

use super::{LlmError, StepReply, StepRequest, Usage, merge_roles, send_stream};
use crate::config::ApiKey;

/// API version header the Messages API requires.
const ANTHROPIC_VERSION: &str = "2023-06-01";

/// Client for one provider endpoint.
pub struct AnthropicClient {
    http: reqwest::Client,
    url: String,
    key: ApiKey,
}

impl AnthropicClient {
    /// Creates a client for `base_url` (the `/v1/messages` path is appended).
    ///
    /// # Errors
    ///
    /// When the HTTP client cannot be built (no TLS backend).
    pub fn new(base_url: &str, key: ApiKey) -> anyhow::Result<AnthropicClient> {
        let http = super::http_client()?;
        Ok(AnthropicClient {
            http,
            url: format!("{}/v1/messages", base_url.trim_end_matches('/')),
            key,
        })
    }

    /// Sends one streaming request and assembles the reply.
    ///
    /// # Errors
    ///
    /// [`LlmError::Transient`] for rate limits, overload, server errors and
    /// broken streams; [`LlmError::Fatal`] for everything retrying cannot fix.
    pub async fn step(&self, req: &StepRequest<'_>) -> Result<StepReply, LlmError> {
        let body = json!({
            "model": req.model,
            "max_tokens": req.max_tokens,
            "system": req.system,
            "messages": merge_roles(req.messages),
            "tools": req.tools,
            "stream": true,
        });
        // Both header forms: Anthropic-compatible gateways differ in which
        // they read, and a user's first call should not fail over that.
        let request = self
            .http
            .post(&self.url)
            .header("x-api-key", self.key.expose())
            .bearer_auth(self.key.expose())
            .header("anthropic-version", ANTHROPIC_VERSION)
            .json(&body);
        let resp = send_stream(request, &self.url, req.model).await?;

        let mut assembler = Assembler::default();
        let mut events = resp.bytes_stream().eventsource();
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| {
                LlmError::Transient(format!("the model's stream broke off: {e}"), None)
            })?;
            if assembler.feed(&event.event, &event.data)? {
                return Ok(assembler.finish());
            }
        }
        Err(LlmError::Transient(
            "the model's stream ended before message_stop".into(),
            None,
        ))
    }
}

/// Builds a [`StepReply`] from stream events.
#[derive(Default)]
struct Assembler {
    blocks: Vec<Value>,
    /// Raw JSON fragments of tool inputs, by block index.
    partial_json: Vec<String>,
    stop_reason: Option<String>,
    usage: Usage,
    invalid: Vec<(String, String)>,
}

impl Assembler {
    /// Applies one event; returns `true` at `message_stop`.
    fn feed(&mut self, event: &str, data: &str) -> Result<bool, LlmError> {
        // Some servers omit the `event:` line; the type is also in the data.
        let parsed: Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(_) if data.trim().is_empty() || data.trim() == "[DONE]" => return Ok(false),
            Err(e) => {
                return Err(LlmError::Transient(
                    format!("the model sent a malformed event: {e}"),
                    None,
                ));
            }
        };
        let kind = parsed.get("type").and_then(Value::as_str).unwrap_or(event);
        match kind {
            "message_start" => {
                if let Some(u) = parsed.pointer("/message/usage") {
                    merge_usage(&mut self.usage, u);
                }
            }
            "content_block_start" => {
                let index = block_index(&parsed)?;
                let mut block = parsed.get("content_block").cloned().unwrap_or(json!({}));
                if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                    // The input arrives in deltas; a start block carries `{}`.
                    block["input"] = json!({});
                }
                self.ensure(index);
                self.blocks[index] = block;
            }
            "content_block_delta" => {
                let index = block_index(&parsed)?;
                self.ensure(index);
                let delta = parsed.get("delta").cloned().unwrap_or(Value::Null);
                let text = |key: &str| {
                    delta
                        .get(key)
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string()
                };
                let block = &mut self.blocks[index];
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => append(block, "text", &text("text")),
                    Some("thinking_delta") => append(block, "thinking", &text("thinking")),
                    Some("signature_delta") => append(block, "signature", &text("signature")),
                    Some("input_json_delta") => {
                        self.partial_json[index].push_str(&text("partial_json"))
                    }
                    // citations and anything newer: not needed to act on.
                    _ => {}
                }
            }
            "content_block_stop" => {
                let index = block_index(&parsed)?;
                self.ensure(index);
                self.close_tool_input(index);
            }
            "message_delta" => {
                if let Some(r) = parsed.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop_reason = Some(r.to_string());
                }
                if let Some(u) = parsed.get("usage") {
                    merge_usage(&mut self.usage, u);
                }
            }
            "message_stop" => return Ok(true),
            "error" => {
                let etype = parsed
                    .pointer("/error/type")
                    .and_then(Value::as_str)
                    .unwrap_or("error");
                let msg = parsed
                    .pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let text = format!("the model provider reported {etype}: {msg}");
                return Err(match etype {
                    "invalid_request_error"
                    | "authentication_error"
                    | "permission_error"
                    | "not_found_error" => LlmError::Fatal(text),
                    _ => LlmError::Transient(text, None),
                });
            }
            // ping and event types added after this was written.
            _ => {}
        }
        Ok(false)
    }

    fn ensure(&mut self, index: usize) {
        while self.blocks.len() <= index {
            self.blocks.push(Value::Null);
            self.partial_json.push(String::new());
        }
    }

    fn close_tool_input(&mut self, index: usize) {
        let block = &mut self.blocks[index];
        if block.get("type").and_then(Value::as_str) != Some("tool_use") {
            return;
        }
        let raw = std::mem::take(&mut self.partial_json[index]);
        if raw.trim().is_empty() {
            return;
        }
        match serde_json::from_str::<Value>(&raw) {
            Ok(v) if v.is_object() => block["input"] = v,
            Ok(_) | Err(_) => {
                let id = block
                    .get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let why = serde_json::from_str::<Value>(&raw)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "the input is not a JSON object".into());
                self.invalid.push((id, why));
            }
        }
    }

    fn finish(mut self) -> StepReply {
        for i in 0..self.blocks.len() {
            self.close_tool_input(i);
        }
        StepReply {
            // Indices the provider skipped would be nulls; they are not blocks.
            content: self.blocks.into_iter().filter(|b| !b.is_null()).collect(),
            stop_reason: self.stop_reason,
            usage: self.usage,
            invalid_tool_inputs: self.invalid,
        }
    }
}

fn block_index(event: &Value) -> Result<usize, LlmError> {
    let index = event.get("index").and_then(Value::as_u64).ok_or_else(|| {
        LlmError::Transient(
            "the model sent a content block event without an index".into(),
            None,
        )
    })?;
    // A hostile or broken stream must not make us allocate without bound.
    if index > 4096 {
        return Err(LlmError::Transient(
            format!("the model sent block index {index}"),
            None,
        ));
    }
    Ok(index as usize)
}

fn append(block: &mut Value, key: &str, text: &str) {
    if !block.is_object() {
        *block = json!({});
    }
    let current = block
        .get(key)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    block[key] = Value::String(current + text);
}

/// Takes the counts present in `u`; later events carry cumulative values, so
/// a present field replaces the earlier one.
fn merge_usage(usage: &mut Usage, u: &Value) {
    let get = |k: &str| u.get(k).and_then(Value::as_u64);
    if let Some(v) = get("input_tokens") {
        usage.input_tokens = v;
    }
    if let Some(v) = get("output_tokens") {
        usage.output_tokens = v;
    }
    if let Some(v) = get("cache_read_input_tokens") {
        usage.cache_read_input_tokens = v;
    }
    if let Some(v) = get("cache_creation_input_tokens") {
        usage.cache_creation_input_tokens = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(a: &mut Assembler, events: &[Value]) -> bool {
        events.iter().any(|e| a.feed("", &e.to_string()).unwrap())
    }

    #[test]
    fn assembles_thinking_text_and_tool_use_verbatim() {
        let mut a = Assembler::default();
        let done = feed_all(
            &mut a,
            &[
                json!({
                    "type": "message_start",
                    "message": {
                        "usage": {
                            "input_tokens": 12,
                            "cache_read_input_tokens": 4
                        }
                    }
                }),
                json!({
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {
                        "type": "thinking",
                        "thinking": ""
                    }
                }),
                json!({
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {
                        "type": "thinking_delta",
                        "thinking": "let me "
                    }
                }),
                json!({
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {
                        "type": "thinking_delta",
                        "thinking": "see"
                    }
                }),
                json!({
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {
                        "type": "signature_delta",
                        "signature": "c2ln"
                    }
                }),
                json!({"type":"content_block_stop","index":0}),
                json!({"type":"ping"}),
                json!({"type":"mystery_event","x":1}),
                json!({
                    "type": "content_block_start",
                    "index": 1,
                    "content_block": {
                        "type": "tool_use",
                        "id": "functions.Write:0",
                        "name": "Write",
                        "input": {}
                    }
                }),
                json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"file_path\": \"a"}}),
                json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":".txt\"}"}}),
                json!({"type":"content_block_stop","index":1}),
                json!({
                    "type": "content_block_start",
                    "index": 2,
                    "content_block": {
                        "type": "server_gizmo",
                        "payload": [
                            1,
                            2
                        ]
                    }
                }),
                json!({"type":"content_block_stop","index":2}),
                json!({
                    "type": "message_delta",
                    "delta": {
                        "stop_reason": "tool_use"
                    },
                    "usage": {
                        "output_tokens": 30
                    }
                }),
                json!({"type":"message_stop"}),
            ],
        );
        assert!(done);
        let r = a.finish();
        assert_eq!(
            r.content[0],
            json!({"type":"thinking","thinking":"let me see","signature":"c2ln"})
        );
        assert_eq!(
            r.content[1],
            json!({
                "type": "tool_use",
                "id": "functions.Write:0",
                "name": "Write",
                "input": {
                    "file_path": "a.txt"
                }
            })
        );
        assert_eq!(r.content[2], json!({"type":"server_gizmo","payload":[1,2]}));
        assert_eq!(r.stop_reason.as_deref(), Some("tool_use"));
        assert_eq!(r.usage.input_tokens, 12);
        assert_eq!(r.usage.cache_read_input_tokens, 4);
        assert_eq!(r.usage.output_tokens, 30);
        assert!(r.invalid_tool_inputs.is_empty());
    }

    #[test]
    fn broken_tool_json_is_reported_not_fatal() {
        let mut a = Assembler::default();
        feed_all(
            &mut a,
            &[
                json!({
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {
                        "type": "tool_use",
                        "id": "t1",
                        "name": "Bash",
                        "input": {}
                    }
                }),
                json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"command\": "}}),
                json!({"type":"content_block_stop","index":0}),
            ],
        );
        let r = a.finish();
        assert_eq!(r.content[0]["input"], json!({}));
        assert_eq!(r.invalid_tool_inputs.len(), 1);
        assert_eq!(r.invalid_tool_inputs[0].0, "t1");
    }

    #[test]
    fn error_events_are_classified() {
        let mut a = Assembler::default();
        let e = a
            .feed(
                "error",
                &json!({"type":"error","error":{"type":"overloaded_error","message":"busy"}})
                    .to_string(),
            )
            .unwrap_err();
        assert!(matches!(e, LlmError::Transient(..)));
        let e = a
            .feed(
                "error",
                &json!({"type":"error","error":{"type":"invalid_request_error","message":"bad"}})
                    .to_string(),
            )
            .unwrap_err();
        assert!(matches!(e, LlmError::Fatal(..)));
    }
}
