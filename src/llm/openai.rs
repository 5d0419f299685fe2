//! OpenAI chat completions with streaming tool calls.
//!
//! Moonshot serves Kimi through this protocol at `https://api.moonshot.ai/v1`,
//! and so do vLLM, llama.cpp, Ollama and OpenRouter. The request goes to the
//! base URL with `/chat/completions` appended, so the base URL is whatever
//! the server documents as its OpenAI base (usually ending in `/v1`).
//!
//! The transcript stays in the Anthropic shape (see the `llm` module doc);
//! this module converts at the edge, both ways:
//!
//! | stored block          | on the wire                                   |
//! | --------------------- | --------------------------------------------- |
//! | `text`                | `content` of the message                      |
//! | `thinking`            | `reasoning_content` of the assistant message  |
//! | `tool_use`            | `tool_calls[]`, the id passed verbatim        |
//! | `tool_result`         | a `role: "tool"` message with `tool_call_id`  |
//!
//! Kimi's quirks decide the details: it wants its `reasoning_content` back
//! on assistant messages that call tools, it rejects an empty text content
//! beside tool calls, and its tool-call ids (`functions.Write:0`) must be
//! returned exactly as sent.

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{Map, Value, json};

use super::{LlmError, Message, StepReply, StepRequest, Usage, merge_roles, send_stream};
use crate::config::ApiKey;

/// Client for one OpenAI-compatible endpoint.
pub struct OpenAiClient {
    http: reqwest::Client,
    url: String,
    key: ApiKey,
}

impl OpenAiClient {
    /// Creates a client for `base_url` (`/chat/completions` is appended).
    ///
    /// # Errors
    ///
    /// When the HTTP client cannot be built (no TLS backend).
    pub fn new(base_url: &str, key: ApiKey) -> anyhow::Result<OpenAiClient> {
        Ok(OpenAiClient {
            http: super::http_client()?,
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            key,
        })
    }

    /// Sends one streaming request and assembles the reply in the Anthropic
    /// shape.
    ///
    /// # Errors
    ///
    /// [`LlmError::Transient`] for rate limits, overload, server errors and
    /// broken streams; [`LlmError::Fatal`] for everything retrying cannot fix.
    pub async fn step(&self, req: &StepRequest<'_>) -> Result<StepReply, LlmError> {
        let body = request_body(req);
        let request = self
            .http
            .post(&self.url)
            .bearer_auth(self.key.expose())
            .json(&body);
        let resp = send_stream(request, &self.url, req.model).await?;

        let mut assembler = Assembler::default();
        let mut events = resp.bytes_stream().eventsource();
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| {
                LlmError::Transient(format!("the model's stream broke off: {e}"), None)
            })?;
            if assembler.feed(&event.data)? {
                return Ok(assembler.finish());
            }
        }
        // Some servers close the stream without `[DONE]`; a reply that got
        // its finish reason is complete all the same.
        if assembler.finish_reason.is_some() {
            return Ok(assembler.finish());
        }
        Err(LlmError::Transient(
            "the model's stream ended before its finish reason".into(),
            None,
        ))
    }
}

/// The chat-completions request for one step.
fn request_body(req: &StepRequest<'_>) -> Value {
    let mut messages = vec![json!({"role": "system", "content": req.system})];
    for m in merge_roles(req.messages) {
        messages.extend(to_wire(&m));
    }
    let tools: Vec<Value> = req
        .tools
        .iter()
        .map(|t| {
            json!({
                "type": "function",
                "function": {
                    "name": t.get("name").cloned().unwrap_or(Value::Null),
                    "description": t.get("description").cloned().unwrap_or(json!("")),
                    "parameters": t.get("input_schema").cloned().unwrap_or(json!({"type": "object"})),
                },
            })
        })
        .collect();
    json!({
        "model": req.model,
        "max_tokens": req.max_tokens,
        "messages": messages,
        "tools": tools,
        "stream": true,
        // Without this most servers send no usage at all when streaming.
        "stream_options": {"include_usage": true},
    })
}

