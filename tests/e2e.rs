//! End-to-end tests: the real `agentkimi serve` binary driven over MCP stdio
//! by the official SDK's client, with real bubblewrap and real git, and the
//! scripted mock model playing Kimi.
//!
//! Each test states one promise the product makes to its users and checks
//! it by its effects: files in worktrees, branches and commits in the user's
//! repository, and what the model was (and was not) sent. The harness lives
//! in `tests/support`; its self-tests run in this binary too.

mod support;

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde_json::{Value, json};
use support::{
    git::{GitRepo, README},
    mcp::{McpClient, expect_error, fresh_api_key, path_string, structured, text_of},
    mock_model::{MockModel, Reply, Request, ToolUse},
};

// ---------------------------------------------------------------------------
// Helpers for reading results and conversations.

/// Field `name` of `value` as a string, or a panic that shows `value`.
fn str_field<'a>(value: &'a Value, name: &str) -> &'a str {
    value[name]
        .as_str()
        .unwrap_or_else(|| panic!("`{name}` is not a string in {value:#}"))
}

/// Checks the facts every completed turn reports and returns the session id.
fn assert_completed_turn(result: &Value, turn: u64) -> String {
    let id = str_field(result, "session_id").to_owned();
    assert!(id.starts_with("kimi-"), "session id {id:?}");
    assert_eq!(result["turn"], turn, "{result:#}");
    assert_eq!(result["status"], "completed", "{result:#}");
    assert_eq!(result["branch"], format!("agentkimi/{id}"), "{result:#}");
    assert_eq!(result["diff_truncated"], false, "{result:#}");
    assert!(result["diff_path"].is_null(), "{result:#}");
    assert!(
        result["note"].is_null(),
        "a completed turn has no note: {result:#}"
    );
    id
}

/// The worktree a result names.
fn worktree_of(result: &Value) -> PathBuf {
    PathBuf::from(str_field(result, "worktree"))
}

/// The `files_changed` entry for `path`.
fn file_change<'a>(result: &'a Value, path: &str) -> &'a Value {
    result["files_changed"]
        .as_array()
        .and_then(|files| files.iter().find(|file| file["path"] == path))
        .unwrap_or_else(|| panic!("{path} is not in files_changed: {result:#}"))
}

/// The `tool_calls` of a result as (name, ok) pairs.
fn tool_calls(result: &Value) -> Vec<(String, bool)> {
    result["tool_calls"]
        .as_array()
        .unwrap_or_else(|| panic!("no tool_calls array in {result:#}"))
        .iter()
        .map(|call| {
            let name = call["name"].as_str().unwrap_or("").to_owned();
            (name, call["ok"] == true)
        })
        .collect()
}

/// The id the mock gave the first tool call of its `index`th reply.
fn sent_tool_id(mock: &MockModel, index: usize) -> String {
    let responses = mock.responses();
    str_field(&responses[index]["content"][0], "id").to_owned()
}

/// One block a conversation must contain.
struct Expect {
    what: String,
    role: &'static str,
    matches: Box<dyn Fn(&Value) -> bool>,
}

fn user_text(contains: &str) -> Expect {
    let needle = contains.to_owned();
    Expect {
        what: format!("a user text containing {contains:?}"),
        role: "user",
        matches: Box::new(move |block| {
            block["type"] == "text" && block["text"].as_str().is_some_and(|t| t.contains(&needle))
        }),
    }
}

fn assistant_text(text: &str) -> Expect {
    let text = text.to_owned();
    Expect {
        what: format!("the assistant text {text:?}"),
        role: "assistant",
        matches: Box::new(move |block| block["type"] == "text" && block["text"] == text.as_str()),
    }
}

fn tool_use(id: &str, name: &str, input: Value) -> Expect {
    let (id, name) = (id.to_owned(), name.to_owned());
    Expect {
        what: format!("a tool_use {name} with id {id:?} and input {input}"),
        role: "assistant",
        matches: Box::new(move |block| {
            block["type"] == "tool_use"
                && block["id"] == id.as_str()
                && block["name"] == name.as_str()
                && block["input"] == input
        }),
    }
}

