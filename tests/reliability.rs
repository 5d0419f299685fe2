//! Reliability: sessions never lose work.
//!
//! Crashes (`kill -9` of the server mid-turn), cancellation, a client that
//! goes away, two server processes on one state directory, provider faults
//! (rate limits, server errors, streams cut mid-event, broken tool JSON),
//! long sessions that outgrow the context window, and housekeeping. Each
//! test asserts what matters to a user: the work is on the branch, the
//! transcript the provider gets back is valid, and the session goes on.
//! Figures (kill -9 trials and steps lost, cancellation latency, parallel
//! speed-up, `tools/list` latency) are printed with `--nocapture`.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use support::{
    mcp::{McpClient, expect_error, structured},
    mock_model::{MockModel, Reply, Request, ToolUse, error_body, sse_events, sse_text},
};

/// The session id, read from the system prompt the mock received (it names
/// the worktree, `…/worktrees/<id>`): the only way to learn it when the
/// start call never returned.
fn session_id_from(request: &Request) -> String {
    let system = request.system().expect("a system prompt");
    let at = system
        .find("worktrees/kimi-")
        .expect("the worktree path in the system prompt");
    system[at + "worktrees/".len()..].chars().take(17).collect()
}

/// Fails when any tool call in the conversation has no result, or a result
/// answers no call: what providers refuse.
fn assert_transcript_valid(request: &Request) {
    let mut pending: Vec<String> = Vec::new();
    for message in request.messages() {
        let blocks = message["content"].as_array().cloned().unwrap_or_default();
        match message["role"].as_str() {
            Some("assistant") => {
                assert!(
                    pending.is_empty(),
                    "tool calls {pending:?} have no result before the next assistant message"
                );
                pending = blocks
                    .iter()
                    .filter(|b| b["type"] == "tool_use")
                    .map(|b| b["id"].as_str().unwrap_or("").to_owned())
                    .collect();
            }
            Some("user") => {
                for b in blocks.iter().filter(|b| b["type"] == "tool_result") {
                    let id = b["tool_use_id"].as_str().unwrap_or("");
                    let at = pending.iter().position(|p| p == id);
                    assert!(at.is_some(), "tool result {id} answers no pending call");
                    pending.remove(at.unwrap_or(0));
                }
            }
            other => panic!("unexpected role {other:?}"),
        }
    }
    assert!(pending.is_empty(), "tool calls {pending:?} have no result");
}

fn throwaway_show(home: &Path, id: &str, file: &str) -> Option<String> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(home.join("gitdirs").join(id))
        .args(["show", &format!("agentkimi/{id}:{file}")])
        .output()
        .expect("run git");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn turn_status(home: &Path, id: &str, turn: u32) -> Option<String> {
    let store = agentkimi::store::Store::open(&home.join("agentkimi.db")).expect("open the store");
    store
        .turn(id, turn)
        .expect("read the turn")
        .map(|t| t.status)
}

async fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn kill9(pid: u32) {
    // SAFETY: sending a signal to a child process this test started.
    let rc = unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {pid}");
}

// ---------------------------------------------------------------------------
// kill -9 mid-turn

/// Where in a turn the server is killed.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// While the model is answering the second step.
    DuringModelCall,
    /// While a Bash command of the second step runs in the sandbox.
    DuringToolCall,
}

