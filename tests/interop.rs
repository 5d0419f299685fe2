//! Interoperability with the official Python MCP SDK: the scripted mock
//! model runs here, and `tests/interop/sdk_client.py` drives the real
//! `agentkimi serve` over stdio with the Python SDK's client, once for each
//! protocol version clients negotiate today.
//!
//! The Python interpreter is `$AGENTKIMI_PYTHON`, or `python3`. When it
//! cannot import `mcp` the test is skipped with a message, unless
//! `AGENTKIMI_REQUIRE_INTEROP=1` (set by `.ci/run`), where that is a failure.

mod support;

use std::{process::Command, time::Duration};

use serde_json::{Value, json};
use support::mock_model::{MockModel, Reply, ToolUse};

#[test]
fn python_sdk_drives_every_tool_on_both_protocol_versions() {
    let python = std::env::var("AGENTKIMI_PYTHON").unwrap_or_else(|_| "python3".into());
    let has_sdk = Command::new(&python)
        .args(["-c", "import mcp"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_sdk {
        let advice = format!(
            "{python} cannot import the MCP SDK; install it with \
             `{python} -m pip install mcp==2.3.0` or point AGENTKIMI_PYTHON at a Python that has it"
        );
        assert!(
            std::env::var("AGENTKIMI_REQUIRE_INTEROP").as_deref() != Ok("1"),
            "{advice}"
        );
        eprintln!("skipped: {advice}");
        return;
    }

    // Turn 1 writes a file slowly enough that the status sees it running;
    // turn 2 only answers.
    let mock = MockModel::turns(vec![
        vec![
            Reply::tools(vec![ToolUse::new(
                "Write",
                json!({"file_path": "interop.txt", "content": "from python\n"}),
            )])
            .delay(Duration::from_millis(800)),
            Reply::text("Wrote interop.txt."),
        ],
        vec![Reply::text("Nothing more to do.")],
    ]);
    let state = tempfile::tempdir().expect("create a state directory");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/sdk_client.py");
    let out = Command::new(&python)
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_agentkimi"))
        .arg(mock.base_url())
        .arg(state.path())
        .args(["2025-06-18", "2025-11-25"])
        .output()
        .expect("run the Python client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the Python SDK client failed ({}):\n{stderr}\n{stdout}",
        out.status
    );

    let report: Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{stdout}"));
    let versions: Vec<&str> = report
        .as_array()
        .expect("a list of reports")
        .iter()
        .filter_map(|r| r["version"].as_str())
        .collect();
    assert_eq!(versions, ["2025-06-18", "2025-11-25"]);
    eprintln!("{report:#}");
    // Two sessions of two turns each, three model calls per session.
    assert_eq!(mock.requests().len(), 6);
}