fn tool_result(id: &str) -> Expect {
    let id = id.to_owned();
    Expect {
        what: format!("a tool_result for {id:?}"),
        role: "user",
        matches: Box::new(move |block| {
            block["type"] == "tool_result" && block["tool_use_id"] == id.as_str()
        }),
    }
}

/// Checks that `request`'s conversation holds the expected blocks in this
/// order (other blocks may sit between them).
fn assert_in_order(request: &Request, expected: Vec<Expect>) {
    let blocks = request.blocks();
    let mut from = 0;
    for expect in expected {
        let found = blocks[from..]
            .iter()
            .position(|block| block.role == expect.role && (expect.matches)(&block.block));
        match found {
            Some(offset) => from += offset + 1,
            None => panic!(
                "the request lacks {} after block {from}; its messages:\n{:#}",
                expect.what,
                Value::Array(request.messages().to_vec())
            ),
        }
    }
}

/// Paths of the files under `dir` (recursively) whose bytes contain
/// `needle`. Symlinks are not followed.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            found.extend(files_containing(&path, needle));
        } else if kind.is_file() {
            let bytes = fs::read(&path).unwrap_or_default();
            if bytes
                .windows(needle.len())
                .any(|window| window == needle.as_bytes())
            {
                found.push(path);
            }
        }
    }
    found
}

fn write_hello() -> ToolUse {
    ToolUse::new(
        "Write",
        json!({"file_path": "hello.txt", "content": "hello\n"}),
    )
}

// ---------------------------------------------------------------------------
// 1. The tool list.

#[tokio::test]
async fn list_tools_shows_the_three_tools_with_schemas() {
    let mock = MockModel::start(|_| Reply::unexpected("listing tools calls no model"));
    let client = McpClient::spawn(&mock).await;

    let tools = client.list_tools().await;

    let required = [
        (
            "agentkimi_start",
            &["prompt"][..],
            &["prompt", "workdir"][..],
        ),
        (
            "agentkimi_send",
            &["session_id", "message"][..],
            &["session_id", "message"][..],
        ),
        ("agentkimi_end", &["session_id"][..], &["session_id"][..]),
    ];
    for (name, must, properties) in required {
        let tool = tools
            .iter()
            .find(|tool| tool.name == name)
            .unwrap_or_else(|| panic!("{name} is not listed"));
        let input = Value::Object((*tool.input_schema).clone());
        assert_eq!(input["type"], "object", "{name} inputSchema: {input:#}");
        for property in properties {
            assert!(
                input["properties"].get(*property).is_some(),
                "{name} lacks {property}: {input:#}"
            );
        }
        let listed: Vec<&str> = input["required"]
            .as_array()
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for argument in must {
            assert!(
                listed.contains(argument),
                "{name} must require {argument}: {input:#}"
            );
        }
        let output = tool
            .output_schema
            .as_ref()
            .unwrap_or_else(|| panic!("{name} has no outputSchema"));
        assert_eq!(
            output.get("type"),
            Some(&json!("object")),
            "{name} outputSchema"
        );
        assert!(
            tool.description.as_deref().is_some_and(|d| !d.is_empty()),
            "{name} description"
        );
    }
    assert!(
        mock.requests().is_empty(),
        "listing tools must not call the model"
    );

    client.shutdown().await;
}

// ---------------------------------------------------------------------------
// 2. A throwaway session: no workdir.

