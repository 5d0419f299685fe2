//! A scripted stand-in for the Anthropic Messages API, served on loopback.
//!
//! End-to-end tests point the server's provider base URL here, so no test
//! needs a key or the internet. Every model call is answered by a script, a
//! closure over the parsed request, which lets a test play the model step by
//! step and afterwards inspect exactly what the server sent: the
//! conversation, the tool results, the headers that carried the key.
//!
//! The HTTP side is deliberately small: std networking, one thread per
//! connection, HTTP/1.1 with `Content-Length` request bodies, and every
//! response closes its connection (`Connection: close`), so a stream's body is
//! simply everything until the socket closes. The stream imitates Anthropic's
//! SSE framing closely, including a `ping` event and an unknown event type a
//! tolerant client must skip, and it splits text and tool input into several
//! deltas so that a client which forgets to concatenate them fails here.
//!
//! Script mistakes must not pass silently: a script that panics, or a
//! sequence that runs out of replies, is recorded as a failure, and dropping
//! the mock with failures recorded fails the test.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    panic::{AssertUnwindSafe, catch_unwind},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use serde_json::{Value, json};

#[path = "mock_openai.rs"]
pub mod openai;

/// The path the server must call; the base URL the server is given has no
/// path, and the server appends this.
pub const MESSAGES_PATH: &str = "/v1/messages";

/// Largest request head the mock reads; anything larger is a client bug.
const MAX_HEAD: usize = 64 * 1024;

/// Largest request body the mock reads. Conversations with file contents
/// grow, but a test conversation beyond this means a runaway loop.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// How long a connection may stay silent before the mock gives up on it, so
/// a client that opens a socket and never writes cannot pin a thread.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// A script: decides the model's reply to one `POST /v1/messages` request.
pub type Script = dyn Fn(&Request) -> Reply + Send + Sync;

/// A running mock of the Anthropic Messages API on `127.0.0.1`.
///
/// Dropping it stops the listener. If a script failure was recorded (see
/// [`MockModel::failures`]) and the test is not already panicking, the drop
/// panics with the recorded failures, so a broken script fails its test.
pub struct MockModel {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

/// State shared by the accept loop and the connection threads.
struct Shared {
    script: Box<Script>,
    log: Mutex<Log>,
    next_tool_id: AtomicU64,
    next_message_id: AtomicU64,
    stopping: AtomicBool,
}

/// Everything the mock saw and said, in arrival order.
#[derive(Default)]
struct Log {
    requests: Vec<Request>,
    responses: Vec<Value>,
    failures: Vec<String>,
}

impl Shared {
    fn log(&self) -> MutexGuard<'_, Log> {
        // A panicking test thread must not hide the log from the others; the
        // log is append-only, so a poisoned guard still holds whole entries.
        self.log.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl MockModel {
    /// Starts a mock whose every model call is answered by `script`.
    ///
    /// The script runs on the connection's thread; concurrent model calls
    /// run it concurrently.
    pub fn start(script: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> MockModel {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the mock model on loopback");
        let addr = listener
            .local_addr()
            .expect("read the mock model's address");
        let shared = Arc::new(Shared {
            script: Box::new(script),
            log: Mutex::new(Log::default()),
            next_tool_id: AtomicU64::new(1),
            next_message_id: AtomicU64::new(1),
            stopping: AtomicBool::new(false),
        });

        let accept_shared = Arc::clone(&shared);
        let acceptor = thread::Builder::new()
            .name("mock-model-accept".into())
            .spawn(move || accept_loop(listener, accept_shared))
            .expect("spawn the mock model's accept thread");

        MockModel {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// Starts a mock that answers the Nth model call of each turn with
    /// `replies[N]`.
    ///
    /// "Nth call of the turn" is [`Request::step_in_turn`]: the number of
    /// assistant messages after the last user message that carries no tool
    /// result. Every turn therefore replays the same list from the start;
    /// use [`MockModel::turns`] when turns need different replies. A call
    /// beyond the list is answered with a short final text and recorded as a
    /// script failure.
    pub fn sequence(replies: Vec<Reply>) -> MockModel {
        MockModel::start(move |request| {
            let step = request.step_in_turn();
            match replies.get(step) {
                Some(reply) => reply.clone(),
                None => Reply::unexpected(format!(
                    "the sequence has {} replies but the model was called for step {step}",
                    replies.len()
                )),
            }
        })
    }

    /// Starts a mock that answers step S of turn T (both counted from 0)
    /// with `turns[T][S]`.
    ///
    /// The turn is [`Request::turn_index`], the step
    /// [`Request::step_in_turn`]. A call outside the lists is answered with
    /// a short final text and recorded as a script failure.
    pub fn turns(turns: Vec<Vec<Reply>>) -> MockModel {
        MockModel::start(move |request| {
            let (turn, step) = (request.turn_index(), request.step_in_turn());
            match turns.get(turn).and_then(|replies| replies.get(step)) {
                Some(reply) => reply.clone(),
                None => Reply::unexpected(format!(
                    "the script has no reply for turn {turn} step {step}"
                )),
            }
        })
    }

    /// The loopback address the mock listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give the server (`http://127.0.0.1:<port>`, no path).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every model call (`POST /v1/messages`) received so far, in arrival
    /// order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared
            .log()
            .requests
            .iter()
            .filter(|request| request.is_model_call())
            .cloned()
            .collect()
    }

    /// Every HTTP request received so far, model calls or not.
    pub fn all_requests(&self) -> Vec<Request> {
        self.shared.log().requests.clone()
    }

    /// Every model message the mock answered with, as the complete JSON
    /// message (the form a non-streaming call returns), in answer order.
    pub fn responses(&self) -> Vec<Value> {
        self.shared.log().responses.clone()
    }

    /// The values of header `name` on every model call, in arrival order;
    /// a call without the header contributes nothing.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.requests()
            .iter()
            .filter_map(|request| request.header(name).map(str::to_owned))
            .collect()
    }

    /// Script failures recorded so far: panics inside the script and calls
    /// it did not expect ([`Reply::unexpected`]).
    pub fn failures(&self) -> Vec<String> {
        self.shared.log().failures.clone()
    }

    /// Returns and forgets the recorded script failures, for tests that
    /// provoke them on purpose.
    pub fn take_failures(&self) -> Vec<String> {
        std::mem::take(&mut self.shared.log().failures)
    }
}

impl Drop for MockModel {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // The accept loop blocks in accept(); one connection wakes it so it
        // can see the flag. A failed connect means it is already gone.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }

        let failures = self.failures();
        if !failures.is_empty() && !thread::panicking() {
            panic!(
                "the mock model recorded script failures:\n  {}",
                failures.join("\n  ")
            );
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let shared = Arc::clone(&shared);
        let spawned = thread::Builder::new()
            .name("mock-model-conn".into())
            .spawn(move || serve_connection(&shared, stream));
        if let Err(error) = spawned {
            eprintln!("mock model: could not spawn a connection thread: {error}");
        }
    }
}

/// One HTTP request as the mock received it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The request method, as sent (`POST`).
    pub method: String,
    /// The request target without its query string.
    pub path: String,
    /// Headers in arrival order, names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON, or `Value::Null` when it is not JSON.
    pub body: Value,
    /// The body as text (lossy for non-UTF-8 bytes).
    pub raw_body: String,
}

/// A `tool_result` block of a user message, reduced to what tests check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolResult {
    /// The `tool_use_id` it answers.
    pub tool_use_id: String,
    /// Its content as text: the string, or the text blocks joined by
    /// newlines.
    pub content: String,
    /// Whether the block says `is_error: true`.
    pub is_error: bool,
}

/// One content block of the conversation with the role of its message.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// `user` or `assistant`.
    pub role: String,
    /// Index of the message in `messages`.
    pub message: usize,
    /// The block as sent; a message whose content is a plain string counts
    /// as one `{"type":"text","text":…}` block.
    pub block: Value,
}

