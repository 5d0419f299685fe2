//! The OpenAI-compatible provider end to end: the real `agentkimi serve`
//! with `AGENTKIMI_PROTOCOL=openai`, driven over MCP, against the mock
//! model's chat-completions mode.
//!
//! What matters is what crosses the wire: Kimi's tool-call ids come back
//! verbatim, its `reasoning_content` is sent back on the assistant message
//! that called the tool, tool results travel as `role: "tool"` messages,
//! and no empty text sits beside tool calls.

mod support;

use std::fs;

use serde_json::{Value, json};
use support::{
    mcp::McpClient,
    mock_model::{MockModel, Reply, ToolUse},
};

/// The assistant messages of a chat-completions body, as sent.
fn assistant_messages(body: &Value) -> Vec<Value> {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "assistant")
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_session_with_a_tool_call_and_a_follow_up_round_trips_ids_and_reasoning() {
    let write_id = "functions.Write:0";
    let mock = MockModel::turns(vec![
        vec![
            Reply::tools(vec![
                ToolUse::new(
                    "Write",
                    json!({"file_path": "hello.txt", "content": "hello\n"}),
                )
                .with_id(write_id),
            ])
            .with_thinking("I should write the file.", ""),
            Reply::text("Wrote hello.txt."),
        ],
        vec![Reply::text("It says hello.")],
    ]);
    let client = McpClient::builder(&mock)
        .env("AGENTKIMI_PROTOCOL", "openai")
        .env("AGENTKIMI_BASE_URL", &format!("{}/v1", mock.base_url()))
        .spawn()
        .await;

    let first = client.start("Write hello.txt", None).await;
    assert_eq!(first["status"], "completed", "{first:#}");
    assert_eq!(first["summary"], "Wrote hello.txt.");
    let id = first["session_id"].as_str().unwrap().to_owned();
    let worktree = first["worktree"].as_str().unwrap();
    assert_eq!(
        fs::read_to_string(std::path::Path::new(worktree).join("hello.txt")).unwrap(),
        "hello\n"
    );
    // prompt_tokens 140 with 40 cached per step: 100 full-rate, 40 cached.
    assert_eq!(first["usage"]["input_tokens"], 200, "{first:#}");
    assert_eq!(first["usage"]["cache_read_input_tokens"], 80, "{first:#}");
    assert_eq!(first["usage"]["output_tokens"], 40, "{first:#}");

    let second = client.send(&id, "What does it say?").await;
    assert_eq!(second["status"], "completed", "{second:#}");
    assert_eq!(second["summary"], "It says hello.");

    let requests = mock.requests();
    assert_eq!(requests.len(), 3);
    for r in &requests {
        assert_eq!(r.path, "/v1/chat/completions");
        assert!(r.is_openai());
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {}", client.api_key()).as_str())
        );
        assert!(r.header("x-api-key").is_none(), "only the bearer header");
    }

    let first_body = requests[0].wire_body();
    assert_eq!(first_body["stream"], true);
    assert_eq!(first_body["messages"][0]["role"], "system");
    assert_eq!(first_body["tools"][0]["type"], "function");
    assert!(
        first_body["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["function"]["name"] == "Write")
    );

    // The follow-up carries the whole conversation in the wire form.
    let body = requests[2].wire_body();
    let assistants = assistant_messages(&body);
    assert_eq!(assistants.len(), 2, "{body:#}");
    let caller = &assistants[0];
    assert_eq!(caller["tool_calls"][0]["id"], write_id, "{caller:#}");
    assert_eq!(caller["tool_calls"][0]["function"]["name"], "Write");
    let args: Value = serde_json::from_str(
        caller["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(args["file_path"], "hello.txt");
    assert_eq!(caller["reasoning_content"], "I should write the file.");
    assert!(
        caller.get("content").is_none() || caller["content"].as_str() != Some(""),
        "no empty text beside tool calls: {caller:#}"
    );
    let tool_msg = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .expect("a tool message");
    assert_eq!(tool_msg["tool_call_id"], write_id);
    assert_eq!(assistants[1]["content"], "Wrote hello.txt.");
    let last = body["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        last,
        json!({"role": "user", "content": "What does it say?"})
    );

    client.shutdown().await;
}

#[tokio::test]
async fn a_rate_limit_is_retried_and_a_refused_key_is_explained() {
    let calls = std::sync::atomic::AtomicUsize::new(0);
    let mock = MockModel::start(move |_| {
        match calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => Reply::error(
                429,
                json!({"error": {"type": "rate_limit_error", "message": "slow down"}}),
            )
            .with_header("retry-after", "0"),
            1 => Reply::text("done"),
            _ => Reply::error(
                401,
                json!({"error": {"type": "invalid_authentication_error", "message": "bad key"}}),
            ),
        }
    });
    let client = McpClient::builder(&mock)
        .env("AGENTKIMI_PROTOCOL", "openai")
        .env("AGENTKIMI_BASE_URL", &mock.base_url())
        .spawn()
        .await;

    let first = client.start("anything", None).await;
    assert_eq!(first["status"], "completed", "{first:#}");
    assert_eq!(first["summary"], "done");
    assert_eq!(mock.requests()[0].path, "/chat/completions");

    let id = first["session_id"].as_str().unwrap().to_owned();
    let second = client.send(&id, "again").await;
    assert_ne!(second["status"], "completed", "{second:#}");
    let note = second["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("401") && note.contains("KIMI_API_KEY"),
        "{note}"
    );
    assert_eq!(mock.requests().len(), 3, "a refused key is not retried");

    client.shutdown().await;
}