#[tokio::test]
async fn start_without_workdir_writes_a_file_and_reports_it() {
    let summary = "Created hello.txt with a greeting.";
    let mock = MockModel::sequence(vec![
        Reply::tools(vec![write_hello()]),
        Reply::text(summary),
    ]);
    let client = McpClient::spawn(&mock).await;
    let prompt = "Create hello.txt containing the word hello.";

    let call = client
        .call("agentkimi_start", json!({"prompt": prompt}))
        .await;

    let result = structured(&call, "agentkimi_start");
    let id = assert_completed_turn(&result, 1);
    assert_eq!(result["summary"], summary);
    assert_eq!(result["steps"], 2);
    let diff = str_field(&result, "diff");
    assert!(diff.contains("hello.txt"), "{diff}");
    assert!(diff.contains("+hello"), "{diff}");
    let change = file_change(&result, "hello.txt");
    assert_eq!(change["additions"], 1, "{change}");
    assert_eq!(change["deletions"], 0, "{change}");
    assert_eq!(
        result["files_changed"].as_array().map(Vec::len),
        Some(1),
        "{result:#}"
    );
    let calls = result["tool_calls"].as_array().expect("tool_calls");
    assert_eq!(calls.len(), 1, "{result:#}");
    assert_eq!(calls[0]["name"], "Write");
    assert_eq!(calls[0]["ok"], true);
    assert!(calls[0]["error"].is_null());
    assert!(
        str_field(&calls[0], "target").ends_with("hello.txt"),
        "{}",
        calls[0]
    );
    // A turn's usage is the sum over its steps; the mock reports
    // 100 in, 20 out and 40 cache-read tokens per step.
    assert_eq!(result["usage"]["input_tokens"], 200, "{result:#}");
    assert_eq!(result["usage"]["output_tokens"], 40, "{result:#}");
    assert_eq!(result["usage"]["cache_read_input_tokens"], 80, "{result:#}");

    let worktree = worktree_of(&result);
    assert!(
        worktree.starts_with(client.home()),
        "{} is outside AGENTKIMI_HOME",
        worktree.display()
    );
    assert_eq!(
        fs::read_to_string(worktree.join("hello.txt")).unwrap(),
        "hello\n"
    );
    let text = text_of(&call);
    assert!(
        text.contains(&id) && text.contains(summary),
        "the text carries the facts too: {text}"
    );

    let requests = mock.requests();
    assert_eq!(requests.len(), 2);
    assert!(
        requests[0]
            .last_user_text()
            .unwrap_or_default()
            .contains(prompt)
    );
    for tool in ["Read", "Write", "Edit", "Glob", "Grep", "Bash"] {
        assert!(
            requests[0].tool_names().iter().any(|name| name == tool),
            "{tool} is not offered"
        );
    }
    let results = requests[1].tool_results();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].tool_use_id, sent_tool_id(&mock, 0));
    assert!(!results[0].is_error, "{}", results[0].content);
    assert_eq!(
        mock.header_values("x-api-key"),
        [client.api_key(), client.api_key()]
    );

    client.shutdown().await;
}

// ---------------------------------------------------------------------------
// 3. A session on the user's repository works in a linked worktree.

#[tokio::test]
async fn start_in_a_repository_leaves_the_users_working_tree_alone() {
    let repo = GitRepo::new();
    let base = repo.head();
    let mock = MockModel::sequence(vec![
        Reply::tools(vec![ToolUse::new(
            "Write",
            json!({"file_path": "notes.txt", "content": "agent notes\n"}),
        )]),
        Reply::text("Added notes.txt."),
    ]);
    let client = McpClient::spawn(&mock).await;

    let result = client.start("Add notes.txt", Some(repo.path())).await;

    let id = assert_completed_turn(&result, 1);
    let branch = format!("agentkimi/{id}");
    assert_eq!(repo.status(), "", "the user's working tree is untouched");
    assert_eq!(repo.head(), base, "the user's HEAD did not move");
    assert_eq!(repo.git(&["branch", "--show-current"]).trim(), "main");
    assert!(!repo.path().join("notes.txt").exists());
    assert!(
        repo.has_branch(&branch),
        "{branch} exists in the user's repository"
    );

    let worktree = worktree_of(&result);
    assert!(
        worktree.starts_with(client.home().join("worktrees")),
        "{}",
        worktree.display()
    );
    assert_eq!(
        fs::read_to_string(worktree.join("notes.txt")).unwrap(),
        "agent notes\n"
    );
    assert_eq!(
        fs::read_to_string(worktree.join("README.md")).unwrap(),
        README
    );
    let worktrees = repo.git(&["worktree", "list", "--porcelain"]);
    assert!(worktrees.contains(&path_string(&worktree)), "{worktrees}");

    let diff = str_field(&result, "diff");
    assert!(diff.contains("+agent notes"), "{diff}");
    assert!(
        !diff.contains("README.md"),
        "untouched files are not in the diff: {diff}"
    );
    assert_eq!(
        result["files_changed"].as_array().map(Vec::len),
        Some(1),
        "{result:#}"
    );
    file_change(&result, "notes.txt");
    // The host commits every turn on the session branch.
    assert_eq!(
        repo.show_file(&branch, "notes.txt").as_deref(),
        Some("agent notes\n")
    );

    client.shutdown().await;
}