/// One trial: the model writes `step1.txt`, then (step 2) either takes
/// forever to answer or runs a slow command after writing `step2.txt`; the
/// server is killed at that moment. Returns how many completed steps' work
/// is missing from the branch afterwards (the target is 0).
async fn kill9_trial(point: KillPoint) -> usize {
    let mock = MockModel::start(move |req| {
        let turn = req.turn_index();
        let step = req.step_in_turn();
        match (turn, step, point) {
            (0, 0, _) => Reply::tools(vec![ToolUse::new(
                "Write",
                json!({"file_path": "step1.txt", "content": "one\n"}),
            )]),
            (0, 1, KillPoint::DuringModelCall) => {
                Reply::text("never seen").delay(Duration::from_secs(10))
            }
            (0, 1, KillPoint::DuringToolCall) => Reply::tools(vec![ToolUse::new(
                "Bash",
                json!({"command": "echo two > step2.txt && sleep 60"}),
            )]),
            (_, _, _) => Reply::text("resumed and finished"),
        }
    });
    let mut client = McpClient::spawn(&mock).await;
    let pid = client.pid().expect("a server pid");
    let home = client.home().to_path_buf();

    let killer = async {
        match point {
            KillPoint::DuringModelCall => {
                wait_for("the second model call", Duration::from_secs(30), || {
                    mock.requests().len() >= 2
                })
                .await;
            }
            KillPoint::DuringToolCall => {
                wait_for("the slow command", Duration::from_secs(30), || {
                    let reqs = mock.requests();
                    reqs.len() >= 2 && {
                        let id = session_id_from(&reqs[0]);
                        home.join("worktrees").join(&id).join("step2.txt").exists()
                    }
                })
                .await;
            }
        }
        kill9(pid);
    };
    let call = client.try_call("agentkimi_start", json!({"prompt": "write files"}));
    let (outcome, ()) = tokio::join!(call, killer);
    assert!(
        outcome.is_err(),
        "the start call cannot have completed: {outcome:?}"
    );
    let id = session_id_from(&mock.requests()[0]);

    // A new server recovers the session on start-up: the partial work is on
    // the branch before anyone sends to it.
    client.restart().await;
    wait_for(
        "the interrupted turn to be recovered",
        Duration::from_secs(20),
        || turn_status(&home, &id, 1).as_deref() == Some("interrupted"),
    )
    .await;
    let mut lost = 0;
    if throwaway_show(&home, &id, "step1.txt").as_deref() != Some("one\n") {
        lost += 1;
    }
    if matches!(point, KillPoint::DuringToolCall)
        && throwaway_show(&home, &id, "step2.txt").as_deref() != Some("two\n")
    {
        lost += 1;
    }

    // The session continues with a transcript the provider accepts.
    let result = client.send(&id, "go on").await;
    assert_eq!(result["status"], "completed", "{result:#}");
    assert_eq!(result["turn"], 2);
    let last = mock.requests().last().cloned().expect("a request");
    assert_transcript_valid(&last);
    assert!(
        last.raw_body.contains("write files"),
        "the first prompt is kept"
    );
    client.shutdown().await;
    lost
}

#[tokio::test]
async fn kill_9_mid_turn_loses_no_step_and_the_session_resumes() {
    let points = [
        KillPoint::DuringModelCall,
        KillPoint::DuringToolCall,
        KillPoint::DuringModelCall,
        KillPoint::DuringToolCall,
    ];
    let mut lost = 0;
    for point in points {
        lost += kill9_trial(point).await;
    }
    println!(
        "figure: kill -9 trials {}, completed steps lost {lost}",
        points.len()
    );
    assert_eq!(lost, 0);
}

// ---------------------------------------------------------------------------
// Cancellation and a client that goes away

