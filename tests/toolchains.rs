//! End-to-end tests of real builds inside the real sandbox: the machine's
//! Rust toolchain mounted through `AGENTKIMI_RO_PATHS` runs `cargo test` on
//! a small crate, Python runs a project's tests, build output lands in the
//! session's cache instead of the worktree, and every credential planted in
//! a mounted tree is unreadable from inside.

mod support;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use support::{
    git::GitRepo,
    mcp::{McpClient, path_string},
    mock_model::{MockModel, Reply, Request, ToolUse},
};

fn bash(command: &str) -> Reply {
    Reply::tools(vec![ToolUse::new(
        "Bash",
        json!({"command": command, "timeout": 300_000}),
    )])
}

/// The output of the Bash call answered in request `step`.
fn output(requests: &[Request], step: usize) -> String {
    requests[step]
        .tool_results()
        .into_iter()
        .map(|r| r.content)
        .collect::<Vec<_>>()
        .join("\n")
}

/// The machine's rustup and cargo trees, where this test suite's own cargo
/// came from.
fn rust_toolchain() -> (PathBuf, PathBuf) {
    let home = PathBuf::from(std::env::var("HOME").expect("HOME is set"));
    let cargo = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| home.join(".cargo"));
    let rustup = std::env::var("RUSTUP_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| home.join(".rustup"));
    assert!(
        cargo.join("bin/cargo").exists() && rustup.is_dir(),
        "this test mounts the rustup toolchain that runs it; none at {} and {}",
        cargo.display(),
        rustup.display()
    );
    (cargo, rustup)
}

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