// ---------------------------------------------------------------------------
// 4. A follow-up turn continues the same conversation.

#[tokio::test]
async fn send_continues_the_session_with_the_whole_conversation() {
    let first_prompt = "Write hello.txt with the word hello.";
    let first_summary = "Wrote hello.txt.";
    let second_message = "Now make it say hello, world.";
    let edit =
        json!({"file_path": "hello.txt", "old_string": "hello", "new_string": "hello, world"});
    let mock = MockModel::turns(vec![
        vec![
            Reply::tools(vec![write_hello()]),
            Reply::text(first_summary),
        ],
        vec![
            Reply::tools(vec![ToolUse::new("Edit", edit)]),
            Reply::text("Edited hello.txt."),
        ],
    ]);
    let client = McpClient::spawn(&mock).await;
    let first = client.start(first_prompt, None).await;
    let id = assert_completed_turn(&first, 1);

    let second = client.send(&id, second_message).await;

    assert_eq!(assert_completed_turn(&second, 2), id);
    assert_eq!(second["summary"], "Edited hello.txt.");
    assert_eq!(worktree_of(&second), worktree_of(&first));
    assert_eq!(
        fs::read_to_string(worktree_of(&second).join("hello.txt")).unwrap(),
        "hello, world\n"
    );
    let diff = str_field(&second, "diff");
    assert!(
        diff.contains("+hello, world"),
        "the diff runs from the base commit: {diff}"
    );
    assert_eq!(
        tool_calls(&second),
        [("Edit".to_owned(), true)],
        "tool calls of this turn only"
    );

    let requests = mock.requests();
    assert_eq!(requests.len(), 4);
    let opening = &requests[2];
    assert_eq!((opening.turn_index(), opening.step_in_turn()), (1, 0));
    let write_id = sent_tool_id(&mock, 0);
    assert_in_order(
        opening,
        vec![
            user_text(first_prompt),
            tool_use(
                &write_id,
                "Write",
                json!({"file_path": "hello.txt", "content": "hello\n"}),
            ),
            tool_result(&write_id),
            assistant_text(first_summary),
            user_text(second_message),
        ],
    );

    client.shutdown().await;
}

// ---------------------------------------------------------------------------
// 5. Sessions survive a server restart.

#[tokio::test]
async fn send_after_a_restart_continues_from_the_stored_session() {
    let first_prompt = "Write hello.txt with the word hello.";
    let first_summary = "Wrote hello.txt.";
    let second_message = "What does hello.txt say?";
    let mock = MockModel::turns(vec![
        vec![
            Reply::tools(vec![write_hello()]),
            Reply::text(first_summary),
        ],
        vec![
            Reply::tools(vec![ToolUse::new(
                "Read",
                json!({"file_path": "hello.txt"}),
            )]),
            Reply::text("It says hello."),
        ],
    ]);
    let mut client = McpClient::spawn(&mock).await;
    let first = client.start(first_prompt, None).await;
    let id = assert_completed_turn(&first, 1);
    let first_pid = client.pid();

    client.restart().await;
    let second = client.send(&id, second_message).await;

    assert_ne!(client.pid(), first_pid, "a new server process answered");
    assert_eq!(assert_completed_turn(&second, 2), id);
    assert_eq!(second["summary"], "It says hello.");
    assert!(str_field(&second, "diff").contains("+hello"));

    let requests = mock.requests();
    assert_eq!(requests.len(), 4);
    let write_id = sent_tool_id(&mock, 0);
    assert_in_order(
        &requests[2],
        vec![
            user_text(first_prompt),
            tool_use(
                &write_id,
                "Write",
                json!({"file_path": "hello.txt", "content": "hello\n"}),
            ),
            tool_result(&write_id),
            assistant_text(first_summary),
            user_text(second_message),
        ],
    );
    let read = requests[3].tool_results();
    assert_eq!(read.len(), 1);
    assert_eq!(read[0].tool_use_id, sent_tool_id(&mock, 2));
    assert!(
        read[0].content.contains("hello"),
        "the worktree survived: {}",
        read[0].content
    );

    client.shutdown().await;
}

