//! Long turns and fan-out over MCP: turns started with `wait: false` run on
//! while the caller does other things, and are looked at, collected and
//! cancelled with agentkimi_status, agentkimi_wait and agentkimi_cancel.
//! Also progress notifications, per-session options, per-session token
//! usage, agentkimi_list and agentkimi_diff. Real binary, real bwrap and git,
//! the scripted mock as the model.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{
    git::GitRepo,
    mcp::{McpClient, expect_error, path_string, structured},
    mock_model::{MockModel, Reply, Request, ToolUse},
};

/// The file a turn writes: named after the first word of its prompt, so
/// parallel sessions write different files.
fn file_for(request: &Request) -> String {
    let prompt = request.last_user_text().unwrap_or_default();
    let word = prompt.split_whitespace().next().unwrap_or("x").to_owned();
    format!("{word}.txt")
}

/// A model that writes `<first word>.txt` after `delay`, then says so.
fn writing_model(delay: Duration) -> MockModel {
    MockModel::start(move |request| match request.step_in_turn() {
        0 => {
            let file = file_for(request);
            Reply::tools(vec![ToolUse::new(
                "Write",
                json!({"file_path": file, "content": format!("{file}\n")}),
            )])
            .delay(delay)
        }
        1 => Reply::text(&format!("Wrote {}.", file_for(request))),
        step => Reply::unexpected(format!("no step {step} in this script")),
    })
}

async fn call_ok(client: &McpClient, tool: &str, args: Value) -> Value {
    let result = client.call(tool, args).await;
    structured(&result, tool)
}

#[tokio::test]
async fn parallel_sessions_run_on_and_are_collected() {
    let mock = writing_model(Duration::from_secs(3));
    let client = McpClient::spawn(&mock).await;

    // Three sessions, none waited for: each call returns while its turn runs.
    let mut ids = Vec::new();
    for word in ["alpha", "beta", "gamma"] {
        let begun = Instant::now();
        let r = call_ok(
            &client,
            "agentkimi_start",
            json!({"prompt": format!("{word} file please"), "wait": false}),
        )
        .await;
        let took = begun.elapsed();
        assert_eq!(r["state"], "running", "{r:#}");
        assert_eq!(r["turn"], 1, "{r:#}");
        assert!(took < Duration::from_secs(2), "start took {took:?}");
        eprintln!("agentkimi_start with wait:false answered in {took:?}");
        ids.push(r["session_id"].as_str().unwrap().to_owned());
    }

    // The server stays responsive while three turns run.
    let begun = Instant::now();
    let tools = client.list_tools().await;
    let took = begun.elapsed();
    assert_eq!(tools.len(), 8);
    assert!(took < Duration::from_secs(1), "tools/list took {took:?}");
    eprintln!("tools/list during three turns answered in {took:?}");

    // Mid-turn status: running, on its first step.
    let st = call_ok(&client, "agentkimi_status", json!({"session_id": ids[0]})).await;
    assert_eq!(st["state"], "running", "{st:#}");
    assert_eq!(st["step"], 1, "{st:#}");
    assert_eq!(st["current"], "Kimi is thinking (step 1)", "{st:#}");

    let list = call_ok(&client, "agentkimi_list", json!({})).await;
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 3, "{list:#}");
    assert!(sessions.iter().all(|s| s["state"] == "running"), "{list:#}");

    // Collect all three; each wrote its own file.
    for (id, word) in ids.iter().zip(["alpha", "beta", "gamma"]) {
        let r = call_ok(
            &client,
            "agentkimi_wait",
            json!({"session_id": id, "timeout_s": 60}),
        )
        .await;
        assert_eq!(r["status"], "completed", "{r:#}");
        assert_eq!(r["summary"], format!("Wrote {word}.txt."), "{r:#}");
        assert!(
            r["diff"]
                .as_str()
                .unwrap()
                .contains(&format!("+{word}.txt")),
            "{r:#}"
        );
        // Two model calls at the mock's default counts.
        assert_eq!(r["usage"]["input_tokens"], 200, "{r:#}");
        assert_eq!(r["session_usage"]["input_tokens"], 200, "{r:#}");
    }
    let list = call_ok(&client, "agentkimi_list", json!({})).await;
    assert!(
        list["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "idle"),
        "{list:#}"
    );

    // A short wait on a running turn answers with its status.
    let r = call_ok(
        &client,
        "agentkimi_send",
        json!({"session_id": ids[0], "message": "delta again", "wait": false}),
    )
    .await;
    assert_eq!(r["turn"], 2, "{r:#}");
    let r = call_ok(
        &client,
        "agentkimi_wait",
        json!({"session_id": ids[0], "timeout_s": 0}),
    )
    .await;
    assert_eq!(r["state"], "running", "{r:#}");
    let r = call_ok(&client, "agentkimi_wait", json!({"session_id": ids[0]})).await;
    assert_eq!(r["turn"], 2, "{r:#}");
    assert_eq!(r["status"], "completed", "{r:#}");
    assert_eq!(r["session_usage"]["input_tokens"], 400, "{r:#}");

    client.shutdown().await;
}