#[tokio::test]
async fn cargo_test_and_python_tests_pass_with_mounted_toolchains() {
    let (cargo, rustup) = rust_toolchain();
    let repo = GitRepo::new();
    write(
        repo.path(),
        "Cargo.toml",
        "[package]\nname = \"tiny\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    );
    write(
        repo.path(),
        "src/lib.rs",
        "pub fn add(a: u32, b: u32) -> u32 { a + b }\n\n#[cfg(test)]\nmod tests {\n    \
         #[test]\n    fn adds() { assert_eq!(super::add(2, 2), 4); }\n}\n",
    );
    write(
        repo.path(),
        "py/test_calc.py",
        "import unittest\n\nclass Calc(unittest.TestCase):\n    def test_mul(self):\n        \
         self.assertEqual(6 * 7, 42)\n\nif __name__ == '__main__':\n    unittest.main()\n",
    );
    repo.git(&["add", "."]);
    repo.git(&["commit", "-q", "-m", "a crate and a python project"]);

    let mock = MockModel::sequence(vec![
        bash("cargo test --offline 2>&1; echo EXIT=$?"),
        // pytest when the machine has it, the standard runner otherwise:
        // both discover test_*.py.
        bash(
            "cd py && if python3 -m pytest --version >/dev/null 2>&1; then python3 -m pytest \
             -q 2>&1; else python3 -m unittest -v 2>&1; fi; echo EXIT=$?",
        ),
        bash("echo \"$PATH|$CARGO_HOME|$CARGO_TARGET_DIR|$RUSTUP_HOME\""),
        Reply::text("tested"),
    ]);
    let ro = format!("{}:{}", path_string(&cargo), path_string(&rustup));
    let client = McpClient::builder(&mock)
        .env("AGENTKIMI_RO_PATHS", &ro)
        .spawn()
        .await;
    let result = client.start("run the tests", Some(repo.path())).await;
    let requests = mock.requests();

    let cargo_out = output(&requests, 1);
    assert!(
        cargo_out.contains("test tests::adds ... ok") && cargo_out.contains("EXIT=0"),
        "{cargo_out}"
    );
    let py_out = output(&requests, 2);
    assert!(
        py_out.contains("EXIT=0") && (py_out.contains("1 passed") || py_out.contains("\nOK")),
        "{py_out}"
    );
    let env = output(&requests, 3);
    assert!(
        env.contains(&format!("{}/bin:", cargo.display()))
            && env.contains("|/cache/cargo|/cache/target|")
            && env.contains(&rustup.display().to_string()),
        "{env}"
    );

    // Build output went to the session's cache, not into the worktree.
    let id = result["session_id"].as_str().unwrap();
    let wt = PathBuf::from(result["worktree"].as_str().unwrap());
    assert!(!wt.join("target").exists(), "target/ in the worktree");
    let key = wt.file_name().unwrap();
    let cache = client.home().join("caches").join(key);
    assert!(
        cache.join("target/debug").is_dir(),
        "no build output in {} (session {id})",
        cache.display()
    );
    assert_eq!(result["status"], "completed", "{result}");
    client.shutdown().await;
}

/// Where each masked credential is planted under the mounted tree, with
/// the secret it holds.
const PLANTED: &[&str] = &[
    ".cargo/credentials.toml",
    ".cargo/credentials",
    ".npmrc",
    ".yarnrc",
    ".yarnrc.yml",
    ".pypirc",
    ".netrc",
    ".docker/config.json",
    ".config/gh/hosts.yml",
    ".git-credentials",
    ".ssh/id_ed25519",
    ".aws/credentials",
    // Depth two below the mounted root, in a project-like subtree.
    "tools/.npmrc",
    "tools/sub/.pypirc",
];

#[tokio::test]
async fn credentials_in_mounted_trees_are_unreadable() {
    let tree = tempfile::Builder::new()
        .prefix("agentkimi-toolchain-")
        .tempdir()
        .unwrap();
    let root = std::fs::canonicalize(tree.path()).unwrap();
    for (i, rel) in PLANTED.iter().enumerate() {
        write(&root, rel, &format!("SECRET-{i}-planted\n"));
    }
    write(&root, "bin/tool", "#!/bin/sh\necho visible-tool\n");
    write(&root, "tools/readme.txt", "VISIBLE-README\n");

    // One command reads every planted path, each result on its own line.
    let mut script = String::new();
    for rel in PLANTED {
        let p = root.join(rel);
        script.push_str(&format!(
            "printf '%s => ' '{rel}'; cat '{}' 2>&1 | head -c 200; echo; ",
            p.display()
        ));
    }
    script.push_str(&format!(
        "cat '{}'; ls -A '{}' 2>/dev/null | wc -l; ls -A '{}' 2>/dev/null | wc -l; cat '{}' 2>&1",
        root.join("tools/readme.txt").display(),
        root.join(".ssh").display(),
        root.join(".config/gh").display(),
        root.join("bin/tool").display(),
    ));
    let mock = MockModel::sequence(vec![bash(&script), Reply::text("looked")]);
    let client = McpClient::builder(&mock)
        .env("AGENTKIMI_RO_PATHS", &path_string(&root))
        .spawn()
        .await;
    let result: Value = client.start("look around", None).await;
    let out = output(&mock.requests(), 1);

    for (i, rel) in PLANTED.iter().enumerate() {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{rel} => ")))
            .unwrap_or_else(|| panic!("no line for {rel}: {out}"));
        assert!(
            !line.contains(&format!("SECRET-{i}")),
            "{rel} readable inside the sandbox: {line}"
        );
    }
    assert!(!out.contains("SECRET-"), "{out}");
    // The rest of the tree is there, and the masked directories are empty.
    assert!(out.contains("VISIBLE-README"), "{out}");
    assert!(out.contains("\n0\n0\n"), "masked dirs not empty: {out}");
    assert!(out.contains("#!/bin/sh"), "{out}");
    // The host files are untouched.
    assert_eq!(
        std::fs::read_to_string(root.join(".npmrc")).unwrap(),
        "SECRET-2-planted\n"
    );
    assert_eq!(result["status"], "completed", "{result}");
    client.shutdown().await;
}
