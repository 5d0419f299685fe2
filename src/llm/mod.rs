//! Model providers: one request per step, streamed, retried on transient
//! faults.
//!
//! The transcript is kept in the Anthropic Messages shape (content blocks as
//! raw JSON), because that is what the default provider speaks and because
//! raw JSON keeps what we do not model — `thinking` blocks with their
//! signatures, provider-specific block types — byte for byte, as the
//! provider requires them back. The OpenAI-compatible provider converts
//! to and from this shape at its edge, so the rest of the host sees one
//! transcript whatever the wire protocol.

pub mod anthropic;
pub mod openai;

use std::{sync::OnceLock, time::Duration};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Protocol};

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// `user` or `assistant`.
    pub role: String,
    /// Content blocks, verbatim.
    pub content: Vec<Value>,
}

/// Everything a provider needs for one step.
#[derive(Debug, Clone)]
pub struct StepRequest<'a> {
    /// Model name.
    pub model: &'a str,
    /// System prompt.
    pub system: &'a str,
    /// Conversation so far; consecutive messages of one role are merged by
    /// the provider before sending.
    pub messages: &'a [Message],
    /// Tool definitions (`name`, `description`, `input_schema`).
    pub tools: &'a [Value],
    /// Output token limit.
    pub max_tokens: u32,
}

/// Token counts of one step or a sum of steps.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct Usage {
    /// Input tokens billed at the full rate.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Input tokens served from the provider's prompt cache.
    pub cache_read_input_tokens: u64,
    /// Input tokens written to the provider's prompt cache.
    pub cache_creation_input_tokens: u64,
}

impl Usage {
    /// Adds another step's usage to this one.
    pub fn add(&mut self, other: &Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cache_read_input_tokens += other.cache_read_input_tokens;
        self.cache_creation_input_tokens += other.cache_creation_input_tokens;
    }
}

/// The model's answer to one step.
#[derive(Debug, Clone, Default)]
pub struct StepReply {
    /// Assistant content blocks, verbatim except that each `tool_use` input
    /// is the parsed object (or `{}` when the model sent broken JSON; see
    /// `invalid_tool_inputs`).
    pub content: Vec<Value>,
    /// Why the model stopped (`end_turn`, `tool_use`, `max_tokens`, ...).
    pub stop_reason: Option<String>,
    /// Tokens used by this step.
    pub usage: Usage,
    /// Tool-call ids whose input was not valid JSON, with the parse error.
    /// The agent answers those calls with an error result instead of running
    /// them.
    pub invalid_tool_inputs: Vec<(String, String)>,
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The request was cancelled by the caller.
    #[error("the model request was cancelled")]
    Cancelled,
    /// A fault that a later attempt may not hit (rate limit, overload,
    /// dropped connection).
    #[error("{0}")]
    Transient(String, Option<Duration>),
    /// A fault that retrying will not fix (bad key, bad request).
    #[error("{0}")]
    Fatal(String),
}

/// A model provider.
pub enum Provider {
    /// Anthropic Messages API.
    Anthropic(anthropic::AnthropicClient),
    /// OpenAI chat completions (Moonshot's `/v1`, vLLM, llama.cpp, Ollama,
    /// OpenRouter).
    OpenAi(openai::OpenAiClient),
}

/// Attempts per step, the first included, before a transient fault fails the
/// step.
const MAX_ATTEMPTS: u32 = 5;

impl Provider {
    /// Builds the provider the configuration names.
    ///
    /// # Errors
    ///
    /// No API key, or a protocol this build does not speak.
    pub fn from_config(config: &Config) -> anyhow::Result<Provider> {
        // One process serves one configuration; the first one sets the pace.
        let _ = RETRY_BASE.set(config.retry_base);
        let Some(key) = config.api_key.clone() else {
            anyhow::bail!(
                "no API key: set KIMI_API_KEY (or MOONSHOT_API_KEY) in the server's environment, \
                 or point AGENTKIMI_ENV_FILE at a file containing KIMI_API_KEY=<key>"
            );
        };
        match config.protocol {
            Protocol::Anthropic => Ok(Provider::Anthropic(anthropic::AnthropicClient::new(
                &config.base_url,
                key,
            )?)),
            Protocol::OpenAi => Ok(Provider::OpenAi(openai::OpenAiClient::new(
                &config.base_url,
                key,
            )?)),
        }
    }

