//! End-to-end tests of the model's toolset through the real server: the
//! read-before-write rule across turns and restarts, TodoWrite, the
//! `commands` list, background processes ending with the turn, and WebFetch
//! through the real sandbox. The scripted mock model plays Kimi; every
//! check is on effects (files, processes, what the model was sent).

mod support;

use std::{
    io::{BufRead, BufReader, Write},
    net::TcpListener,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use serde_json::{Value, json};
use support::{
    git::GitRepo,
    mcp::McpClient,
    mock_model::{MockModel, Reply, Request, ToolUse},
};

/// The tool results the model was sent in the request of `step`, in order,
/// as (content, is_error).
fn results(requests: &[Request], step: usize) -> Vec<(String, bool)> {
    requests[step]
        .tool_results()
        .into_iter()
        .map(|r| (r.content, r.is_error))
        .collect()
}

fn call(name: &str, input: Value) -> Reply {
    Reply::tools(vec![ToolUse::new(name, input)])
}

#[tokio::test]
async fn writes_need_a_prior_read_across_turns_and_restarts() {
    let repo = GitRepo::new();
    let edit = |old: &str, new: &str| {
        call(
            "Edit",
            json!({"file_path": "README.md", "old_string": old, "new_string": new}),
        )
    };
    let mock = MockModel::turns(vec![
        vec![
            // 0: overwrite an existing file unseen: refused.
            call(
                "Write",
                json!({"file_path": "README.md", "content": "clobbered\n"}),
            ),
            // 1: Edit unseen: refused.
            edit("# Fixture", "# FIXTURE"),
            // 2: Read, 3: the same Edit works now.
            call("Read", json!({"file_path": "README.md"})),
            edit("# Fixture", "# FIXTURE"),
            Reply::text("edited"),
        ],
        vec![
            // After a restart: the stored ledger still knows README.md.
            edit("# FIXTURE", "# Second"),
            // A shell change makes the file stale.
            call("Bash", json!({"command": "echo appended >> README.md"})),
            edit("# Second", "# Done"),
            call("Read", json!({"file_path": "README.md"})),
            edit("# Second", "# Done"),
            Reply::text("done"),
        ],
    ]);
    let mut client = McpClient::spawn(&mock).await;

    let first = client.start("edit the readme", Some(repo.path())).await;
    let id = first["session_id"].as_str().unwrap().to_owned();
    let wt = std::path::PathBuf::from(first["worktree"].as_str().unwrap());
    client.restart().await;
    let second = client.send(&id, "and again").await;

    let requests = mock.requests();
    let (write, err) = &results(&requests, 1)[0];
    assert!(*err);
    assert_eq!(
        write,
        &format!(
            "Write refused: {}/README.md exists and you have not read it in this session. Read \
             it first (Read with file_path \"README.md\"), then repeat the Write call, so you do \
             not overwrite content you have not seen.",
            wt.display()
        )
    );
    assert!(results(&requests, 2)[0].1, "unseen Edit refused");
    assert!(
        !results(&requests, 4)[0].1,
        "Edit after Read works: {:?}",
        results(&requests, 4)
    );
    // Turn 2 (requests 5..): steps 1, 2 ok; 3 refused as stale; 5 ok.
    assert!(!results(&requests, 6)[0].1, "{:?}", results(&requests, 6));
    let (stale, err) = &results(&requests, 8)[0];
    assert!(
        *err && stale.contains("changed since you last read it"),
        "{stale}"
    );
    assert!(!results(&requests, 10)[0].1, "{:?}", results(&requests, 10));

    let readme = std::fs::read_to_string(wt.join("README.md")).unwrap();
    assert!(!readme.contains("clobbered"));
    assert!(
        readme.starts_with("# Done\n") && readme.ends_with("appended\n"),
        "{readme}"
    );
    assert_eq!(first["status"], "completed");
    assert_eq!(second["status"], "completed");
    client.shutdown().await;
}

#[tokio::test]
async fn todos_and_commands_are_kept_and_reported() {
    let todos = json!([
        {"content": "Write the script", "status": "completed", "activeForm": "Writing the script"},
        {"content": "Run it", "status": "in_progress", "activeForm": "Running it"}
    ]);
    let mock = MockModel::turns(vec![
        vec![
            call(
                "TodoWrite",
                json!({"todos": [{"content": "x", "status": "done"}]}),
            ),
            call("TodoWrite", json!({"todos": todos})),
            Reply::tools(vec![
                ToolUse::new("Bash", json!({"command": "true"})),
                ToolUse::new("Bash", json!({"command": "exit 3"})),
                ToolUse::new("Bash", json!({"command": "sleep 5", "timeout": 300})),
            ]),
            Reply::text("ran\n```\nall good\n```"),
        ],
        vec![Reply::text("nothing to do")],
    ]);
    let client = McpClient::spawn(&mock).await;

    let first = client.start("plan and run", None).await;
    let id = first["session_id"].as_str().unwrap();
    let second = client.send(id, "anything else?").await;

    let requests = mock.requests();
    let (bad, err) = &results(&requests, 1)[0];
    assert!(*err && bad.contains("status is \"done\""), "{bad}");
    assert_eq!(
        results(&requests, 2)[0],
        (
            "Todo list saved (1 of 2 done):\n[x] Write the script\n[~] Run it".to_owned(),
            false
        )
    );
    assert_eq!(first["todos"], todos);
    // Kept for the session: the next turn's result still has it.
    assert_eq!(second["todos"], todos);

    let commands = first["commands"].as_array().expect("commands");
    let summary: Vec<(Value, Value, Value)> = commands
        .iter()
        .map(|c| {
            (
                c["command"].clone(),
                c["exit_code"].clone(),
                c["timed_out"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (json!("true"), json!(0), Value::Null),
            (json!("exit 3"), json!(3), Value::Null),
            (json!("sleep 5"), Value::Null, json!(true)),
        ]
    );
    assert!(commands[2]["duration_ms"].as_u64().unwrap() >= 300);
    assert_eq!(first["test_output"], "all good");
    assert_eq!(second["commands"], json!([]));
    client.shutdown().await;
}

/// Host processes whose command line contains `marker`.
fn processes_with(marker: &str) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|cmd| String::from_utf8_lossy(cmd).contains(marker))
        .count()
}

#[tokio::test]
async fn background_processes_end_with_the_turn() {
    let marker = format!("agentkimi-bg-{:016x}", rand_u64());
    let command = format!("sh -c 'echo started; sleep 300; echo {marker}'");
    let seen_running = Arc::new(AtomicUsize::new(0));
    let seen = seen_running.clone();
    let m = marker.clone();
    let mock = MockModel::start(move |request| match request.step_in_turn() {
        0 => call(
            "Bash",
            json!({"command": command, "run_in_background": true}),
        ),
        1 => {
            // Seen from the host while the turn runs (allowing a loaded
            // machine a moment to schedule the new process).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let mut n = processes_with(&m);
            while n == 0 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
                n = processes_with(&m);
            }
            seen.store(n, Ordering::SeqCst);
            Reply::text("started a server")
        }
        _ => Reply::unexpected("one turn of two steps"),
    });
    let client = McpClient::spawn(&mock).await;

    let result = client.start("start something long", None).await;

    assert_eq!(result["status"], "completed");
    assert!(
        seen_running.load(Ordering::SeqCst) >= 1,
        "the background command was running during the turn"
    );
    // The sandbox's PID namespace dies with the turn; give the kernel a
    // moment to reap.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while processes_with(&marker) > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        processes_with(&marker),
        0,
        "a background process survived the turn"
    );
    assert_eq!(result["commands"][0]["background"], true);
    client.shutdown().await;
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// A loopback HTTP server that answers every request with one HTML page.
fn page_server(body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) && line != "\r\n" {
                line.clear();
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: \
                 close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}/docs")
}