// ---------------------------------------------------------------------------
// 6. Ending a session removes the worktree and keeps the work.

#[tokio::test]
async fn end_removes_the_worktree_and_keeps_the_branch() {
    let repo = GitRepo::new();
    let mock = MockModel::sequence(vec![
        Reply::tools(vec![ToolUse::new(
            "Write",
            json!({"file_path": "feature.txt", "content": "feature\n"}),
        )]),
        Reply::text("Added feature.txt."),
    ]);
    let client = McpClient::spawn(&mock).await;
    let result = client.start("Add feature.txt", Some(repo.path())).await;
    let id = assert_completed_turn(&result, 1);
    let branch = format!("agentkimi/{id}");
    let worktree = worktree_of(&result);
    assert!(worktree.exists());

    let ended = client.end(&id).await;

    assert_eq!(ended["session_id"], id.as_str());
    assert_eq!(ended["ended"], true);
    assert_eq!(ended["branch"], branch.as_str());
    assert_eq!(ended["worktree_removed"], true);
    assert!(!str_field(&ended, "message").is_empty());
    assert!(!worktree.exists(), "{} is still there", worktree.display());

    assert!(repo.has_branch(&branch));
    let range = format!("main..{branch}");
    let ahead: u64 = repo
        .git(&["rev-list", "--count", &range])
        .trim()
        .parse()
        .unwrap();
    assert!(ahead >= 1, "the branch holds the session's commits");
    assert_eq!(ended["commits"], ahead, "{ended:#}");
    let subjects = repo.log_subjects(&branch);
    assert_eq!(
        subjects.last().map(String::as_str),
        Some("Fixture: initial commit")
    );
    assert_eq!(
        repo.show_file(&branch, "feature.txt").as_deref(),
        Some("feature\n")
    );
    assert_eq!(repo.status(), "", "the user's working tree is untouched");
    let worktrees = repo.git(&["worktree", "list", "--porcelain"]);
    assert!(!worktrees.contains(&path_string(&worktree)), "{worktrees}");

    let after = client
        .call(
            "agentkimi_send",
            json!({"session_id": id, "message": "one more thing"}),
        )
        .await;
    expect_error(&after, "send to an ended session");

    client.shutdown().await;
}

// ---------------------------------------------------------------------------
// 7. The model can write a test and run it.

#[tokio::test]
async fn the_model_writes_a_test_and_runs_it_with_bash() {
    let test_script = "#!/bin/sh\nset -e\nsum=$((2 + 3))\n\
        if [ \"$sum\" -eq 5 ]; then\n  echo \"test_add: PASS (2 + 3 = $sum)\"\n\
        else\n  echo \"test_add: FAIL (2 + 3 = $sum)\"\n  exit 1\nfi\n";
    let mock = MockModel::sequence(vec![
        Reply::tools(vec![ToolUse::new(
            "Write",
            json!({"file_path": "test_add.sh", "content": test_script}),
        )]),
        Reply::tools(vec![
            ToolUse::new(
                "Bash",
                json!({"command": "sh test_add.sh; echo \"exit code: $?\""}),
            )
            .with_id("toolu_run_test"),
        ])
        .with_text("Running the test."),
        Reply::text("The test passes."),
    ]);
    let client = McpClient::spawn(&mock).await;

    let result = client
        .start("Write a test for 2 + 3 and run it.", None)
        .await;

    assert_completed_turn(&result, 1);
    assert_eq!(
        tool_calls(&result),
        [("Write".to_owned(), true), ("Bash".to_owned(), true)]
    );
    file_change(&result, "test_add.sh");
    let requests = mock.requests();
    assert_eq!(requests.len(), 3);
    let run = requests[2]
        .tool_results()
        .into_iter()
        .find(|result| result.tool_use_id == "toolu_run_test")
        .expect("the Bash result answers the Bash call");
    assert!(!run.is_error, "{}", run.content);
    assert!(
        run.content.contains("test_add: PASS (2 + 3 = 5)"),
        "{}",
        run.content
    );
    assert!(run.content.contains("exit code: 0"), "{}", run.content);

    client.shutdown().await;
}