    /// Runs one step, retrying transient faults with exponential backoff and
    /// jitter (honouring `retry-after`). `on_retry` is told of each retry so
    /// the caller can show it.
    ///
    /// # Errors
    ///
    /// [`LlmError::Cancelled`] when `cancel` fires; the last error when every
    /// attempt failed or the fault is not transient.
    pub async fn step(
        &self,
        req: &StepRequest<'_>,
        cancel: &CancellationToken,
        mut on_retry: impl FnMut(u32, &str),
    ) -> Result<StepReply, LlmError> {
        let mut attempt = 1;
        loop {
            let result = tokio::select! {
                _ = cancel.cancelled() => return Err(LlmError::Cancelled),
                r = self.attempt(req) => r,
            };
            match result {
                Err(LlmError::Transient(msg, retry_after)) if attempt < MAX_ATTEMPTS => {
                    let wait = retry_after.unwrap_or_else(|| backoff(attempt));
                    tracing::warn!(
                        attempt,
                        wait_ms = wait.as_millis() as u64,
                        "model request failed, retrying: {msg}"
                    );
                    on_retry(attempt, &msg);
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(LlmError::Cancelled),
                        _ = tokio::time::sleep(wait) => {}
                    }
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn attempt(&self, req: &StepRequest<'_>) -> Result<StepReply, LlmError> {
        match self {
            Provider::Anthropic(c) => c.step(req).await,
            Provider::OpenAi(c) => c.step(req).await,
        }
    }
}

/// The HTTP client both providers use.
fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(20))
        // A stream that stays silent this long is dead; the step is
        // retried rather than waiting out the whole turn.
        .read_timeout(Duration::from_secs(300))
        .user_agent(concat!("agentkimi/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Sends a streaming request. A connection failure is transient; a
/// non-success answer becomes [`http_error`]'s verdict.
async fn send_stream(
    request: reqwest::RequestBuilder,
    url: &str,
    model: &str,
) -> Result<reqwest::Response, LlmError> {
    let resp = request
        .header("accept", "text/event-stream")
        .send()
        .await
        .map_err(|e| {
            LlmError::Transient(
                format!("cannot reach the model at {url}: {}", error_chain(&e)),
                None,
            )
        })?;
    if !resp.status().is_success() {
        return Err(http_error(resp, url, model).await);
    }
    Ok(resp)
}

/// Turns a non-success HTTP answer into an error the retry loop can act on
/// and a person can fix: rate limits and server faults are transient, a
/// refused key or a wrong URL says which setting to check.
async fn http_error(resp: reqwest::Response, url: &str, model: &str) -> LlmError {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|s| Duration::from_secs_f64(s.clamp(0.0, 120.0)));
    let text = resp.text().await.unwrap_or_default();
    let detail = provider_message(&text);
    let msg = format!(
        "the model provider answered HTTP {}: {detail}",
        status.as_u16()
    );
    match status.as_u16() {
        408 | 409 | 429 | 500 | 502 | 503 | 504 | 529 => LlmError::Transient(msg, retry_after),
        401 | 403 => LlmError::Fatal(format!(
            "{msg}. The API key was refused: check KIMI_API_KEY / MOONSHOT_API_KEY \
             (or AGENTKIMI_ENV_FILE) and AGENTKIMI_BASE_URL"
        )),
        404 => LlmError::Fatal(format!(
            "{msg}. Check AGENTKIMI_BASE_URL and AGENTKIMI_PROTOCOL (the request went to {url}) \
             and AGENTKIMI_MODEL ({model})"
        )),
        _ => LlmError::Fatal(msg),
    }
}

/// An error with its causes, `outer: inner: innermost`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// Pulls the human-readable message out of a provider error body, which is
/// usually `{"error": {"message": ...}}` but may be anything.
fn provider_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let msg = parsed
        .as_ref()
        .and_then(|v| v.pointer("/error/message").or_else(|| v.get("message")))
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| body.chars().take(500).collect());
    if msg.is_empty() {
        "(empty body)".into()
    } else {
        msg
    }
}

/// First retry delay, from the configuration.
static RETRY_BASE: OnceLock<Duration> = OnceLock::new();

/// Exponential backoff with jitter: a random wait between half and all of
/// 1 s, 2 s, 4 s, ... (from the configured base) capped at 30 s. Jitter keeps
/// many sessions that failed together from retrying together.
fn backoff(attempt: u32) -> Duration {
    let base = RETRY_BASE.get().copied().unwrap_or(Duration::from_secs(1));
    let base_ms = u64::try_from(base.as_millis()).unwrap_or(1000).max(1);
    let cap_ms = (base_ms << attempt.saturating_sub(1).min(5)).min(30_000);
    let ms = rand::random_range(cap_ms / 2..=cap_ms);
    Duration::from_millis(ms)
}

/// Merges consecutive messages of the same role. The store keeps each
/// message as it happened (a tool-result message followed by a new user
/// message after an interrupted turn, say); providers want strictly
/// alternating roles.
pub fn merge_roles(messages: &[Message]) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::with_capacity(messages.len());
    for m in messages {
        match out.last_mut() {
            Some(last) if last.role == m.role => last.content.extend(m.content.iter().cloned()),
            _ => out.push(m.clone()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn backoff_grows_and_is_capped() {
        for attempt in 1..10 {
            let d = backoff(attempt);
            assert!(d <= Duration::from_secs(30));
            assert!(d >= Duration::from_millis(500));
        }
        assert!(backoff(4) >= Duration::from_secs(4));
    }

    #[test]
    fn merge_keeps_blocks_in_order() {
        let m = |role: &str, t: &str| Message {
            role: role.into(),
            content: vec![json!({"type":"text","text":t})],
        };
        let merged = merge_roles(&[
            m("user", "a"),
            m("assistant", "b"),
            m("user", "c"),
            m("user", "d"),
        ]);
        assert_eq!(merged.len(), 3);
        assert_eq!(merged[2].content.len(), 2);
        assert_eq!(merged[2].content[1]["text"], "d");
    }
}
