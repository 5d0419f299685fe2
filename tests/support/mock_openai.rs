//! The mock model's OpenAI chat-completions mode.
//!
//! A call to `POST /v1/chat/completions` or `POST /chat/completions` is
//! translated here into the Anthropic shape before the script sees it, so
//! one script serves both protocols and every conversation helper
//! ([`Request::step_in_turn`], [`Request::tool_results`], ...) works
//! unchanged. The untranslated body stays in [`Request::raw_body`], where a
//! test checks what was really on the wire: ids, `reasoning_content`, the
//! `tool` messages.
//!
//! The answer is streamed the way chat-completions servers do: `data:`
//! chunks with `choices[0].delta`, tool-call arguments split into fragments
//! keyed by `index`, a last chunk with `finish_reason`, a usage chunk with
//! empty `choices`, then `data: [DONE]`.

use std::{io::Write, net::TcpStream};

use serde_json::{Value, json};

use super::{Request, split_chunks, write_head};

/// Paths of a chat-completions call.
pub const CHAT_PATHS: [&str; 2] = ["/v1/chat/completions", "/chat/completions"];

impl Request {
    /// Whether this call came in the OpenAI chat-completions form.
    pub fn is_openai(&self) -> bool {
        CHAT_PATHS.contains(&self.path.as_str())
    }

    /// The body as it was sent (for a chat-completions call, before
    /// translation), parsed.
    pub fn wire_body(&self) -> Value {
        serde_json::from_str(&self.raw_body).unwrap_or(Value::Null)
    }
}