/// Converts one stored message into chat-completions messages: an assistant
/// message stays one message; a user message becomes one `tool` message per
/// tool result, then one user message with its text (if any), because the
/// tool answers must directly follow the assistant message that called.
fn to_wire(m: &Message) -> Vec<Value> {
    if m.role == "assistant" {
        let mut text = String::new();
        let mut reasoning = String::new();
        let mut calls = Vec::new();
        for b in &m.content {
            match kind(b) {
                "text" => text.push_str(str_of(b, "text")),
                "thinking" => reasoning.push_str(str_of(b, "thinking")),
                "tool_use" => calls.push(json!({
                    "id": str_of(b, "id"),
                    "type": "function",
                    "function": {
                        "name": str_of(b, "name"),
                        "arguments": b.get("input").cloned().unwrap_or(json!({})).to_string(),
                    },
                })),
                // Provider-specific blocks of another protocol mean nothing
                // here.
                _ => {}
            }
        }
        let mut msg = Map::new();
        msg.insert("role".into(), json!("assistant"));
        // Kimi refuses an empty text beside tool calls; a message without
        // calls needs a content, even an empty one.
        if !text.is_empty() || calls.is_empty() {
            msg.insert("content".into(), json!(text));
        }
        if !reasoning.is_empty() {
            msg.insert("reasoning_content".into(), json!(reasoning));
        }
        if !calls.is_empty() {
            msg.insert("tool_calls".into(), Value::Array(calls));
        }
        return vec![Value::Object(msg)];
    }

    let mut out = Vec::new();
    let mut text = Vec::new();
    for b in &m.content {
        match kind(b) {
            "tool_result" => {
                let mut content = match b.get("content") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    _ => String::new(),
                };
                // The protocol has no error flag on tool messages; say it in
                // words so the model does not read a failure as output.
                if b.get("is_error").and_then(Value::as_bool) == Some(true) {
                    content = format!("Error: {content}");
                }
                out.push(json!({
                    "role": "tool",
                    "tool_call_id": str_of(b, "tool_use_id"),
                    "content": content,
                }));
            }
            "text" => text.push(str_of(b, "text").to_string()),
            _ => {}
        }
    }
    if !text.is_empty() {
        out.push(json!({"role": "user", "content": text.join("\n\n")}));
    }
    out
}

fn kind(b: &Value) -> &str {
    b.get("type").and_then(Value::as_str).unwrap_or("")
}

fn str_of<'a>(b: &'a Value, key: &str) -> &'a str {
    b.get(key).and_then(Value::as_str).unwrap_or("")
}

/// One tool call being streamed.
#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

/// Builds a [`StepReply`] from stream chunks.
#[derive(Default)]
struct Assembler {
    text: String,
    reasoning: String,
    /// By the `index` the server gives each call.
    calls: Vec<PartialCall>,
    finish_reason: Option<String>,
    usage: Usage,
}