impl Block {
    /// The block's `type`, or "" when it has none.
    pub fn kind(&self) -> &str {
        self.block.get("type").and_then(Value::as_str).unwrap_or("")
    }
}

impl Request {
    /// Whether this is a model call: `POST /v1/messages`.
    pub fn is_model_call(&self) -> bool {
        self.method == "POST" && (self.path == MESSAGES_PATH || self.is_openai())
    }

    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    }

    /// Whether the body asks for a stream (`"stream": true`).
    pub fn is_stream(&self) -> bool {
        self.body.get("stream").and_then(Value::as_bool) == Some(true)
    }

    /// The `model` field of the body.
    pub fn model(&self) -> Option<&str> {
        self.body.get("model").and_then(Value::as_str)
    }

    /// The `messages` array of the body (empty when absent).
    pub fn messages(&self) -> &[Value] {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The system prompt as text: the string, or the text blocks joined by
    /// newlines.
    pub fn system(&self) -> Option<String> {
        match self.body.get("system")? {
            Value::String(text) => Some(text.clone()),
            Value::Array(blocks) => Some(join_text(blocks)),
            _ => None,
        }
    }

    /// Names of the tools offered to the model.
    pub fn tool_names(&self) -> Vec<String> {
        self.body
            .get("tools")
            .and_then(Value::as_array)
            .map(|tools| {
                tools
                    .iter()
                    .filter_map(|tool| tool.get("name").and_then(Value::as_str))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every content block of the conversation, in order, with its role.
    pub fn blocks(&self) -> Vec<Block> {
        let mut blocks = Vec::new();
        for (index, message) in self.messages().iter().enumerate() {
            let role = role_of(message).to_owned();
            for block in content_blocks(message) {
                blocks.push(Block {
                    role: role.clone(),
                    message: index,
                    block,
                });
            }
        }
        blocks
    }

    /// The text of the most recent user message that has any text (tool
    /// result contents do not count): its text blocks joined by newlines.
    pub fn last_user_text(&self) -> Option<String> {
        self.messages()
            .iter()
            .rev()
            .filter(|message| role_of(message) == "user")
            .find_map(|message| {
                let texts: Vec<Value> = content_blocks(message)
                    .into_iter()
                    .filter(|block| block_kind(block) == "text")
                    .collect();
                (!texts.is_empty()).then(|| join_text(&texts))
            })
    }

    /// The `tool_result` blocks of the last message, when it is a user
    /// message; empty otherwise.
    pub fn tool_results(&self) -> Vec<ToolResult> {
        match self.messages().last() {
            Some(message) if role_of(message) == "user" => content_blocks(message)
                .iter()
                .filter_map(tool_result_of)
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Every `tool_result` block anywhere in the conversation.
    pub fn all_tool_results(&self) -> Vec<ToolResult> {
        self.blocks()
            .iter()
            .filter_map(|block| tool_result_of(&block.block))
            .collect()
    }

    /// The number of assistant messages in the conversation.
    pub fn count_assistant_turns(&self) -> usize {
        self.messages()
            .iter()
            .filter(|message| role_of(message) == "assistant")
            .count()
    }

    /// Which turn this call belongs to, from 0: the number of user messages
    /// without tool results (each starts a turn), minus one.
    pub fn turn_index(&self) -> usize {
        self.messages()
            .iter()
            .filter(|message| is_turn_start(message))
            .count()
            .saturating_sub(1)
    }

    /// Which step of its turn this call is, from 0: the number of assistant
    /// messages after the last user message without tool results.
    pub fn step_in_turn(&self) -> usize {
        let messages = self.messages();
        let start = messages
            .iter()
            .rposition(is_turn_start)
            .map_or(0, |index| index + 1);
        messages[start..]
            .iter()
            .filter(|message| role_of(message) == "assistant")
            .count()
    }
}

fn role_of(message: &Value) -> &str {
    message.get("role").and_then(Value::as_str).unwrap_or("")
}

fn block_kind(block: &Value) -> &str {
    block.get("type").and_then(Value::as_str).unwrap_or("")
}

/// A message's content as blocks; a plain string is one text block.
fn content_blocks(message: &Value) -> Vec<Value> {
    match message.get("content") {
        Some(Value::String(text)) => vec![json!({"type": "text", "text": text})],
        Some(Value::Array(blocks)) => blocks.clone(),
        _ => Vec::new(),
    }
}

/// A user message that is not a tool-result carrier starts a turn.
fn is_turn_start(message: &Value) -> bool {
    role_of(message) == "user"
        && !content_blocks(message)
            .iter()
            .any(|block| block_kind(block) == "tool_result")
}

fn join_text(blocks: &[Value]) -> String {
    blocks
        .iter()
        .filter_map(|block| block.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n")
}

fn tool_result_of(block: &Value) -> Option<ToolResult> {
    if block_kind(block) != "tool_result" {
        return None;
    }
    let content = match block.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(blocks)) => join_text(blocks),
        _ => String::new(),
    };
    Some(ToolResult {
        tool_use_id: block
            .get("tool_use_id")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        content,
        is_error: block.get("is_error").and_then(Value::as_bool) == Some(true),
    })
}

/// A tool call the mock model makes.
#[derive(Debug, Clone)]
pub struct ToolUse {
    id: Option<String>,
    name: String,
    input: Value,
}

impl ToolUse {
    /// A call of tool `name` with `input`; its id is assigned when the reply
    /// is sent (`toolu_mock_<n>`, unique within one mock).
    pub fn new(name: &str, input: Value) -> ToolUse {
        ToolUse {
            id: None,
            name: name.to_owned(),
            input,
        }
    }

    /// Uses `id` instead of an assigned one, e.g. `functions.Write:0`, the
    /// form Kimi sends; the server must pass ids back verbatim.
    pub fn with_id(mut self, id: &str) -> ToolUse {
        self.id = Some(id.to_owned());
        self
    }
}

/// Token counts the mock reports for one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// `input_tokens` in `message_start`.
    pub input_tokens: u64,
    /// `output_tokens` in `message_delta` (the final count).
    pub output_tokens: u64,
    /// `cache_read_input_tokens` in `message_start`.
    pub cache_read_input_tokens: u64,
}

impl Default for Usage {
    /// Distinct non-zero numbers, so a test can tell the fields apart when
    /// it checks the usage the server adds up.
    fn default() -> Usage {
        Usage {
            input_tokens: 100,
            output_tokens: 20,
            cache_read_input_tokens: 40,
        }
    }
}

/// The model's answer to one call: a message, or an HTTP error.
#[derive(Debug, Clone)]
pub struct Reply {
    body: ReplyBody,
    delay: Duration,
    headers: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
enum ReplyBody {
    Message {
        blocks: Vec<ReplyBlock>,
        stop_reason: Option<String>,
        usage: Usage,
    },
    Error {
        status: u16,
        body: Value,
    },
    /// Raw bytes for a `text/event-stream` body, written as given, then the
    /// connection closes: for streams cut mid-event or events no real
    /// provider would send.
    RawSse(String),
    /// The script was not written for this call: answer with a final text
    /// so the turn ends, and record the failure.
    Unexpected(String),
}

#[derive(Debug, Clone)]
enum ReplyBlock {
    Thinking { thinking: String, signature: String },
    Text(String),
    Tool(ToolUse),
}

impl Reply {
    fn message(blocks: Vec<ReplyBlock>) -> Reply {
        Reply {
            body: ReplyBody::Message {
                blocks,
                stop_reason: None,
                usage: Usage::default(),
            },
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    /// A final answer: one text block, `stop_reason: "end_turn"`.
    pub fn text(text: &str) -> Reply {
        Reply::message(vec![ReplyBlock::Text(text.to_owned())])
    }

    /// Tool calls, `stop_reason: "tool_use"`.
    pub fn tools(calls: Vec<ToolUse>) -> Reply {
        Reply::message(calls.into_iter().map(ReplyBlock::Tool).collect())
    }

    /// A 200 `text/event-stream` answer whose body is exactly `body`, after
    /// which the connection closes: a fault injector for broken streams.
    /// [`sse_text`] renders well-formed events to build on.
    pub fn raw_sse(body: impl Into<String>) -> Reply {
        Reply {
            body: ReplyBody::RawSse(body.into()),
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    /// An HTTP error with `status` and the JSON `body`, e.g. Anthropic's
    /// `{"type":"error","error":{"type":"overloaded_error","message":"…"}}`.
    pub fn error(status: u16, body: Value) -> Reply {
        Reply {
            body: ReplyBody::Error { status, body },
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    /// Marks a call the script was not written for: the mock answers with a
    /// final text quoting `why`, so the turn ends, and records a script
    /// failure that fails the test when the mock is dropped.
    pub fn unexpected(why: impl Into<String>) -> Reply {
        Reply {
            body: ReplyBody::Unexpected(why.into()),
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    /// Puts a thinking block with `signature` before the other blocks, the
    /// way extended thinking arrives.
    ///
    /// # Panics
    ///
    /// On an error reply, which has no content.
    pub fn with_thinking(mut self, thinking: &str, signature: &str) -> Reply {
        let block = ReplyBlock::Thinking {
            thinking: thinking.to_owned(),
            signature: signature.to_owned(),
        };
        let blocks = self.blocks_mut("with_thinking");
        let at = blocks
            .iter()
            .position(|block| !matches!(block, ReplyBlock::Thinking { .. }))
            .unwrap_or(blocks.len());
        blocks.insert(at, block);
        self
    }

    /// Adds a text block after any text already there and before the tool
    /// calls (models explain first, then call).
    ///
    /// # Panics
    ///
    /// On an error reply, which has no content.
    pub fn with_text(mut self, text: &str) -> Reply {
        let blocks = self.blocks_mut("with_text");
        let at = blocks
            .iter()
            .position(|block| matches!(block, ReplyBlock::Tool(_)))
            .unwrap_or(blocks.len());
        blocks.insert(at, ReplyBlock::Text(text.to_owned()));
        self
    }

    /// Overrides the stop reason (`max_tokens`, `pause_turn`, …), which is
    /// otherwise `tool_use` when the reply calls a tool and `end_turn` when
    /// it does not.
    ///
    /// # Panics
    ///
    /// On an error reply.
    pub fn with_stop_reason(mut self, reason: &str) -> Reply {
        match &mut self.body {
            ReplyBody::Message { stop_reason, .. } => *stop_reason = Some(reason.to_owned()),
            _ => panic!(
                "with_stop_reason needs a message reply, not {:?}",
                self.body
            ),
        }
        self
    }

    /// Overrides the reported token counts.
    ///
    /// # Panics
    ///
    /// On an error reply.
    pub fn with_usage(mut self, counts: Usage) -> Reply {
        match &mut self.body {
            ReplyBody::Message { usage, .. } => *usage = counts,
            _ => panic!("with_usage needs a message reply, not {:?}", self.body),
        }
        self
    }

    /// Adds a response header, e.g. `retry-after` on a 429.
    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Waits `delay` before answering (before the status line is sent).
    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    fn blocks_mut(&mut self, builder: &str) -> &mut Vec<ReplyBlock> {
        match &mut self.body {
            ReplyBody::Message { blocks, .. } => blocks,
            other => panic!("{builder} needs a message reply, not {other:?}"),
        }
    }
}

/// The complete message a reply stands for, with ids assigned.
fn render_message(
    shared: &Shared,
    model: &str,
    blocks: &[ReplyBlock],
    stop_reason: Option<&str>,
    usage: Usage,
) -> Value {
    let content: Vec<Value> = blocks
        .iter()
        .map(|block| match block {
            ReplyBlock::Thinking {
                thinking,
                signature,
            } => json!({"type": "thinking", "thinking": thinking, "signature": signature}),
            ReplyBlock::Text(text) => json!({"type": "text", "text": text}),
            ReplyBlock::Tool(call) => {
                let id = call.id.clone().unwrap_or_else(|| {
                    let n = shared.next_tool_id.fetch_add(1, Ordering::SeqCst);
                    format!("toolu_mock_{n}")
                });
                json!({"type": "tool_use", "id": id, "name": call.name, "input": call.input})
            }
        })
        .collect();
    let calls_tool = blocks
        .iter()
        .any(|block| matches!(block, ReplyBlock::Tool(_)));
    let stop_reason = stop_reason.unwrap_or(if calls_tool { "tool_use" } else { "end_turn" });
    let n = shared.next_message_id.fetch_add(1, Ordering::SeqCst);

    json!({
        "id": format!("msg_mock_{n}"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_input_tokens": usage.cache_read_input_tokens,
            "cache_creation_input_tokens": 0,
        },
    })
}

/// The SSE events that stream `message`, as (event name, data) pairs.
///
/// Follows Anthropic's order: `message_start` (empty content, one output
/// token so far), `ping`, per block `content_block_start`, deltas and
/// `content_block_stop`, then `message_delta` with the stop reason and final
/// output tokens, and `message_stop`. One `mystery_event` goes after the
/// first delta, because the API promises to add event types and clients must
/// skip the ones they do not know.
pub fn sse_events(message: &Value) -> Vec<(String, Value)> {
    let usage = &message["usage"];
    let mut start = message.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["usage"]["output_tokens"] = json!(1);

    let mut events = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": start}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    let empty = Vec::new();
    let content = message["content"].as_array().unwrap_or(&empty);
    for (index, block) in content.iter().enumerate() {
        push_block_events(&mut events, index, block);
    }
    events.push(event(
        "message_delta",
        json!({
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": null},
            "usage": {"output_tokens": usage["output_tokens"]},
        }),
    ));
    events.push(event("message_stop", json!({"type": "message_stop"})));

    let mystery_at = events
        .iter()
        .position(|(name, _)| name == "content_block_delta")
        .unwrap_or(1)
        + 1;
    events.insert(
        mystery_at,
        event(
            "mystery_event",
            json!({"type": "mystery_event", "note": "an event type this client does not know"}),
        ),
    );
    events
}

/// The SSE text of `events` (as [`sse_events`] returns them).
pub fn sse_text(events: &[(String, Value)]) -> String {
    events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect()
}

fn event(name: &str, data: Value) -> (String, Value) {
    (name.to_owned(), data)
}

fn push_block_events(events: &mut Vec<(String, Value)>, index: usize, block: &Value) {
    let delta = |delta: Value| {
        event(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
        )
    };
    let (start, deltas) = match block_kind(block) {
        "text" => {
            let text = block["text"].as_str().unwrap_or("");
            let deltas = split_chunks(text)
                .into_iter()
                .map(|chunk| delta(json!({"type": "text_delta", "text": chunk})))
                .collect::<Vec<_>>();
            (json!({"type": "text", "text": ""}), deltas)
        }
        "thinking" => {
            let thinking = block["thinking"].as_str().unwrap_or("");
            let mut deltas = split_chunks(thinking)
                .into_iter()
                .map(|chunk| delta(json!({"type": "thinking_delta", "thinking": chunk})))
                .collect::<Vec<_>>();
            deltas.push(delta(
                json!({"type": "signature_delta", "signature": block["signature"]}),
            ));
            (json!({"type": "thinking", "thinking": ""}), deltas)
        }
        "tool_use" => {
            let input = block["input"].to_string();
            let deltas = split_chunks(&input)
                .into_iter()
                .map(|chunk| delta(json!({"type": "input_json_delta", "partial_json": chunk})))
                .collect::<Vec<_>>();
            let start =
                json!({"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}});
            (start, deltas)
        }
        _ => (block.clone(), Vec::new()),
    };

    events.push(event(
        "content_block_start",
        json!({"type": "content_block_start", "index": index, "content_block": start}),
    ));
    events.extend(deltas);
    events.push(event(
        "content_block_stop",
        json!({"type": "content_block_stop", "index": index}),
    ));
}

/// Splits `text` into up to three non-empty pieces on character
/// boundaries: two or more whenever it has two or more characters, so a
/// client must concatenate deltas to get it right.
fn split_chunks(text: &str) -> Vec<&str> {
    let boundaries: Vec<usize> = text.char_indices().map(|(at, _)| at).collect();
    let pieces = boundaries.len().min(3);
    if pieces <= 1 {
        return if text.is_empty() {
            Vec::new()
        } else {
            vec![text]
        };
    }
    let mut chunks = Vec::with_capacity(pieces);
    let mut from = 0;
    for piece in 1..pieces {
        let to = boundaries[piece * boundaries.len() / pieces];
        chunks.push(&text[from..to]);
        from = to;
    }
    chunks.push(&text[from..]);
    chunks
}

/// Why a request could not be read, as the HTTP answer to give.
struct BadRequest {
    status: u16,
    message: String,
}

fn bad_request(status: u16, message: impl Into<String>) -> BadRequest {
    BadRequest {
        status,
        message: message.into(),
    }
}

fn serve_connection(shared: &Shared, mut stream: TcpStream) {
    if shared.stopping.load(Ordering::SeqCst) {
        return;
    }
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));

    let request = match read_request(&mut stream) {
        Ok(request) => request,
        Err(BadRequest { status, message }) => {
            let _ = write_json(&mut stream, status, &[], &error_body(status, &message));
            return;
        }
    };
    shared.log().requests.push(request.clone());

    let _ = answer(shared, &mut stream, &request);
    let _ = stream.flush();
    // FIN, not RST: the client reads the body until the connection ends.
    let _ = stream.shutdown(Shutdown::Write);
}

fn answer(shared: &Shared, stream: &mut TcpStream, request: &Request) -> std::io::Result<()> {
    if !request.is_model_call() {
        let message = format!(
            "the mock model serves only POST {MESSAGES_PATH} and POST /v1/chat/completions, not {} {}",
            request.method, request.path
        );
        return write_json(stream, 404, &[], &error_body(404, &message));
    }
    if !request.body.is_object() {
        let message = "the request body is not a JSON object";
        return write_json(stream, 400, &[], &error_body(400, message));
    }

    let reply = match catch_unwind(AssertUnwindSafe(|| (shared.script)(request))) {
        Ok(reply) => reply,
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            let failure = format!("the script panicked: {why}");
            shared.log().failures.push(failure.clone());
            return write_json(stream, 500, &[], &error_body(500, &failure));
        }
    };
    if !reply.delay.is_zero() {
        thread::sleep(reply.delay);
    }

    let model = request.model().unwrap_or("mock-model").to_owned();
    let message = match &reply.body {
        ReplyBody::Error { status, body } => {
            return write_json(stream, *status, &reply.headers, body);
        }
        ReplyBody::RawSse(body) => {
            write_head(stream, 200, "text/event-stream", None, &reply.headers)?;
            return stream.write_all(body.as_bytes());
        }
        ReplyBody::Unexpected(why) => {
            let failure = format!(
                "unexpected model call (turn {}, step {}): {why}",
                request.turn_index(),
                request.step_in_turn()
            );
            shared.log().failures.push(failure.clone());
            let blocks = [ReplyBlock::Text(format!("mock model: {failure}"))];
            render_message(shared, &model, &blocks, None, Usage::default())
        }
        ReplyBody::Message {
            blocks,
            stop_reason,
            usage,
        } => render_message(shared, &model, blocks, stop_reason.as_deref(), *usage),
    };
    shared.log().responses.push(message.clone());

    if request.is_openai() && request.is_stream() {
        openai::write_sse(stream, &reply.headers, &message)
    } else if request.is_stream() {
        write_sse(stream, &reply.headers, &message)
    } else {
        write_json(stream, 200, &reply.headers, &message)
    }
}

fn read_request(stream: &mut TcpStream) -> Result<Request, BadRequest> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(at) = find(&buffer, b"\r\n\r\n") {
            break at;
        }
        if buffer.len() > MAX_HEAD {
            return Err(bad_request(431, "the request head is larger than 64 KiB"));
        }
        let read = stream
            .read(&mut chunk)
            .map_err(|error| bad_request(400, format!("reading the request failed: {error}")))?;
        if read == 0 {
            return Err(bad_request(
                400,
                "the connection closed inside the request head",
            ));
        }
        buffer.extend_from_slice(&chunk[..read]);
    };

    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(bad_request(
            400,
            format!("malformed request line {request_line:?}"),
        ));
    };
    let path = target.split('?').next().unwrap_or(target).to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let header = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };

    if header("transfer-encoding").is_some() {
        return Err(bad_request(
            411,
            "the mock model reads only Content-Length bodies, not Transfer-Encoding",
        ));
    }
    let length = match header("content-length") {
        None => 0,
        Some(value) => value
            .parse::<usize>()
            .map_err(|_| bad_request(400, format!("bad Content-Length {value:?}")))?,
    };
    if length > MAX_BODY {
        return Err(bad_request(
            413,
            format!("a {length}-byte body is too large"),
        ));
    }

    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let read = stream
            .read(&mut chunk)
            .map_err(|error| bad_request(400, format!("reading the body failed: {error}")))?;
        if read == 0 {
            return Err(bad_request(400, "the connection closed inside the body"));
        }
        body.extend_from_slice(&chunk[..read]);
    }
    body.truncate(length);

    let raw_body = String::from_utf8_lossy(&body).into_owned();
    let mut parsed = serde_json::from_slice(&body).unwrap_or(Value::Null);
    // Scripts read one shape; see the `openai` module.
    if openai::CHAT_PATHS.contains(&path.as_str()) && parsed.is_object() {
        parsed = openai::to_anthropic(&parsed);
    }
    Ok(Request {
        method: method.to_owned(),
        path,
        body: parsed,
        raw_body,
        headers,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Anthropic's error body shape, with the error type its status implies.
pub fn error_body(status: u16, message: &str) -> Value {
    let kind = match status {
        400 | 411 | 413 | 431 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    };
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        529 => "Overloaded",
        _ => "Status",
    }
}

fn write_head(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    content_length: Option<usize>,
    extra: &[(String, String)],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nConnection: close\r\n",
        reason_phrase(status)
    );
    if let Some(length) = content_length {
        head.push_str(&format!("Content-Length: {length}\r\n"));
    } else {
        head.push_str("Cache-Control: no-cache\r\n");
    }
    head.push_str("request-id: req_mock\r\n");
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())
}

fn write_json(
    stream: &mut TcpStream,
    status: u16,
    extra: &[(String, String)],
    body: &Value,
) -> std::io::Result<()> {
    let body = body.to_string();
    write_head(stream, status, "application/json", Some(body.len()), extra)?;
    stream.write_all(body.as_bytes())
}

fn write_sse(
    stream: &mut TcpStream,
    extra: &[(String, String)],
    message: &Value,
) -> std::io::Result<()> {
    write_head(stream, 200, "text/event-stream", None, extra)?;
    stream.flush()?;
    // One write per event, so the client meets event boundaries that do not
    // line up with its reads at least some of the time.
    for (name, data) in sse_events(message) {
        stream.write_all(format!("event: {name}\ndata: {data}\n\n").as_bytes())?;
        stream.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Self-tests of the mock: raw HTTP over a `TcpStream`, so they check
    //! the wire format itself rather than any client's reading of it.

    use std::time::Instant;

    use super::*;

    /// A raw HTTP response.
    struct Raw {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Raw {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str())
        }
    }

    fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &str) -> Raw {
        let mut stream = TcpStream::connect(addr).unwrap();
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body.as_bytes()).unwrap();
        read_response(stream)
    }

    fn get(addr: SocketAddr, path: &str) -> Raw {
        let mut stream = TcpStream::connect(addr).unwrap();
        let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        read_response(stream)
    }

    fn read_response(mut stream: TcpStream) -> Raw {
        // Connection: close means the body ends where the stream ends.
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).unwrap();
        let text = String::from_utf8(bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap();
        Raw {
            status: status.parse().unwrap(),
            headers: lines
                .map(|line| {
                    let (name, value) = line.split_once(':').unwrap();
                    (name.trim().to_owned(), value.trim().to_owned())
                })
                .collect(),
            body: body.to_owned(),
        }
    }

    /// Parses an SSE body into (event, data) pairs, checking the framing:
    /// every frame is `event:` then `data:` and ends with a blank line, and
    /// every data line is JSON.
    fn parse_sse(body: &str) -> Vec<(String, Value)> {
        assert!(
            body.ends_with("\n\n"),
            "the stream must end with a blank line"
        );
        body.trim_end_matches('\n')
            .split("\n\n")
            .map(|frame| {
                let mut lines = frame.lines();
                let name = lines.next().unwrap().strip_prefix("event: ").unwrap();
                let data = lines.next().unwrap().strip_prefix("data: ").unwrap();
                assert!(lines.next().is_none(), "one data line per frame: {frame}");
                let data: Value = serde_json::from_str(data).unwrap();
                assert_eq!(data["type"], name, "data type matches event name");
                (name.to_owned(), data)
            })
            .collect()
    }

    /// Rebuilds the message from its events the way a client must: start
    /// from `message_start`, open blocks, concatenate deltas, parse the tool
    /// input at block stop, take the stop reason and final usage from
    /// `message_delta`.
    fn assemble(events: &[(String, Value)]) -> Value {
        let mut message = Value::Null;
        let mut partial_json = String::new();
        for (name, data) in events {
            match name.as_str() {
                "message_start" => message = data["message"].clone(),
                "content_block_start" => {
                    let block = data["content_block"].clone();
                    message["content"].as_array_mut().unwrap().push(block);
                    partial_json.clear();
                }
                "content_block_delta" => {
                    let index = data["index"].as_u64().unwrap() as usize;
                    let block = &mut message["content"][index];
                    let delta = &data["delta"];
                    let append = |block: &mut Value, field: &str, piece: &Value| {
                        let joined = format!(
                            "{}{}",
                            block[field].as_str().unwrap_or(""),
                            piece.as_str().unwrap()
                        );
                        block[field] = json!(joined);
                    };
                    match delta["type"].as_str().unwrap() {
                        "text_delta" => append(block, "text", &delta["text"]),
                        "thinking_delta" => append(block, "thinking", &delta["thinking"]),
                        "signature_delta" => append(block, "signature", &delta["signature"]),
                        "input_json_delta" => {
                            partial_json.push_str(delta["partial_json"].as_str().unwrap())
                        }
                        other => panic!("unknown delta {other}"),
                    }
                }
                "content_block_stop" => {
                    let index = data["index"].as_u64().unwrap() as usize;
                    let block = &mut message["content"][index];
                    if block["type"] == "tool_use" {
                        block["input"] = serde_json::from_str(&partial_json).unwrap();
                    }
                }
                "message_delta" => {
                    message["stop_reason"] = data["delta"]["stop_reason"].clone();
                    message["usage"]["output_tokens"] = data["usage"]["output_tokens"].clone();
                }
                _ => {}
            }
        }
        message
    }

    fn body(stream: bool, messages: Value) -> String {
        json!({
            "model": "kimi-test",
            "max_tokens": 1024,
            "stream": stream,
            "system": [{"type": "text", "text": "You are a test."}],
            "messages": messages,
        })
        .to_string()
    }

    fn first_call() -> Value {
        json!([{"role": "user", "content": "make hello.txt"}])
    }

    fn scripted_tools_reply() -> Reply {
        Reply::tools(vec![
            ToolUse::new(
                "Write",
                json!({"file_path": "hello.txt", "content": "hello\n"}),
            ),
            ToolUse::new("Bash", json!({"command": "cat hello.txt"})).with_id("functions.Bash:1"),
        ])
        .with_text("Writing the file.")
        .with_thinking("The user wants a file, é ü.", "sig-123")
    }

    #[test]
    fn stream_has_anthropic_framing_and_reassembles_to_the_message() {
        let mock = MockModel::sequence(vec![scripted_tools_reply()]);

        let raw = post(
            mock.addr(),
            MESSAGES_PATH,
            &[("x-api-key", "k")],
            &body(true, first_call()),
        );

        assert_eq!(raw.status, 200);
        assert_eq!(raw.header("content-type"), Some("text/event-stream"));
        assert_eq!(raw.header("connection"), Some("close"));
        let events = parse_sse(&raw.body);
        let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names[..2], ["message_start", "ping"]);
        assert_eq!(names[names.len() - 2..], ["message_delta", "message_stop"]);
        assert_eq!(
            names
                .iter()
                .filter(|name| **name == "mystery_event")
                .count(),
            1
        );
        let mystery = names
            .iter()
            .position(|name| *name == "mystery_event")
            .unwrap();
        assert!(
            mystery > 2 && mystery < names.len() - 2,
            "mid-stream: {names:?}"
        );
        assert_eq!(
            names
                .iter()
                .filter(|name| **name == "content_block_start")
                .count(),
            4
        );
        assert_eq!(
            names
                .iter()
                .filter(|name| **name == "content_block_stop")
                .count(),
            4
        );

        let start = &events[0].1["message"];
        assert_eq!(start["usage"]["output_tokens"], 1);
        assert_eq!(start["usage"]["input_tokens"], 100);
        assert_eq!(start["usage"]["cache_read_input_tokens"], 40);
        assert_eq!(start["content"], json!([]));

        let tool_deltas = |index: usize| {
            events
                .iter()
                .filter(|(name, data)| name == "content_block_delta" && data["index"] == index)
                .count()
        };
        assert!(tool_deltas(2) >= 2, "tool input is split into 2+ chunks");
        assert!(tool_deltas(3) >= 2, "tool input is split into 2+ chunks");
        assert!(tool_deltas(1) >= 2, "text is split into 2+ chunks");

        let assembled = assemble(&events);
        let responses = mock.responses();
        assert_eq!(responses.len(), 1);
        assert_eq!(assembled, responses[0]);
        assert_eq!(assembled["stop_reason"], "tool_use");
        assert_eq!(assembled["usage"]["output_tokens"], 20);
        assert_eq!(assembled["model"], "kimi-test");
        let content = assembled["content"].as_array().unwrap();
        assert_eq!(
            content[0],
            json!({
                "type": "thinking",
                "thinking": "The user wants a file, é ü.",
                "signature": "sig-123"
            })
        );
        assert_eq!(
            content[1],
            json!({"type": "text", "text": "Writing the file."})
        );
        assert_eq!(content[2]["id"], "toolu_mock_1");
        assert_eq!(content[2]["name"], "Write");
        assert_eq!(
            content[2]["input"],
            json!({"file_path": "hello.txt", "content": "hello\n"})
        );
        assert_eq!(content[3]["id"], "functions.Bash:1");
    }

    /// The server reads streams with reqwest and eventsource-stream; this
    /// proves that stack accepts the mock's framing (no Content-Length, the
    /// body ending at connection close) and sees every event.
    #[tokio::test]
    async fn the_servers_http_stack_reads_the_stream() {
        use eventsource_stream::Eventsource;
        use futures::StreamExt;

        let mock = MockModel::sequence(vec![scripted_tools_reply()]);
        let url = format!("{}{MESSAGES_PATH}", mock.base_url());

        let response = reqwest::Client::new()
            .post(&url)
            .header("x-api-key", "k")
            .header("content-type", "application/json")
            .body(body(true, first_call()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let mut stream = response.bytes_stream().eventsource();
        let mut events = Vec::new();
        while let Some(event) = stream.next().await {
            let event = event.unwrap();
            events.push((
                event.event,
                serde_json::from_str::<Value>(&event.data).unwrap(),
            ));
        }

        assert_eq!(events, sse_events(&mock.responses()[0]));
        assert_eq!(assemble(&events), mock.responses()[0]);
    }

    #[test]
    fn without_stream_the_reply_is_one_json_message() {
        let mock = MockModel::sequence(vec![Reply::text("All done.")]);

        let raw = post(mock.addr(), MESSAGES_PATH, &[], &body(false, first_call()));

        assert_eq!(raw.status, 200);
        assert_eq!(raw.header("content-type"), Some("application/json"));
        assert_eq!(
            raw.header("content-length"),
            Some(raw.body.len().to_string().as_str())
        );
        let message: Value = serde_json::from_str(&raw.body).unwrap();
        assert_eq!(message["type"], "message");
        assert_eq!(message["role"], "assistant");
        assert_eq!(message["stop_reason"], "end_turn");
        assert_eq!(
            message["content"],
            json!([{"type": "text", "text": "All done."}])
        );
        assert_eq!(message["id"], "msg_mock_1");
    }

    #[test]
    fn tool_ids_count_up_across_calls() {
        let mock = MockModel::start(|_| {
            Reply::tools(vec![ToolUse::new("Read", json!({"file_path": "a"}))])
        });

        for _ in 0..2 {
            post(mock.addr(), MESSAGES_PATH, &[], &body(false, first_call()));
        }

        let ids: Vec<Value> = mock
            .responses()
            .iter()
            .map(|m| m["content"][0]["id"].clone())
            .collect();
        assert_eq!(ids, [json!("toolu_mock_1"), json!("toolu_mock_2")]);
    }

    #[test]
    fn other_paths_and_methods_get_a_json_404() {
        let mock = MockModel::start(|_| Reply::text("never"));

        let wrong_path = post(mock.addr(), "/v1/complete", &[], "{}");
        let wrong_method = get(mock.addr(), MESSAGES_PATH);

        for raw in [wrong_path, wrong_method] {
            assert_eq!(raw.status, 404);
            let body: Value = serde_json::from_str(&raw.body).unwrap();
            assert_eq!(body["type"], "error");
            assert_eq!(body["error"]["type"], "not_found_error");
        }
        assert!(mock.requests().is_empty(), "404s are not model calls");
        assert_eq!(mock.all_requests().len(), 2);
        assert!(mock.responses().is_empty());
    }

    #[test]
    fn a_query_string_does_not_change_the_path() {
        let mock = MockModel::sequence(vec![Reply::text("ok")]);

        let raw = post(
            mock.addr(),
            "/v1/messages?beta=true",
            &[],
            &body(false, first_call()),
        );

        assert_eq!(raw.status, 200);
        assert_eq!(mock.requests()[0].path, MESSAGES_PATH);
    }

    #[test]
    fn a_body_that_is_not_json_gets_a_400() {
        let mock = MockModel::start(|_| Reply::text("never"));

        let raw = post(mock.addr(), MESSAGES_PATH, &[], "not json");

        assert_eq!(raw.status, 400);
        let body: Value = serde_json::from_str(&raw.body).unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }

    #[test]
    fn error_replies_send_status_body_and_headers() {
        let overloaded =
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}});
        let mock = MockModel::sequence(vec![
            Reply::error(529, overloaded.clone()).with_header("retry-after", "0"),
        ]);

        let raw = post(mock.addr(), MESSAGES_PATH, &[], &body(true, first_call()));

        assert_eq!(raw.status, 529);
        assert_eq!(raw.header("retry-after"), Some("0"));
        assert_eq!(
            serde_json::from_str::<Value>(&raw.body).unwrap(),
            overloaded
        );
    }

    #[test]
    fn delay_holds_the_answer_and_connections_are_served_concurrently() {
        let mock = MockModel::start(|request| {
            if request.last_user_text().as_deref() == Some("slow") {
                Reply::text("slow answer").delay(Duration::from_millis(800))
            } else {
                Reply::text("fast answer")
            }
        });
        let addr = mock.addr();
        let slow_body = body(false, json!([{"role": "user", "content": "slow"}]));

        let started = Instant::now();
        let slow = thread::spawn(move || {
            let raw = post(addr, MESSAGES_PATH, &[], &slow_body);
            (raw, started.elapsed())
        });
        thread::sleep(Duration::from_millis(100));
        let fast = post(addr, MESSAGES_PATH, &[], &body(false, first_call()));
        let fast_elapsed = started.elapsed();
        let (slow, slow_elapsed) = slow.join().unwrap();

        assert!(fast.body.contains("fast answer"));
        assert!(slow.body.contains("slow answer"));
        assert!(
            slow_elapsed >= Duration::from_millis(800),
            "{slow_elapsed:?}"
        );
        assert!(
            fast_elapsed < Duration::from_millis(700),
            "not queued behind: {fast_elapsed:?}"
        );
    }

    #[test]
    fn requests_and_credential_headers_are_recorded() {
        let mock = MockModel::sequence(vec![Reply::text("hi")]);

        post(
            mock.addr(),
            MESSAGES_PATH,
            &[
                ("X-Api-Key", "secret-1"),
                ("Authorization", "Bearer secret-2"),
            ],
            &body(true, first_call()),
        );

        let requests = mock.requests();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].header("x-api-key"), Some("secret-1"));
        assert_eq!(requests[0].header("AUTHORIZATION"), Some("Bearer secret-2"));
        assert_eq!(mock.header_values("x-api-key"), ["secret-1"]);
        assert_eq!(mock.header_values("authorization"), ["Bearer secret-2"]);
        assert!(requests[0].is_stream());
        assert_eq!(requests[0].model(), Some("kimi-test"));
        assert_eq!(requests[0].system().as_deref(), Some("You are a test."));
    }

    /// A conversation in its second turn, after one tool round in the first
    /// and one in the second.
    fn second_turn_conversation() -> Request {
        let body = json!({
            "model": "m",
            "system": "plain system",
            "tools": [{"name": "Write", "input_schema": {}}, {"name": "Bash", "input_schema": {}}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "first prompt"}]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "t1", "name": "Write", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "wrote it"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "first summary"}]},
                {"role": "user", "content": "second message"},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "t2", "name": "Bash", "input": {}},
                    {"type": "tool_use", "id": "t3", "name": "Bash", "input": {}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t2", "is_error": true,
                     "content": [{"type": "text", "text": "line 1"}, {"type": "text", "text": "line 2"}]},
                    {"type": "tool_result", "tool_use_id": "t3", "content": "ok"}]},
            ],
        });
        Request {
            method: "POST".into(),
            path: MESSAGES_PATH.into(),
            headers: Vec::new(),
            raw_body: body.to_string(),
            body,
        }
    }

    #[test]
    fn conversation_helpers_read_the_turn_structure() {
        let request = second_turn_conversation();

        assert_eq!(request.count_assistant_turns(), 3);
        assert_eq!(request.turn_index(), 1);
        assert_eq!(request.step_in_turn(), 1);
        assert_eq!(request.last_user_text().as_deref(), Some("second message"));
        assert_eq!(request.system().as_deref(), Some("plain system"));
        assert_eq!(request.tool_names(), ["Write", "Bash"]);
        assert_eq!(
            request.tool_results(),
            [
                ToolResult {
                    tool_use_id: "t2".into(),
                    content: "line 1\nline 2".into(),
                    is_error: true
                },
                ToolResult {
                    tool_use_id: "t3".into(),
                    content: "ok".into(),
                    is_error: false
                },
            ]
        );
        assert_eq!(request.all_tool_results().len(), 3);
        let blocks = request.blocks();
        assert_eq!(blocks.len(), 9);
        assert_eq!(blocks[4].kind(), "text");
        assert_eq!(blocks[4].role, "user");
        assert_eq!(blocks[4].message, 4);
    }

    #[test]
    fn a_fresh_conversation_is_turn_zero_step_zero() {
        let mut request = second_turn_conversation();
        request.body["messages"] = first_call();

        assert_eq!((request.turn_index(), request.step_in_turn()), (0, 0));
        assert!(request.tool_results().is_empty());
    }

    #[test]
    fn turns_pick_replies_by_turn_and_step() {
        let mock = MockModel::turns(vec![
            vec![Reply::text("turn 0 step 0")],
            vec![Reply::text("turn 1 step 0"), Reply::text("turn 1 step 1")],
        ]);
        let request = second_turn_conversation();

        let raw = post(mock.addr(), MESSAGES_PATH, &[], &request.raw_body);

        assert!(raw.body.contains("turn 1 step 1"), "{}", raw.body);
    }

    #[test]
    fn running_out_of_script_is_answered_and_recorded() {
        let mock = MockModel::sequence(vec![]);

        let raw = post(mock.addr(), MESSAGES_PATH, &[], &body(false, first_call()));

        assert_eq!(raw.status, 200);
        assert!(raw.body.contains("end_turn"));
        let failures = mock.take_failures();
        assert_eq!(failures.len(), 1);
        assert!(failures[0].contains("step 0"), "{failures:?}");
    }

    #[test]
    fn a_panicking_script_is_a_500_and_a_recorded_failure() {
        let mock = MockModel::start(|_| panic!("script bug"));

        let raw = post(mock.addr(), MESSAGES_PATH, &[], &body(true, first_call()));

        assert_eq!(raw.status, 500);
        assert!(raw.body.contains("script bug"));
        let failures = mock.take_failures();
        assert!(failures[0].contains("script bug"), "{failures:?}");
    }

    #[test]
    #[should_panic(expected = "recorded script failures")]
    fn dropping_a_mock_with_failures_fails_the_test() {
        let mock = MockModel::sequence(vec![]);
        post(mock.addr(), MESSAGES_PATH, &[], &body(false, first_call()));
    }

    #[test]
    fn stop_reason_and_usage_can_be_overridden() {
        let usage = Usage {
            input_tokens: 7,
            output_tokens: 8,
            cache_read_input_tokens: 9,
        };
        let mock = MockModel::sequence(vec![
            Reply::text("cut")
                .with_stop_reason("max_tokens")
                .with_usage(usage),
        ]);

        let raw = post(mock.addr(), MESSAGES_PATH, &[], &body(true, first_call()));

        let message = assemble(&parse_sse(&raw.body));
        assert_eq!(message["stop_reason"], "max_tokens");
        assert_eq!(message["usage"]["input_tokens"], 7);
        assert_eq!(message["usage"]["output_tokens"], 8);
        assert_eq!(message["usage"]["cache_read_input_tokens"], 9);
    }

    #[test]
    fn split_chunks_keeps_characters_whole() {
        assert_eq!(split_chunks(""), Vec::<&str>::new());
        assert_eq!(split_chunks("a"), ["a"]);
        assert_eq!(split_chunks("{}"), ["{", "}"]);
        assert_eq!(split_chunks("éüö").concat(), "éüö");
        assert_eq!(split_chunks("éüö").len(), 3);
        let long = "a long piece of text";
        assert_eq!(split_chunks(long).concat(), long);
        assert_eq!(split_chunks(long).len(), 3);
    }
}