// ---------------------------------------------------------------------------
// 8. Bad arguments are tool errors, and the server keeps serving.

#[tokio::test]
async fn bad_arguments_are_error_results_and_the_server_keeps_serving() {
    let mock = MockModel::start(|_| Reply::unexpected("no bad call may reach the model"));
    let denied = GitRepo::new();
    let scratch = tempfile::tempdir().unwrap();
    let plain_dir = fs::canonicalize(scratch.path()).unwrap();
    let a_file = plain_dir.join("file.txt");
    fs::write(&a_file, "not a directory\n").unwrap();
    let missing = plain_dir.join("does-not-exist");
    let client = McpClient::builder(&mock)
        .env("AGENTKIMI_DENY_PATHS", &path_string(denied.path()))
        .spawn()
        .await;
    let workdir_case = |what: &'static str, dir: &Path| {
        let dir = path_string(dir);
        let args = json!({"prompt": "do something", "workdir": dir});
        (what, "agentkimi_start", args, dir)
    };
    let cases = [
        (
            "missing prompt",
            "agentkimi_start",
            json!({}),
            "prompt".to_owned(),
        ),
        (
            "empty prompt",
            "agentkimi_start",
            json!({"prompt": ""}),
            "prompt".to_owned(),
        ),
        (
            "prompt of the wrong type",
            "agentkimi_start",
            json!({"prompt": 42}),
            "prompt".to_owned(),
        ),
        workdir_case("a workdir that does not exist", &missing),
        workdir_case("a workdir that is a file", &a_file),
        workdir_case("a workdir outside any git repository", &plain_dir),
        workdir_case("a workdir under AGENTKIMI_DENY_PATHS", denied.path()),
        (
            "send to an unknown session",
            "agentkimi_send",
            json!({"session_id": "kimi-doesnotexist", "message": "hi"}),
            "kimi-doesnotexist".to_owned(),
        ),
        (
            "end of an unknown session",
            "agentkimi_end",
            json!({"session_id": "kimi-doesnotexist"}),
            "kimi-doesnotexist".to_owned(),
        ),
    ];

    for (what, tool, args, named) in cases {
        let result = client.call(tool, args).await;
        let message = expect_error(&result, what);
        assert!(
            message.contains(&named),
            "{what}: the message should name {named:?}, got: {message}"
        );
    }

    let tools = client.list_tools().await;
    assert!(
        tools.iter().any(|tool| tool.name == "agentkimi_start"),
        "still serving"
    );
    assert!(mock.requests().is_empty(), "no bad call reached the model");
    let worktrees = client.home().join("worktrees");
    let left = fs::read_dir(&worktrees).map(|dir| dir.count()).unwrap_or(0);
    assert_eq!(
        left,
        0,
        "failed starts leave no worktree in {}",
        worktrees.display()
    );
    assert_eq!(denied.git(&["branch", "--list", "agentkimi/*"]), "");
    assert_eq!(denied.status(), "");

    client.shutdown().await;
}

// ---------------------------------------------------------------------------
// 9. The key never reaches the sandbox.