#[tokio::test]
async fn cancelled_request_stops_the_turn_within_a_second_and_keeps_the_work() {
    let mock = MockModel::start(|req| match req.step_in_turn() {
        0 => Reply::tools(vec![ToolUse::new(
            "Write",
            json!({"file_path": "kept.txt", "content": "kept\n"}),
        )]),
        _ => Reply::text("too late").delay(Duration::from_secs(10)),
    });
    let client = McpClient::spawn(&mock).await;
    let home = client.home().to_path_buf();
    let peer = client.peer();
    let params = rmcp::model::CallToolRequestParams::new("agentkimi_start").with_arguments(
        json!({"prompt": "write and wait"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    );
    let request =
        rmcp::model::ClientRequest::CallToolRequest(rmcp::model::CallToolRequest::new(params));
    let handle = peer
        .send_cancellable_request(request, rmcp::service::PeerRequestOptions::no_options())
        .await
        .expect("send the request");
    wait_for("the second model call", Duration::from_secs(30), || {
        mock.requests().len() >= 2
    })
    .await;
    let id = session_id_from(&mock.requests()[0]);

    let cancelled_at = Instant::now();
    handle
        .cancel(Some("the user changed their mind".into()))
        .await
        .expect("send the cancellation");
    wait_for("the turn to end", Duration::from_secs(10), || {
        turn_status(&home, &id, 1).is_some_and(|s| s != "running")
    })
    .await;
    let latency = cancelled_at.elapsed();
    println!("figure: cancellation latency {} ms", latency.as_millis());
    assert!(
        latency < Duration::from_secs(1),
        "cancellation took {latency:?}"
    );
    assert_eq!(turn_status(&home, &id, 1).as_deref(), Some("cancelled"));
    assert_eq!(
        throwaway_show(&home, &id, "kept.txt").as_deref(),
        Some("kept\n")
    );

    // The session is not busy and goes on.
    let result = client.send(&id, "carry on").await;
    assert_eq!(result["status"], "completed", "{result:#}");
    assert_transcript_valid(mock.requests().last().expect("a request"));
    client.shutdown().await;
}

#[tokio::test]
async fn client_closing_stdin_ends_the_server_with_the_work_committed() {
    let mock = MockModel::start(|req| match req.step_in_turn() {
        0 => Reply::tools(vec![ToolUse::new(
            "Write",
            json!({"file_path": "saved.txt", "content": "saved\n"}),
        )]),
        _ => Reply::text("never").delay(Duration::from_secs(10)),
    });
    let mut client = McpClient::spawn(&mock).await;
    let home = client.home().to_path_buf();
    let pid = client.pid().expect("pid");
    let peer = client.peer();
    let call = tokio::spawn(async move {
        let params = rmcp::model::CallToolRequestParams::new("agentkimi_start").with_arguments(
            json!({"prompt": "save it"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        peer.call_tool(params).await
    });
    wait_for("the second model call", Duration::from_secs(30), || {
        mock.requests().len() >= 2
    })
    .await;
    let id = session_id_from(&mock.requests()[0]);

    let closed_at = Instant::now();
    client.close().await;
    let _ = call.await;
    wait_for("the server to exit", Duration::from_secs(15), || {
        !Path::new(&format!("/proc/{pid}")).exists()
    })
    .await;
    println!(
        "figure: server exit after stdin closed {} ms",
        closed_at.elapsed().as_millis()
    );
    let status = turn_status(&home, &id, 1);
    assert!(
        matches!(status.as_deref(), Some("cancelled") | Some("interrupted")),
        "{status:?}"
    );
    assert_eq!(
        throwaway_show(&home, &id, "saved.txt").as_deref(),
        Some("saved\n")
    );
    let log = client.server_log();
    assert!(
        log.contains("client closed the connection"),
        "the server noticed stdin closing:\n{log}"
    );
}

// ---------------------------------------------------------------------------
// Two processes, one state directory

#[tokio::test]
async fn a_second_process_gets_busy_at_once_and_takes_over_after_a_crash() {
    let mock = MockModel::start(|req| match (req.turn_index(), req.step_in_turn()) {
        (0, 0) => Reply::text("first turn done"),
        (1, 0) => Reply::text("slow second turn").delay(Duration::from_secs(3)),
        _ => Reply::text("third turn from the other process"),
    });
    let a = McpClient::spawn(&mock).await;
    let first = a.start("hello", None).await;
    let id = first["session_id"].as_str().expect("id").to_owned();

    let b = a.sibling().await;
    let slow = a.call(
        "agentkimi_send",
        json!({"session_id": id, "message": "slow"}),
    );
    let busy = async {
        wait_for("the slow turn", Duration::from_secs(20), || {
            mock.requests().len() >= 2
        })
        .await;
        let asked = Instant::now();
        let r = b
            .call(
                "agentkimi_send",
                json!({"session_id": id, "message": "me too"}),
            )
            .await;
        (r, asked.elapsed())
    };
    let (slow_result, (busy_result, busy_latency)) = tokio::join!(slow, busy);
    let message = expect_error(&busy_result, "a send to a busy session");
    assert!(message.contains("busy"), "{message}");
    println!(
        "figure: busy answer from the second process in {} ms",
        busy_latency.as_millis()
    );
    assert!(busy_latency < Duration::from_secs(1));
    assert_eq!(
        structured(&slow_result, "agentkimi_send")["status"],
        "completed"
    );

    // Once the first process is gone, the second one drives the session.
    let a_pid = a.pid().expect("pid");
    kill9(a_pid);
    let third = b.send(&id, "now you").await;
    assert_eq!(third["turn"], 3, "{third:#}");
    assert_eq!(third["summary"], "third turn from the other process");
    b.shutdown().await;
}

// ---------------------------------------------------------------------------
// Provider faults

/// A tool call whose input is not valid JSON, then a cut stream, in raw SSE.
fn broken_tool_json() -> String {
    let events = [
        (
            "message_start",
            json!({
                "type": "message_start",
                "message": {
                    "id": "m",
                    "type": "message",
                    "role": "assistant",
                    "model": "m",
                    "content": [],
                    "usage": {
                        "input_tokens": 5,
                        "output_tokens": 1
                    }
                }
            }),
        ),
        (
            "content_block_start",
            json!({
                "type": "content_block_start",
                "index": 0,
                "content_block": {
                    "type": "tool_use",
                    "id": "toolu_broken",
                    "name": "Write",
                    "input": {}
                }
            }),
        ),
        (
            "content_block_delta",
            json!({"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"file_path\": \"x.txt\", \"content\": "}}),
        ),
        (
            "content_block_stop",
            json!({"type":"content_block_stop","index":0}),
        ),
        (
            "message_delta",
            json!({
                "type": "message_delta",
                "delta": {
                    "stop_reason": "tool_use"
                },
                "usage": {
                    "output_tokens": 9
                }
            }),
        ),
        ("message_stop", json!({"type":"message_stop"})),
    ];
    events
        .iter()
        .map(|(n, d)| format!("event: {n}\ndata: {d}\n\n"))
        .collect()
}

/// A well-formed reply's stream, cut in the middle of an event.
fn cut_stream(reply_text: &str) -> String {
    let message = json!({"id":"m","type":"message","role":"assistant","model":"m",
        "content":[{"type":"text","text":reply_text}],"stop_reason":"end_turn",
        "usage":{"input_tokens":5,"output_tokens":3}});
    let events = sse_events(&message);
    let mut text = sse_text(&events[..3]);
    let next = sse_text(&events[3..4]);
    text.push_str(&next[..next.len() / 2]);
    text
}

#[tokio::test]
async fn provider_faults_are_retried_or_returned_to_the_model() {
    // Per step, the faults this step meets before it succeeds.
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = calls.clone();
    let mock = MockModel::start(move |req| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match n {
            // Step 1: a burst of 429s honouring retry-after, then a 529.
            0 | 1 => {
                Reply::error(429, error_body(429, "slow down")).with_header("retry-after", "0")
            }
            2 => Reply::error(529, error_body(529, "overloaded")),
            3 => Reply::raw_sse(broken_tool_json()),
            // Step 2: the model called an unknown tool; a 500 first.
            4 => Reply::error(500, error_body(500, "internal")),
            5 => Reply::tools(vec![ToolUse::new("Teleport", json!({"to": "mars"}))]),
            // Step 3: a stream cut mid-event, then the real answer.
            6 => Reply::raw_sse(cut_stream("half")),
            _ => {
                let results = req.tool_results();
                Reply::text(&format!(
                    "recovered; last result error={}",
                    results.first().map(|r| r.is_error).unwrap_or(false)
                ))
            }
        }
    });
    let client = McpClient::builder(&mock)
        .env("AGENTKIMI_RETRY_BASE_MS", "20")
        .spawn()
        .await;
    let result = client.start("survive the faults", None).await;
    assert_eq!(result["status"], "completed", "{result:#}");
    assert_eq!(result["steps"], 3, "{result:#}");
    let calls_made: Vec<(String, bool)> = result["tool_calls"]
        .as_array()
        .expect("tool calls")
        .iter()
        .map(|c| (c["name"].as_str().unwrap_or("").to_owned(), c["ok"] == true))
        .collect();
    assert_eq!(
        calls_made,
        vec![("Write".to_owned(), false), ("Teleport".to_owned(), false)]
    );
    // The model was told what went wrong, with the ids it sent.
    let results: Vec<_> = mock
        .requests()
        .iter()
        .flat_map(|r| r.tool_results())
        .collect();
    let broken = results
        .iter()
        .find(|r| r.tool_use_id == "toolu_broken")
        .expect("a result for the broken call");
    assert!(
        broken.is_error && broken.content.contains("not valid JSON"),
        "{broken:?}"
    );
    assert!(
        results
            .iter()
            .any(|r| r.is_error && r.content.contains("no tool named"))
    );
    // Nothing was written by the broken call.
    assert!(
        !PathBuf::from(result["worktree"].as_str().unwrap_or(""))
            .join("x.txt")
            .exists()
    );
    client.shutdown().await;
}

#[tokio::test]
async fn failed_turns_say_so_and_three_in_a_row_refuse_further_sends() {
    let mock =
        MockModel::start(|_| Reply::error(400, error_body(400, "this model does not exist")));
    let client = McpClient::builder(&mock)
        .env("AGENTKIMI_RETRY_BASE_MS", "10")
        .spawn()
        .await;
    let first = client.start("try", None).await;
    assert_eq!(first["status"], "failed", "{first:#}");
    let note = first["note"].as_str().unwrap_or("");
    assert!(
        note.contains("this model does not exist") && note.contains("send a message to try again"),
        "{note}"
    );
    let id = first["session_id"].as_str().expect("id").to_owned();
    for _ in 0..2 {
        let r = client.send(&id, "again").await;
        assert_eq!(r["status"], "failed");
    }
    let refused = client
        .call(
            "agentkimi_send",
            json!({"session_id": id, "message": "once more"}),
        )
        .await;
    let message = expect_error(&refused, "a fourth send after three failures");
    assert!(
        message.contains("last 3 turns failed") && message.contains("doctor"),
        "{message}"
    );
    // Ending still works and keeps the branch.
    let end = client.end(&id).await;
    assert_eq!(end["ended"], true);
    client.shutdown().await;
}

// ---------------------------------------------------------------------------
// Long sessions

#[tokio::test]
async fn long_sessions_compact_old_tool_outputs_and_keep_going() {
    const STEPS: usize = 60;
    let mock = MockModel::start(|req| {
        if req.step_in_turn() < STEPS {
            Reply::tools(vec![ToolUse::new(
                "Bash",
                json!({"command": "head -c 20000 /dev/zero | tr '\\0' 'y'"}),
            )])
        } else {
            Reply::text("done after many steps")
        }
    });
    let client = McpClient::builder(&mock)
        .env("AGENTKIMI_CONTEXT_TOKENS", "40000")
        .env("AGENTKIMI_MAX_STEPS", "100")
        .spawn()
        .await;
    let result = client.start("produce a lot of output", None).await;
    assert_eq!(result["status"], "completed", "{result:#}");
    assert_eq!(result["steps"], STEPS as u64 + 1);
    let largest = mock
        .requests()
        .iter()
        .map(|r| r.raw_body.len())
        .max()
        .unwrap_or(0);
    println!(
        "figure: {STEPS} steps of 20 kB outputs; largest request {largest} bytes (uncompacted would be over {} bytes)",
        STEPS * 20_000
    );
    // Three quarters of 40,000 tokens at about four bytes a token, plus
    // the tool definitions and system prompt.
    assert!(largest < 160_000, "largest request {largest} bytes");
    let last = mock.requests().last().cloned().expect("a request");
    assert_transcript_valid(&last);
    assert!(
        last.raw_body
            .contains("removed to keep the conversation within the context window")
    );
    client.shutdown().await;
}

// ---------------------------------------------------------------------------
// Concurrency

#[tokio::test]
async fn eight_parallel_sessions_take_about_as_long_as_one() {
    let mock = MockModel::start(|req| match req.step_in_turn() {
        0 => Reply::tools(vec![ToolUse::new(
            "Write",
            json!({"file_path": "a.txt", "content": "a\n"}),
        )])
        .delay(Duration::from_secs(2)),
        _ => Reply::text("done").delay(Duration::from_secs(2)),
    });
    let client = McpClient::spawn(&mock).await;

    let t = Instant::now();
    let one = client.start("one", None).await;
    let single = t.elapsed();
    assert_eq!(one["status"], "completed");

    let t = Instant::now();
    let starts =
        (0..8).map(|i| client.call("agentkimi_start", json!({"prompt": format!("task {i}")})));
    let listing = async {
        let mut worst = Duration::ZERO;
        tokio::time::sleep(Duration::from_millis(500)).await;
        for _ in 0..10 {
            let q = Instant::now();
            let tools = client.list_tools().await;
            worst = worst.max(q.elapsed());
            assert!(tools.len() >= 3);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        worst
    };
    let (results, worst_list) = tokio::join!(futures::future::join_all(starts), listing);
    let parallel = t.elapsed();
    for r in &results {
        assert_eq!(structured(r, "agentkimi_start")["status"], "completed");
    }
    let ratio = parallel.as_secs_f64() / single.as_secs_f64();
    println!(
        "figure: one session {:.2} s, eight in parallel {:.2} s, ratio {ratio:.2}; worst tools/list during turns {} ms",
        single.as_secs_f64(),
        parallel.as_secs_f64(),
        worst_list.as_millis()
    );
    assert!(ratio <= 1.3, "eight sessions took {ratio:.2}× one");
    assert!(
        worst_list < Duration::from_millis(500),
        "tools/list took {worst_list:?} during turns"
    );
    client.shutdown().await;
}

// ---------------------------------------------------------------------------
// Housekeeping

#[tokio::test]
async fn start_up_housekeeping_removes_leftovers_but_never_live_work() {
    let mock = MockModel::start(|_| Reply::text("ok"));
    let mut client = McpClient::spawn(&mock).await;
    let live = client.start("live session", None).await;
    let live_id = live["session_id"].as_str().expect("id").to_owned();
    let ended = client.start("ended session", None).await;
    let ended_id = ended["session_id"].as_str().expect("id").to_owned();
    client.end(&ended_id).await;
    let home = client.home().to_path_buf();

    // The leftovers of a start that crashed before recording its session:
    // one old (removed), one fresh (kept: a start may be in progress).
    let old = home.join("worktrees/kimi-000000000old");
    let fresh = home.join("worktrees/kimi-00000000fresh");
    for d in [&old, &fresh] {
        std::fs::create_dir_all(d.join("src")).expect("mkdir");
        std::fs::write(d.join("src/f"), "x").expect("write");
    }
    let status = Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(&old)
        .status()
        .expect("touch");
    assert!(status.success());
    // An ended session whose worktree came back (a failed removal, say).
    std::fs::create_dir_all(home.join("worktrees").join(&ended_id)).expect("mkdir");

    client.restart().await;
    wait_for("housekeeping", Duration::from_secs(20), || !old.exists()).await;
    wait_for("the ended worktree to go", Duration::from_secs(20), || {
        !home.join("worktrees").join(&ended_id).exists()
    })
    .await;
    assert!(
        fresh.exists(),
        "a fresh unrecorded worktree must be left alone"
    );
    assert!(
        home.join("worktrees").join(&live_id).exists(),
        "the live session's worktree must stay"
    );
    // The ended session's branch and commits are untouched.
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(home.join("gitdirs").join(&ended_id))
        .args(["rev-parse", "--verify", &format!("agentkimi/{ended_id}")])
        .output()
        .expect("git");
    assert!(out.status.success());
    let again = client.send(&live_id, "still here?").await;
    assert_eq!(again["status"], "completed");
    let _: Value = again;
    client.shutdown().await;
}