#[tokio::test]
async fn cancel_stops_the_turn_and_keeps_its_work() {
    let mock = MockModel::start(|request| match request.step_in_turn() {
        0 => Reply::tools(vec![ToolUse::new(
            "Write",
            json!({"file_path": "partial.txt", "content": "half done\n"}),
        )]),
        // The model "thinks" for a long time: the turn is mid-step when
        // the caller cancels.
        _ => Reply::text("never seen").delay(Duration::from_secs(8)),
    });
    let repo = GitRepo::new();
    let client = McpClient::spawn(&mock).await;

    let r = call_ok(
        &client,
        "agentkimi_start",
        json!({"prompt": "work slowly", "workdir": path_string(repo.path()), "wait": false}),
    )
    .await;
    let id = r["session_id"].as_str().unwrap().to_owned();
    // Until the second step runs, the file is written.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = call_ok(&client, "agentkimi_status", json!({"session_id": id})).await;
        if st["step"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "never reached step 2: {st:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let begun = Instant::now();
    let r = call_ok(&client, "agentkimi_cancel", json!({"session_id": id})).await;
    let took = begun.elapsed();
    eprintln!("agentkimi_cancel answered with the committed result in {took:?}");
    assert!(took < Duration::from_secs(1), "cancel took {took:?}");
    assert_eq!(r["status"], "cancelled", "{r:#}");
    assert!(
        r["commit"].is_string(),
        "the partial work is committed: {r:#}"
    );
    assert_eq!(
        repo.show_file(&format!("agentkimi/{id}"), "partial.txt")
            .as_deref(),
        Some("half done\n")
    );

    // Nothing left to cancel; the session takes a new turn.
    let e = client
        .call("agentkimi_cancel", json!({"session_id": id}))
        .await;
    let msg = expect_error(&e, "cancel without a running turn");
    assert!(msg.contains("no running turn"), "{msg}");
    let st = call_ok(&client, "agentkimi_status", json!({"session_id": id})).await;
    assert_eq!(st["state"], "idle", "{st:#}");
    assert_eq!(st["last_result"]["status"], "cancelled", "{st:#}");

    client.shutdown().await;
}

#[tokio::test]
async fn a_result_nobody_collected_survives_a_restart() {
    let mock = writing_model(Duration::ZERO);
    let mut client = McpClient::spawn(&mock).await;

    let r = call_ok(
        &client,
        "agentkimi_start",
        json!({"prompt": "kept file", "wait": false}),
    )
    .await;
    let id = r["session_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = call_ok(&client, "agentkimi_status", json!({"session_id": id})).await;
        if st["state"] == "finished" {
            break;
        }
        assert!(Instant::now() < deadline, "the turn never ended: {st:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    client.restart().await;
    let r = call_ok(
        &client,
        "agentkimi_wait",
        json!({"session_id": id, "timeout_s": 5}),
    )
    .await;
    assert_eq!(r["status"], "completed", "{r:#}");
    assert_eq!(r["summary"], "Wrote kept.txt.", "{r:#}");
    assert!(r["diff"].as_str().unwrap().contains("+kept.txt"), "{r:#}");
    assert_eq!(r["usage"]["input_tokens"], 200, "{r:#}");

    client.shutdown().await;
}

#[tokio::test]
async fn progress_notifications_describe_each_step() {
    let mock = MockModel::sequence(vec![
        Reply::tools(vec![ToolUse::new(
            "Write",
            json!({"file_path": "src/lib.rs", "content": "pub fn f() {}\n"}),
        )]),
        Reply::tools(vec![ToolUse::new("Bash", json!({"command": "true"}))]),
        Reply::text("Done."),
    ]);
    let client = McpClient::spawn(&mock).await;

    let r = call_ok(&client, "agentkimi_start", json!({"prompt": "make lib"})).await;
    assert_eq!(r["status"], "completed", "{r:#}");

    let expected = [
        "Kimi is thinking (step 1)",
        "Write src/lib.rs",
        "Kimi is thinking (step 2)",
        "Kimi is thinking (step 3)",
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    let got = loop {
        let got = client.progress_messages();
        if got.len() >= 5 || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for line in expected {
        assert!(got.iter().any(|g| g == line), "{line:?} not in {got:#?}");
    }
    assert!(
        got.iter()
            .any(|g| g.starts_with("Bash: true — exit 0, ") && g.ends_with(" s")),
        "{got:#?}"
    );

    client.shutdown().await;
}

#[tokio::test]
async fn start_options_apply_to_every_turn_and_network_only_tightens() {
    let mock = MockModel::start(|request| {
        let system = request.system().unwrap_or_default();
        if request.model() != Some("kimi-custom") || !system.contains("Answer in haiku.") {
            return Reply::unexpected(format!("options not applied: model {:?}", request.model()));
        }
        // Always wants another tool call: only max_steps ends the turn.
        Reply::tools(vec![ToolUse::new("LS", json!({"path": "."}))])
    });
    let client = McpClient::spawn(&mock).await;

    let r = call_ok(
        &client,
        "agentkimi_start",
        json!({"prompt": "look around", "model": "kimi-custom", "max_steps": 2,
               "instructions": "Answer in haiku.", "timeout_s": 120, "network": "off"}),
    )
    .await;
    assert_eq!(r["status"], "step_limit", "{r:#}");
    assert_eq!(r["steps"], 2, "{r:#}");
    let id = r["session_id"].as_str().unwrap().to_owned();

    let r = call_ok(
        &client,
        "agentkimi_send",
        json!({"session_id": id, "message": "again"}),
    )
    .await;
    assert_eq!(r["status"], "step_limit", "{r:#}");
    assert_eq!(r["steps"], 2, "{r:#}");
    assert_eq!(mock.requests().len(), 4);

    // The server runs without network: a session cannot turn it on.
    let e = client
        .call(
            "agentkimi_start",
            json!({"prompt": "fetch", "network": "on"}),
        )
        .await;
    let msg = expect_error(&e, "network on with a network-off server");
    assert!(msg.contains("only make the policy stricter"), "{msg}");
    let e = client
        .call(
            "agentkimi_start",
            json!({"prompt": "x", "max_steps": "many"}),
        )
        .await;
    let msg = expect_error(&e, "max_steps as a string");
    assert!(msg.contains("`max_steps` must be a whole number"), "{msg}");
    assert_eq!(mock.requests().len(), 4, "refused starts call no model");

    client.shutdown().await;
}

#[tokio::test]
async fn diff_pages_one_file_and_ended_sessions() {
    let big: String = (0..7000).map(|i| format!("line {i:05}\n")).collect();
    let big2 = big.clone();
    let mock = MockModel::sequence(vec![
        Reply::tools(vec![
            ToolUse::new("Write", json!({"file_path": "big.txt", "content": big2})),
            ToolUse::new(
                "Write",
                json!({"file_path": "small.txt", "content": "small\n"}),
            ),
        ]),
        Reply::text("Wrote two files."),
    ]);
    let repo = GitRepo::new();
    let client = McpClient::spawn(&mock).await;
    let r = call_ok(
        &client,
        "agentkimi_start",
        json!({"prompt": "two files", "workdir": path_string(repo.path())}),
    )
    .await;
    let id = r["session_id"].as_str().unwrap().to_owned();

    let small = call_ok(
        &client,
        "agentkimi_diff",
        json!({"session_id": id, "path": "small.txt"}),
    )
    .await;
    assert_eq!(small["source"], "worktree", "{small:#}");
    let text = small["text"].as_str().unwrap();
    assert!(
        text.starts_with("diff --git a/small.txt b/small.txt"),
        "{text}"
    );
    assert!(!text.contains("big.txt"), "{text}");
    assert_eq!(small["files_changed"].as_array().unwrap().len(), 2);

    // The whole diff, page by page, has every line of big.txt once.
    let mut whole = String::new();
    let mut offset = Some(0u64);
    let mut pages = 0;
    while let Some(at) = offset {
        let page = call_ok(
            &client,
            "agentkimi_diff",
            json!({"session_id": id, "offset": at}),
        )
        .await;
        whole.push_str(page["text"].as_str().unwrap());
        offset = page["next_offset"].as_u64();
        pages += 1;
    }
    assert!(pages >= 2, "a 70 kB diff takes more than one page");
    assert_eq!(whole.matches("\n+line ").count(), 7000);

    let e = client
        .call(
            "agentkimi_diff",
            json!({"session_id": id, "path": "nope.txt"}),
        )
        .await;
    let msg = expect_error(&e, "a path the diff does not touch");
    assert!(msg.contains("big.txt, small.txt"), "{msg}");

    // After the end, the diff comes from the branch.
    client.end(&id).await;
    let ended = call_ok(
        &client,
        "agentkimi_diff",
        json!({"session_id": id, "path": "small.txt"}),
    )
    .await;
    assert_eq!(ended["source"], "branch", "{ended:#}");
    assert_eq!(ended["text"], small["text"]);
    let st = call_ok(&client, "agentkimi_status", json!({"session_id": id})).await;
    assert_eq!(st["state"], "ended", "{st:#}");

    client.shutdown().await;
}