/// Translates a chat-completions body into the Anthropic Messages shape.
pub fn to_anthropic(body: &Value) -> Value {
    let mut system = Vec::new();
    let mut messages: Vec<Value> = Vec::new();
    let empty = Vec::new();
    for m in body["messages"].as_array().unwrap_or(&empty) {
        let text = match &m["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        };
        match m["role"].as_str().unwrap_or("") {
            "system" => system.push(text),
            "assistant" => {
                let mut blocks = Vec::new();
                if let Some(r) = m["reasoning_content"].as_str() {
                    blocks.push(json!({"type": "thinking", "thinking": r, "signature": ""}));
                }
                if !text.is_empty() {
                    blocks.push(json!({"type": "text", "text": text}));
                }
                for call in m["tool_calls"].as_array().unwrap_or(&empty) {
                    let args = call["function"]["arguments"].as_str().unwrap_or("");
                    let input: Value = serde_json::from_str(args).unwrap_or(json!({}));
                    blocks.push(json!({
                        "type": "tool_use",
                        "id": call["id"],
                        "name": call["function"]["name"],
                        "input": input,
                    }));
                }
                messages.push(json!({"role": "assistant", "content": blocks}));
            }
            "tool" => {
                let block = json!({
                    "type": "tool_result",
                    "tool_use_id": m["tool_call_id"],
                    "content": text,
                });
                // Consecutive tool messages answer one assistant message:
                // one user message with several results, as Anthropic has it.
                match messages.last_mut() {
                    Some(last)
                        if last["role"] == "user"
                            && last["content"]
                                .as_array()
                                .is_some_and(|c| c.iter().all(|b| b["type"] == "tool_result")) =>
                    {
                        last["content"].as_array_mut().unwrap().push(block);
                    }
                    _ => messages.push(json!({"role": "user", "content": [block]})),
                }
            }
            _ => {
                messages.push(json!({"role": "user", "content": [{"type": "text", "text": text}]}))
            }
        }
    }
    let tools: Vec<Value> = body["tools"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|t| {
            json!({
                "name": t["function"]["name"],
                "description": t["function"]["description"],
                "input_schema": t["function"]["parameters"],
            })
        })
        .collect();
    json!({
        "model": body["model"],
        "max_tokens": body["max_tokens"],
        "stream": body["stream"],
        "system": system.join("\n"),
        "messages": messages,
        "tools": tools,
    })
}

/// The chat-completions chunks that stream an Anthropic-shaped `message`.
pub fn chunks(message: &Value) -> Vec<Value> {
    let id = message["id"].clone();
    let model = message["model"].clone();
    let chunk = |delta: Value, finish: Value| {
        json!({
            "id": id, "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        })
    };
    let mut out = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    let empty = Vec::new();
    let mut call_index = 0;
    for block in message["content"].as_array().unwrap_or(&empty) {
        match block["type"].as_str().unwrap_or("") {
            "thinking" => {
                for piece in split_chunks(block["thinking"].as_str().unwrap_or("")) {
                    out.push(chunk(json!({"reasoning_content": piece}), Value::Null));
                }
            }
            "text" => {
                for piece in split_chunks(block["text"].as_str().unwrap_or("")) {
                    out.push(chunk(json!({"content": piece}), Value::Null));
                }
            }
            "tool_use" => {
                out.push(chunk(
                    json!({"tool_calls": [{"index": call_index, "id": block["id"], "type": "function",
                        "function": {"name": block["name"], "arguments": ""}}]}),
                    Value::Null,
                ));
                for piece in split_chunks(&block["input"].to_string()) {
                    out.push(chunk(
                        json!({"tool_calls": [{"index": call_index, "function": {"arguments": piece}}]}),
                        Value::Null,
                    ));
                }
                call_index += 1;
            }
            _ => {}
        }
    }
    let finish = match message["stop_reason"].as_str().unwrap_or("end_turn") {
        "tool_use" => "tool_calls",
        "max_tokens" => "length",
        _ => "stop",
    };
    out.push(chunk(json!({}), json!(finish)));
    let usage = &message["usage"];
    let cached = usage["cache_read_input_tokens"].as_u64().unwrap_or(0);
    let input = usage["input_tokens"].as_u64().unwrap_or(0);
    out.push(json!({
        "id": id, "object": "chat.completion.chunk", "model": model, "choices": [],
        "usage": {
            "prompt_tokens": input + cached,
            "completion_tokens": usage["output_tokens"],
            "total_tokens": input + cached + usage["output_tokens"].as_u64().unwrap_or(0),
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }));
    out
}

/// Streams `message` as chat-completions chunks, one write per chunk.
pub fn write_sse(
    stream: &mut TcpStream,
    extra: &[(String, String)],
    message: &Value,
) -> std::io::Result<()> {
    write_head(stream, 200, "text/event-stream", None, extra)?;
    stream.flush()?;
    for data in chunks(message) {
        stream.write_all(format!("data: {data}\n\n").as_bytes())?;
        stream.flush()?;
    }
    stream.write_all(b"data: [DONE]\n\n")?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translation_pairs_tool_messages_with_their_calls() {
        let body = json!({
            "model": "m", "stream": true,
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "do it"},
                {"role": "assistant", "reasoning_content": "plan", "tool_calls": [
                    {"id": "functions.Write:0", "type": "function",
                     "function": {"name": "Write", "arguments": "{\"file_path\":\"a\"}"}},
                    {"id": "b", "type": "function", "function": {"name": "LS", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "functions.Write:0", "content": "ok"},
                {"role": "tool", "tool_call_id": "b", "content": "a"},
            ],
            "tools": [{"type": "function", "function": {"name": "Write", "parameters": {}}}],
        });
        let a = to_anthropic(&body);
        assert_eq!(a["system"], "sys");
        assert_eq!(a["messages"].as_array().unwrap().len(), 3);
        assert_eq!(a["messages"][1]["content"][0]["thinking"], "plan");
        assert_eq!(a["messages"][1]["content"][1]["id"], "functions.Write:0");
        assert_eq!(a["messages"][2]["content"].as_array().unwrap().len(), 2);
        assert_eq!(a["tools"][0]["name"], "Write");
    }

    #[test]
    fn chunks_end_with_finish_reason_and_usage() {
        let message = json!({
            "id": "msg_1", "model": "m", "stop_reason": "tool_use",
            "content": [{"type": "tool_use", "id": "t", "name": "Write", "input": {"x": 1}}],
            "usage": {"input_tokens": 100, "output_tokens": 20, "cache_read_input_tokens": 40},
        });
        let c = chunks(&message);
        let args: String = c
            .iter()
            .filter_map(|c| {
                c["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            })
            .collect();
        assert_eq!(args, r#"{"x":1}"#);
        assert_eq!(c[c.len() - 2]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(c[c.len() - 1]["usage"]["prompt_tokens"], 140);
    }
}