impl Assembler {
    /// Applies one `data:` payload; returns `true` at `[DONE]`.
    fn feed(&mut self, data: &str) -> Result<bool, LlmError> {
        let data = data.trim();
        if data == "[DONE]" {
            return Ok(true);
        }
        if data.is_empty() {
            return Ok(false);
        }
        let chunk: Value = serde_json::from_str(data).map_err(|e| {
            LlmError::Transient(format!("the model sent a malformed chunk: {e}"), None)
        })?;
        if let Some(err) = chunk.get("error") {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("no message");
            let etype = err.get("type").and_then(Value::as_str).unwrap_or("error");
            let text = format!("the model provider reported {etype}: {msg}");
            return Err(match etype {
                "invalid_request_error" | "authentication_error" | "permission_error" => {
                    LlmError::Fatal(text)
                }
                _ => LlmError::Transient(text, None),
            });
        }
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.merge_usage(u);
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return Ok(false);
        };
        // Moonshot puts the usage inside the final choice instead.
        if let Some(u) = choice.get("usage").filter(|u| u.is_object()) {
            self.merge_usage(u);
        }
        if let Some(r) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(r.to_string());
        }
        let Some(delta) = choice.get("delta") else {
            return Ok(false);
        };
        if let Some(t) = delta.get("content").and_then(Value::as_str) {
            self.text.push_str(t);
        }
        if let Some(t) = delta.get("reasoning_content").and_then(Value::as_str) {
            self.reasoning.push_str(t);
        }
        for call in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = call
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(self.calls.len().saturating_sub(1) as u64);
            // A hostile or broken stream must not make us allocate without
            // bound.
            if index > 1024 {
                return Err(LlmError::Transient(
                    format!("the model sent tool call index {index}"),
                    None,
                ));
            }
            let index = index as usize;
            while self.calls.len() <= index {
                self.calls.push(PartialCall::default());
            }
            let partial = &mut self.calls[index];
            if let Some(id) = call.get("id").and_then(Value::as_str) {
                partial.id = id.to_string();
            }
            if let Some(f) = call.get("function") {
                if let Some(n) = f.get("name").and_then(Value::as_str) {
                    partial.name.push_str(n);
                }
                if let Some(a) = f.get("arguments").and_then(Value::as_str) {
                    partial.arguments.push_str(a);
                }
            }
        }
        Ok(false)
    }

    /// `prompt_tokens` counts cached tokens too; the stored usage keeps
    /// full-rate input and cache reads apart, as the Anthropic API does.
    fn merge_usage(&mut self, u: &Value) {
        let get = |p: &str| u.pointer(p).and_then(Value::as_u64);
        let cached = get("/prompt_tokens_details/cached_tokens")
            .or_else(|| get("/cached_tokens"))
            .unwrap_or(0);
        if let Some(p) = get("/prompt_tokens") {
            self.usage.input_tokens = p.saturating_sub(cached);
            self.usage.cache_read_input_tokens = cached;
        }
        if let Some(c) = get("/completion_tokens") {
            self.usage.output_tokens = c;
        }
    }

    fn finish(self) -> StepReply {
        let mut content = Vec::new();
        let mut invalid = Vec::new();
        if !self.reasoning.is_empty() {
            // No signature: this protocol has none. The block only travels
            // back to an OpenAI-compatible server, as `reasoning_content`.
            content.push(json!({"type": "thinking", "thinking": self.reasoning, "signature": ""}));
        }
        if !self.text.is_empty() {
            content.push(json!({"type": "text", "text": self.text}));
        }
        for (i, call) in self.calls.into_iter().enumerate() {
            // Servers that omit ids still need distinct ones to pair results.
            let id = if call.id.is_empty() {
                format!("call_{i}")
            } else {
                call.id
            };
            let input = if call.arguments.trim().is_empty() {
                json!({})
            } else {
                match serde_json::from_str::<Value>(&call.arguments) {
                    Ok(v) if v.is_object() => v,
                    Ok(_) => {
                        invalid.push((id.clone(), "the input is not a JSON object".into()));
                        json!({})
                    }
                    Err(e) => {
                        invalid.push((id.clone(), e.to_string()));
                        json!({})
                    }
                }
            };
            content.push(json!({"type": "tool_use", "id": id, "name": call.name, "input": input}));
        }
        let stop_reason = self.finish_reason.map(|r| {
            match r.as_str() {
                "tool_calls" | "function_call" => "tool_use",
                "stop" => "end_turn",
                "length" => "max_tokens",
                other => other,
            }
            .to_string()
        });
        StepReply {
            content,
            stop_reason,
            usage: self.usage,
            invalid_tool_inputs: invalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: Vec<Value>) -> Message {
        Message {
            role: role.into(),
            content,
        }
    }

    #[test]
    fn assistant_tool_calls_keep_ids_and_reasoning_and_drop_empty_text() {
        let wire = to_wire(&msg(
            "assistant",
            vec![
                json!({"type":"thinking","thinking":"plan","signature":""}),
                json!({
                    "type": "tool_use",
                    "id": "functions.Write:0",
                    "name": "Write",
                    "input": {
                        "file_path": "a"
                    }
                }),
            ],
        ));
        assert_eq!(wire.len(), 1);
        let m = &wire[0];
        assert!(m.get("content").is_none(), "{m}");
        assert_eq!(m["reasoning_content"], "plan");
        assert_eq!(m["tool_calls"][0]["id"], "functions.Write:0");
        assert_eq!(
            m["tool_calls"][0]["function"]["arguments"],
            r#"{"file_path":"a"}"#
        );
    }

    #[test]
    fn tool_results_become_tool_messages_before_user_text() {
        let wire = to_wire(&msg(
            "user",
            vec![
                json!({
                    "type": "tool_result",
                    "tool_use_id": "functions.Write:0",
                    "content": [
                        {
                            "type": "text",
                            "text": "ok"
                        }
                    ]
                }),
                json!({"type":"tool_result","tool_use_id":"b","content":"boom","is_error":true}),
                json!({"type":"text","text":"next"}),
            ],
        ));
        assert_eq!(wire.len(), 3);
        assert_eq!(
            wire[0],
            json!({"role":"tool","tool_call_id":"functions.Write:0","content":"ok"})
        );
        assert_eq!(wire[1]["content"], "Error: boom");
        assert_eq!(wire[2], json!({"role":"user","content":"next"}));
    }

    #[test]
    fn assembles_streamed_tool_calls_reasoning_and_usage() {
        let mut a = Assembler::default();
        let chunks = [
            json!({
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "role": "assistant",
                            "reasoning_content": "let "
                        }
                    }
                ]
            }),
            json!({"choices":[{"index":0,"delta":{"reasoning_content":"me see"}}]}),
            json!({"choices":[{"index":0,"delta":{"content":"Writing."}}]}),
            json!({
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "tool_calls": [
                                {
                                    "index": 0,
                                    "id": "functions.Write:0",
                                    "type": "function",
                                    "function": {
                                        "name": "Write",
                                        "arguments": ""
                                    }
                                }
                            ]
                        }
                    }
                ]
            }),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"file_path\":"}}]}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"a.txt\"}"}}]}}]}),
            json!({"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"x","function":{"name":"Bash","arguments":"{\"command\": "}}]}}]}),
            json!({"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}),
            json!({
                "choices": [],
                "usage": {
                    "prompt_tokens": 140,
                    "completion_tokens": 20,
                    "prompt_tokens_details": {
                        "cached_tokens": 40
                    }
                }
            }),
        ];
        for c in chunks {
            assert!(!a.feed(&c.to_string()).unwrap());
        }
        assert!(a.feed("[DONE]").unwrap());
        let r = a.finish();
        assert_eq!(
            r.content[0],
            json!({"type":"thinking","thinking":"let me see","signature":""})
        );
        assert_eq!(r.content[1], json!({"type":"text","text":"Writing."}));
        assert_eq!(
            r.content[2],
            json!({
                "type": "tool_use",
                "id": "functions.Write:0",
                "name": "Write",
                "input": {
                    "file_path": "a.txt"
                }
            })
        );
        assert_eq!(r.content[3]["input"], json!({}));
        assert_eq!(r.invalid_tool_inputs.len(), 1);
        assert_eq!(r.invalid_tool_inputs[0].0, "x");
        assert_eq!(r.stop_reason.as_deref(), Some("tool_use"));
        assert_eq!(r.usage.input_tokens, 100);
        assert_eq!(r.usage.cache_read_input_tokens, 40);
        assert_eq!(r.usage.output_tokens, 20);
    }

    #[test]
    fn stream_errors_are_classified() {
        let mut a = Assembler::default();
        let e = a
            .feed(&json!({"error":{"type":"rate_limit_error","message":"slow down"}}).to_string())
            .unwrap_err();
        assert!(matches!(e, LlmError::Transient(..)));
        let e = a
            .feed(&json!({"error":{"type":"invalid_request_error","message":"bad"}}).to_string())
            .unwrap_err();
        assert!(matches!(e, LlmError::Fatal(..)));
    }
}