#[tokio::test]
async fn the_key_cannot_be_read_from_inside_the_sandbox() {
    let key = fresh_api_key();
    let prefix = key[..6].to_owned();
    let probes = [
        "env".to_owned(),
        "cat /proc/*/environ 2>&1 | tr '\\0' '\\n'".to_owned(),
        "cat /proc/*/cmdline 2>&1 | tr '\\0' ' '".to_owned(),
        format!("grep -r {prefix} /proc/*/environ /proc/*/cmdline 2>&1; echo \"grep exit: $?\""),
        format!(
            "ls -la / \"$HOME\" /tmp 2>&1; cat \"$HOME\"/.* 2>&1 | head -n 50; \
             grep -rs {prefix} \"$HOME\" /tmp /etc 2>&1; echo \"search exit: $?\""
        ),
    ];
    let mut replies: Vec<Reply> = probes
        .iter()
        .map(|command| Reply::tools(vec![ToolUse::new("Bash", json!({"command": command}))]))
        .collect();
    replies.push(Reply::text("Looked around."));
    let mock = MockModel::sequence(replies);
    // The gate refuses reads of /proc/*/environ; this test is about the
    // sandbox, so the gate is off and the namespace alone must hold.
    let client = McpClient::builder(&mock)
        .api_key(&key)
        .env("AGENTKIMI_UNSAFE_DISABLE_GATE_FOR_TESTS", "1")
        .spawn()
        .await;

    let result = client.start("Inspect your environment.", None).await;

    assert_completed_turn(&result, 1);
    let requests = mock.requests();
    assert_eq!(requests.len(), probes.len() + 1);
    let outputs: Vec<String> = requests[1..]
        .iter()
        .map(|request| {
            let results = request.tool_results();
            assert_eq!(results.len(), 1, "one result per probe");
            results[0].content.clone()
        })
        .collect();
    // The probes really ran; otherwise the absence of the key proves nothing.
    assert!(
        outputs[0].contains("PATH="),
        "env printed nothing useful: {}",
        outputs[0]
    );
    assert!(
        outputs[1].contains('='),
        "no environ was readable: {}",
        outputs[1]
    );
    assert!(!outputs[2].trim().is_empty(), "no cmdline was readable");
    assert!(outputs[3].contains("grep exit:"), "{}", outputs[3]);
    for (probe, output) in probes.iter().zip(&outputs) {
        assert!(
            !output.contains(&key),
            "`{probe}` revealed the key:\n{output}"
        );
    }
    for request in &requests {
        assert!(
            !request.raw_body.contains(&key),
            "a request body carries the key"
        );
        // The key goes in the two standard auth headers (gateways differ in
        // which they read) and nowhere else.
        assert_eq!(request.header("x-api-key"), Some(key.as_str()));
        let bearer = format!("Bearer {key}");
        assert_eq!(request.header("authorization"), Some(bearer.as_str()));
        for (name, value) in &request.headers {
            if name != "x-api-key" && name != "authorization" {
                assert!(!value.contains(&key), "header {name} carries the key");
            }
        }
    }
    let log = client.server_log();
    assert!(!log.contains(&key), "the server logged the key");
    let leaks = files_containing(client.home(), &key);
    assert!(leaks.is_empty(), "the key is stored in {leaks:?}");

    client.shutdown().await;
}

// ---------------------------------------------------------------------------
// 10. Thinking blocks and Kimi-style tool ids go back verbatim.

#[tokio::test]
async fn thinking_blocks_and_tool_ids_round_trip_verbatim() {
    let thinking = "The user wants thought.txt; the Write tool creates it.";
    let signature = "sig-mock-0123456789abcdef";
    let input = json!({"file_path": "thought.txt", "content": "thought through\n"});
    let mock = MockModel::sequence(vec![
        Reply::tools(vec![
            ToolUse::new("Write", input.clone()).with_id("functions.Write:0"),
        ])
        .with_thinking(thinking, signature),
        Reply::text("Wrote thought.txt."),
    ]);
    let client = McpClient::spawn(&mock).await;

    let result = client.start("Create thought.txt.", None).await;

    assert_completed_turn(&result, 1);
    assert_eq!(tool_calls(&result), [("Write".to_owned(), true)]);
    assert_eq!(
        fs::read_to_string(worktree_of(&result).join("thought.txt")).unwrap(),
        "thought through\n"
    );
    let requests = mock.requests();
    assert_eq!(requests.len(), 2);
    let second = &requests[1];
    let assistant = second
        .messages()
        .iter()
        .rev()
        .find(|message| message["role"] == "assistant")
        .expect("the second request replays the assistant message");
    let content = assistant["content"]
        .as_array()
        .expect("assistant content blocks");
    assert_eq!(
        content[0],
        json!({"type": "thinking", "thinking": thinking, "signature": signature}),
        "the thinking block comes first and unchanged: {assistant:#}"
    );
    let call = content
        .iter()
        .find(|block| block["type"] == "tool_use")
        .expect("the tool_use block is replayed");
    assert_eq!(call["id"], "functions.Write:0");
    assert_eq!(call["input"], input);
    let results = second.tool_results();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].tool_use_id, "functions.Write:0");
    assert!(!results[0].is_error, "{}", results[0].content);

    client.shutdown().await;
}