#[tokio::test]
async fn web_fetch_runs_in_the_sandbox_only_with_the_network_on() {
    let url = page_server("<html><body><h1>API</h1><p>Call <code>f()</code>.</p></body></html>");
    let mock = MockModel::sequence(vec![
        call("WebFetch", json!({"url": url, "prompt": "how to call it?"})),
        Reply::text("fetched"),
    ]);
    let client = McpClient::builder(&mock)
        .env("AGENTKIMI_NETWORK", "on")
        .spawn()
        .await;
    let result = client.start("read the docs", None).await;
    let requests = mock.requests();
    assert!(requests[0].tool_names().iter().any(|n| n == "WebFetch"));
    let (text, err) = &results(&requests, 1)[0];
    assert!(!err, "{text}");
    assert_eq!(
        text,
        &format!(
            "URL: {url}\nStatus: 200 OK\nContent-Type: text/html\nPrompt: how to call it?\n\n# \
             API\n\nCall `f()`."
        )
    );
    assert_eq!(result["status"], "completed");
    client.shutdown().await;

    // With the network off the tool is not offered at all.
    let mock = MockModel::sequence(vec![Reply::text("no web")]);
    let client = McpClient::spawn(&mock).await;
    client.start("read the docs", None).await;
    assert!(
        !mock.requests()[0]
            .tool_names()
            .iter()
            .any(|n| n == "WebFetch")
    );
    client.shutdown().await;
}
