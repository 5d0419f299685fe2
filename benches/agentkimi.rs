//! The agentkimi benchmark: each figure measured side by side with its
//! baseline in the same run, and printed as a ratio against its target.
//!
//! Absolute times on a shared machine drift from run to run; a ratio against
//! a baseline measured a moment earlier on the same machine does not, so
//! every row pairs our figure with the thing it should be compared to: the
//! bare bwrap spawn (the floor of anything sandboxed), the idle server, one
//! session, or the git and rg command lines doing the same work.
//!
//! Run it with `bash bench/run.sh` (which builds in release mode, installs
//! what is missing and generates the large repository), or directly with
//! `cargo bench --bench agentkimi -- [turn] [tools] [memory] [concurrency]
//! [scale]`; no section named means all of them. The scale section needs
//! `AGENTKIMI_BENCH_REPO` pointing at a repository made by
//! `bench/gen-repo.sh`.
//!
//! The server under test is the real release binary, driven over MCP stdio
//! by the same client and scripted model the end-to-end tests use. Turn
//! phases come from the server's own `agentkimi::timing` debug lines.

// The harness's self-tests are compiled here too, but without libtest their
// `#[test]` functions are stripped, which leaves their imports unused.
#[allow(unused_imports)]
#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use agentkimi::{
    config::Config,
    sandbox::{Profile, Sandbox},
};
use serde_json::{Value, json};
use support::{
    git::GitRepo,
    mcp::{McpClient, structured},
    mock_model::{MockModel, Reply, ToolUse},
};

/// The log filter the server runs with: quiet, except the phase timings the
/// breakdown is built from.
const SERVER_LOG: &str = "warn,agentkimi::timing=debug";

/// How many turns the turn-overhead median is taken over.
const TURNS: usize = 20;

/// How many round trips each tool's median is taken over.
const TOOL_CALLS: usize = 200;

/// One printed row: our figure, its baseline, and the target on the ratio.
struct Row {
    item: String,
    ours: String,
    baseline: String,
    ratio: String,
    target: String,
    verdict: &'static str,
}

/// The rows printed at the end, grouped by section.
#[derive(Default)]
struct Table {
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Table {
    fn section(&mut self, title: &str) {
        self.rows.push(Row {
            item: format!("## {title}"),
            ours: String::new(),
            baseline: String::new(),
            ratio: String::new(),
            target: String::new(),
            verdict: "",
        });
    }

    /// A row judged on `ours / base <= max_ratio`.
    fn ratio(&mut self, item: &str, ours: f64, base: f64, base_name: &str, unit: &str, max: f64) {
        let r = ours / base;
        self.rows.push(Row {
            item: item.into(),
            ours: format!("{} {unit}", fmt_num(ours)),
            baseline: format!("{base_name} {} {unit}", fmt_num(base)),
            ratio: format!("{r:.2}×"),
            target: format!("≤ {max}×"),
            verdict: if r <= max { "ok" } else { "MISSED" },
        });
    }

    /// A row judged on an absolute bound, with a baseline for context.
    fn bound(&mut self, item: &str, ours: f64, baseline: String, unit: &str, max: f64) {
        self.rows.push(Row {
            item: item.into(),
            ours: format!("{} {unit}", fmt_num(ours)),
            baseline,
            ratio: String::new(),
            target: format!("≤ {max} {unit}"),
            verdict: if ours <= max { "ok" } else { "MISSED" },
        });
    }

    /// A row for information only.
    fn info(&mut self, item: &str, ours: String, baseline: String, ratio: String) {
        self.rows.push(Row {
            item: item.into(),
            ours,
            baseline,
            ratio,
            target: String::new(),
            verdict: "",
        });
    }

    fn print(&self) {
        let w = |f: fn(&Row) -> &str| self.rows.iter().map(|r| f(r).chars().count()).max();
        let wi = w(|r| r.item.as_str()).unwrap_or(0).max(4);
        let wo = w(|r| r.ours.as_str()).unwrap_or(0).max(9);
        let wb = w(|r| r.baseline.as_str()).unwrap_or(0).max(8);
        let wr = w(|r| r.ratio.as_str()).unwrap_or(0).max(5);
        let wt = w(|r| r.target.as_str()).unwrap_or(0).max(6);
        println!();
        println!(
            "{:wi$}  {:>wo$}  {:wb$}  {:>wr$}  {:wt$}  verdict",
            "item", "agentkimi", "baseline", "ratio", "target"
        );
        println!("{}", "-".repeat(wi + wo + wb + wr + wt + 18));
        for r in &self.rows {
            if r.item.starts_with("## ") {
                println!("{}", r.item);
                continue;
            }
            println!(
                "{:wi$}  {:>wo$}  {:wb$}  {:>wr$}  {:wt$}  {}",
                r.item, r.ours, r.baseline, r.ratio, r.target, r.verdict
            );
        }
        if !self.notes.is_empty() {
            println!();
            for n in &self.notes {
                println!("note: {n}");
            }
        }
    }
}

fn fmt_num(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Median wall time of `n` runs of a command line (after one warm-up run),
/// panicking when it fails, so a broken baseline cannot pass as fast.
fn time_cmd(n: usize, mut make: impl FnMut() -> Command) -> Duration {
    let mut run = || {
        let mut cmd = make();
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let t = Instant::now();
        let out = cmd.output().expect("run a baseline command");
        let d = t.elapsed();
        // rg exits with 1 when nothing matched, which is still a fair run.
        assert!(
            out.status.code().is_some_and(|c| c <= 1),
            "baseline {cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        d
    };
    run();
    median((0..n).map(|_| run()).collect())
}

/// A profile like the server's, with state under `home`, running the real
/// agentkimi binary as the executor.
async fn profile(home: &Path) -> Profile {
    let home = home.to_path_buf();
    let config = Config::from_lookup(|k| match k {
        "AGENTKIMI_HOME" => Some(home.display().to_string()),
        "HOME" => Some(home.display().to_string()),
        _ => None,
    })
    .expect("a configuration for the benchmark");
    Profile::prepare(&config)
        .await
        .expect("a working sandbox (bwrap and user namespaces)")
        .with_executor(PathBuf::from(env!("CARGO_BIN_EXE_agentkimi")))
}

/// Median time of running `true` under the full sandbox profile.
async fn bwrap_floor(profile: &Profile, n: usize) -> Duration {
    profile.probe().await.expect("the sandbox probe");
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        profile.probe().await.expect("the sandbox probe");
        v.push(t.elapsed());
    }
    median(v)
}

/// Sums of the `agentkimi::timing` lines in `log` by phase, in µs, and how
/// many of each there were.
fn phases(log: &str) -> BTreeMap<String, (u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("agentkimi::timing")) {
        let field = |name: &str| {
            let at = line.find(&format!("{name}="))? + name.len() + 1;
            let rest = &line[at..];
            let end = rest.find(' ').unwrap_or(rest.len());
            Some(rest[..end].trim_matches('"').to_string())
        };
        if let (Some(phase), Some(us)) = (field("phase"), field("us"))
            && let Ok(us) = us.parse::<u64>()
        {
            let e = out.entry(phase).or_default();
            e.0 += us;
            e.1 += 1;
        }
    }
    out
}

fn start_args(prompt: &str, workdir: &Path) -> Value {
    json!({"prompt": prompt, "workdir": workdir.display().to_string()})
}

// ---------------------------------------------------------------------------
// 1. Turn overhead

async fn turn_overhead(table: &mut Table, profile: &Profile) {
    table.section("1. turn overhead (instant model, one Write tool call)");
    let floor = bwrap_floor(profile, 30).await;

    let mock = MockModel::start(|req| match req.step_in_turn() {
        0 => Reply::tools(vec![ToolUse::new(
            "Write",
            json!({"file_path": "bench.txt", "content": "benchmark\n"}),
        )]),
        _ => Reply::text("done"),
    });
    let client = McpClient::builder(&mock)
        .env("RUST_LOG", SERVER_LOG)
        .spawn()
        .await;
    let repo = GitRepo::new();

    // Warm up: the first start prepares the sandbox profile and the store.
    let r = client
        .call("agentkimi_start", start_args("warm up", repo.path()))
        .await;
    assert_eq!(structured(&r, "agentkimi_start")["status"], "completed");
    let skip = client.server_log().len();

    let mut times = Vec::with_capacity(TURNS);
    for i in 0..TURNS {
        let t = Instant::now();
        let r = client
            .call(
                "agentkimi_start",
                start_args(&format!("turn {i}"), repo.path()),
            )
            .await;
        times.push(t.elapsed());
        let s = structured(&r, "agentkimi_start");
        assert_eq!(s["status"], "completed", "{s}");
        assert_eq!(s["files_changed"][0]["path"], "bench.txt", "{s}");
    }
    let turn = median(times);
    let log = client.server_log();
    let sums = phases(log.get(skip..).unwrap_or(log.as_str()));
    client.shutdown().await;

    table.ratio(
        "agentkimi_start → result (median of 20)",
        ms(turn),
        ms(floor),
        "bwrap true, our profile",
        "ms",
        5.0,
    );
    let per_turn = |p: &str| {
        sums.get(p)
            .map_or(0.0, |(us, _)| *us as f64 / 1000.0 / TURNS as f64)
    };
    let mut accounted = 0.0;
    for (phase, what) in [
        ("worktree", "worktree creation"),
        ("sandbox_spawn", "sandbox spawn (fork+exec of bwrap)"),
        (
            "tool_first",
            "first tool call (bwrap setup + executor start + Write)",
        ),
        ("tool", "later tool calls"),
        ("model", "model I/O (2 steps, loopback mock)"),
        ("diff", "diff"),
        ("commit", "commit"),
        ("store", "store writes"),
    ] {
        let v = per_turn(phase);
        accounted += v;
        table.info(
            &format!("  {what}"),
            format!("{} ms", fmt_num(v)),
            String::new(),
            format!("{:.0}%", 100.0 * v / ms(turn)),
        );
    }
    table.info(
        "  rest (MCP, checks, process teardown, scheduling)",
        format!("{} ms", fmt_num((ms(turn) - accounted).max(0.0))),
        String::new(),
        format!("{:.0}%", 100.0 * (ms(turn) - accounted).max(0.0) / ms(turn)),
    );
    table
        .notes
        .push("breakdown: mean per turn of the server's own agentkimi::timing lines".into());
}

// ---------------------------------------------------------------------------
// 2. Tool-call round trip

async fn tool_round_trip(table: &mut Table, profile: &Profile) {
    table.section("2. tool-call round trip through the executor (median of 200)");
    let floor = bwrap_floor(profile, 30).await;
    let dir = tempfile::tempdir().expect("a temporary worktree");
    let root = fs::canonicalize(dir.path()).expect("canonical temporary worktree");
    let text: String = (0..200)
        .map(|i| format!("line {i}: alpha beta gamma\n"))
        .collect();
    fs::write(root.join("notes.txt"), &text).expect("write notes.txt");
    fs::create_dir(root.join("src")).expect("create src");
    for i in 0..20 {
        fs::write(
            root.join(format!("src/m{i}.rs")),
            format!("fn f{i}() {{}}\n{text}"),
        )
        .expect("write a source file");
    }
    fs::write(root.join("edit.txt"), "value = ALPHA\n").expect("write edit.txt");

    let t = Instant::now();
    let mut sb = Sandbox::spawn(profile, &root, &root).expect("spawn a sandbox");
    let limit = Duration::from_secs(30);
    let resp = sb
        .call("Bash", &json!({"command": "true"}), limit)
        .await
        .expect("the first call");
    assert!(resp.ok, "{}", resp.output);
    let startup = t.elapsed();

    let notes = root.join("notes.txt").display().to_string();
    let out = root.join("out.txt").display().to_string();
    let edit = root.join("edit.txt").display().to_string();
    // Each tool with the input of its i-th call.
    type Input = Box<dyn Fn(usize) -> Value>;
    let calls: Vec<(&str, Input)> = vec![
        ("Read", Box::new(move |_| json!({"file_path": notes}))),
        (
            "Write",
            Box::new(move |i| json!({"file_path": out, "content": format!("write {i}\n")})),
        ),
        (
            "Edit",
            Box::new(move |i| {
                let (a, b) = if i % 2 == 0 {
                    ("ALPHA", "OMEGA")
                } else {
                    ("OMEGA", "ALPHA")
                };
                json!({"file_path": edit, "old_string": a, "new_string": b})
            }),
        ),
        ("Glob", Box::new(|_| json!({"pattern": "**/*.rs"}))),
        (
            "Grep",
            Box::new(|_| json!({"pattern": "fn f1\\d", "output_mode": "content"})),
        ),
        ("Bash", Box::new(|_| json!({"command": "true"}))),
    ];
    let mut file_tools_worst = Duration::ZERO;
    for (tool, input) in &calls {
        let mut v = Vec::with_capacity(TOOL_CALLS);
        for i in 0..TOOL_CALLS + 5 {
            let req = input(i);
            let t = Instant::now();
            let resp = sb.call(tool, &req, limit).await.expect("a tool call");
            let d = t.elapsed();
            assert!(resp.ok, "{tool} failed: {}", resp.output);
            if i >= 5 {
                v.push(d);
            }
        }
        let m = median(v);
        if *tool == "Bash" {
            // Bash starts a process each call, so it has no sub-millisecond
            // target; it is shown beside the floor for scale.
            table.info(
                "Bash `true` (no target set)",
                format!("{} ms", fmt_num(ms(m))),
                format!("bwrap true {} ms", fmt_num(ms(floor))),
                format!("{:.2}×", ms(m) / ms(floor)),
            );
        } else {
            file_tools_worst = file_tools_worst.max(m);
            table.ratio(tool, ms(m), ms(floor), "bwrap true", "ms", 0.2);
        }
    }
    table.bound(
        "slowest file tool, absolute",
        ms(file_tools_worst),
        String::new(),
        "ms",
        1.0,
    );
    table.info(
        "sandbox start + first call (Bash true)",
        format!("{} ms", fmt_num(ms(startup))),
        format!("bwrap true {} ms", fmt_num(ms(floor))),
        format!("{:.2}×", ms(startup) / ms(floor)),
    );
    sb.kill().await;
}

// ---------------------------------------------------------------------------
// 3. Memory

/// Resident and proportional set size of one process, in KiB.
fn rss_pss(pid: u32) -> Option<(u64, Option<u64>)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<u64>().ok())
    };
    let rss = kib(&status, "VmRSS:")?;
    let pss = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|t| kib(&t, "Pss:"));
    Some((rss, pss))
}

/// `pid` and all its descendants.
fn tree(pid: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // The command name may hold spaces; the fields after its closing
            // parenthesis do not.
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            if let Some(ppid) = after
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse::<u32>().ok())
            {
                parent_of.push((p, ppid));
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == cur)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    out
}

/// Sum of RSS and PSS (KiB) over the tree, and how many processes it had.
fn tree_memory(pid: u32) -> (u64, u64, usize) {
    let pids = tree(pid);
    let (mut rss, mut pss) = (0, 0);
    for p in &pids {
        if let Some((r, ps)) = rss_pss(*p) {
            rss += r;
            pss += ps.unwrap_or(r);
        }
    }
    (rss, pss, pids.len())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn memory(table: &mut Table) {
    table.section("3. memory (server + sandbox tree)");
    // Each reply is held back a little, so the sandbox lives long enough to
    // be sampled; the turn reads, writes, edits, greps and runs a command.
    let hold = Duration::from_millis(300);
    let mock = MockModel::start(move |req| match req.step_in_turn() {
        0 => Reply::tools(vec![
            ToolUse::new("Read", json!({"file_path": "README.md"})),
            ToolUse::new(
                "Grep",
                json!({"pattern": "fixture", "output_mode": "content"}),
            ),
            ToolUse::new(
                "Bash",
                json!({"command": "ls -la && cat README.md | wc -l"}),
            ),
        ])
        .delay(hold),
        1 => Reply::tools(vec![ToolUse::new(
            "Write",
            json!({"file_path": "mem.txt", "content": "memory\n".repeat(1000)}),
        )])
        .delay(hold),
        _ => Reply::text("done").delay(hold),
    });
    let client = McpClient::builder(&mock)
        .env("RUST_LOG", SERVER_LOG)
        .spawn()
        .await;
    let pid = client.pid().expect("the server's pid");
    let repo = GitRepo::new();

    // Idle: after the handshake and a tools/list, nothing running.
    client.list_tools().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (idle_rss, idle_pss) = rss_pss(pid).expect("the server's memory");
    let idle_pss = idle_pss.unwrap_or(idle_rss);
    let idle_status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let status_kib = |key: &str| {
        idle_status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (idle_anon, idle_file) = (status_kib("RssAnon:"), status_kib("RssFile:"));

    // Two turns: the first also prepares the sandbox profile and the store,
    // the second is a steady-state turn. Peak over both.
    let mut peak = (0u64, 0u64, 0usize);
    for i in 0..2 {
        let call = client.call(
            "agentkimi_start",
            start_args(&format!("memory {i}"), repo.path()),
        );
        tokio::pin!(call);
        let r = loop {
            tokio::select! {
                r = &mut call => break r,
                _ = tokio::time::sleep(Duration::from_millis(3)) => {
                    let m = tree_memory(pid);
                    if m.0 > peak.0 { peak.0 = m.0; peak.2 = m.2; }
                    peak.1 = peak.1.max(m.1);
                }
            }
        };
        assert_eq!(structured(&r, "agentkimi_start")["status"], "completed");
    }
    let hwm = fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .unwrap_or(0);
    client.shutdown().await;

    table.bound(
        "idle server RSS",
        mib(idle_rss),
        format!("PSS {} MiB", fmt_num(mib(idle_pss))),
        "MiB",
        15.0,
    );
    table.info(
        "  of which anonymous (heap, stacks)",
        format!("{} MiB", fmt_num(mib(idle_anon))),
        format!("file-backed {} MiB", fmt_num(mib(idle_file))),
        String::new(),
    );
    table.bound(
        "peak RSS during a turn above idle (tree)",
        mib(peak.0.saturating_sub(idle_rss)),
        format!(
            "peak {} MiB over {} processes",
            fmt_num(mib(peak.0)),
            peak.2
        ),
        "MiB",
        20.0,
    );
    table.bound(
        "peak PSS during a turn above idle (tree)",
        mib(peak.1.saturating_sub(idle_pss)),
        format!("peak {} MiB", fmt_num(mib(peak.1))),
        "MiB",
        20.0,
    );
    table.info(
        "server's own peak RSS (VmHWM)",
        format!("{} MiB", fmt_num(mib(hwm))),
        format!("idle {} MiB", fmt_num(mib(idle_rss))),
        String::new(),
    );
    table.notes.push(
        "memory: the tree is sampled every 3 ms; RSS sums count the shared agentkimi \
         binary pages once per process, PSS splits them"
            .into(),
    );
}

// ---------------------------------------------------------------------------
// 4. Concurrency

async fn concurrency(table: &mut Table) {
    table.section("4. concurrency (model answers after 2 s)");
    let mock = MockModel::start(|req| match req.step_in_turn() {
        0 => Reply::tools(vec![ToolUse::new(
            "Write",
            json!({"file_path": "a.txt", "content": "a\n"}),
        )])
        .delay(Duration::from_secs(2)),
        _ => Reply::text("done").delay(Duration::from_secs(2)),
    });
    let client = McpClient::builder(&mock)
        .env("RUST_LOG", SERVER_LOG)
        .spawn()
        .await;
    // All on one repository: eight linked worktrees created at once.
    let repo = GitRepo::new();
    let t = Instant::now();
    let one = client
        .call("agentkimi_start", start_args("one", repo.path()))
        .await;
    let single = t.elapsed();
    assert_eq!(structured(&one, "agentkimi_start")["status"], "completed");

    let t = Instant::now();
    let starts = (0..8).map(|i| {
        client.call(
            "agentkimi_start",
            start_args(&format!("task {i}"), repo.path()),
        )
    });
    let listing = async {
        let mut lat = Vec::new();
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..15 {
            let q = Instant::now();
            let tools = client.list_tools().await;
            lat.push(q.elapsed());
            assert!(tools.len() >= 3);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        lat
    };
    let (results, lat) = tokio::join!(futures::future::join_all(starts), listing);
    let parallel = t.elapsed();
    for r in &results {
        assert_eq!(structured(r, "agentkimi_start")["status"], "completed");
    }
    client.shutdown().await;

    table.ratio(
        "8 sessions in parallel",
        parallel.as_secs_f64(),
        single.as_secs_f64(),
        "one session",
        "s",
        1.3,
    );
    let worst = lat.iter().max().copied().unwrap_or_default();
    table.bound(
        "tools/list during 8 turns (worst of 15)",
        ms(worst),
        format!("median {} ms", fmt_num(ms(median(lat)))),
        "ms",
        20.0,
    );
}

// ---------------------------------------------------------------------------
// 5. Scale

fn git(dir: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-C").arg(dir);
    c
}

fn git_out(dir: &Path, args: &[&str]) -> String {
    let out = git(dir).args(args).output().expect("run git");
    assert!(out.status.success(), "git {args:?} failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn scale(table: &mut Table, profile: &Profile) {
    let Some(repo) = std::env::var_os("AGENTKIMI_BENCH_REPO").map(PathBuf::from) else {
        table.section("5. scale: skipped (AGENTKIMI_BENCH_REPO is not set; see bench/run.sh)");
        return;
    };
    let repo = fs::canonicalize(&repo).expect("the benchmark repository exists");
    let files = git_out(&repo, &["ls-files"]).lines().count();
    let bytes: u64 = {
        let out = Command::new("du")
            .args(["-sb", "--exclude=.git"])
            .arg(&repo)
            .output()
            .expect("run du");
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    table.section(&format!(
        "5. scale: {files} files, {} MiB ({})",
        bytes / (1 << 20),
        repo.display()
    ));
    let base = git_out(&repo, &["rev-parse", "HEAD"]);
    // Forget the worktrees of earlier runs, whose state directories are gone.
    git_out(&repo, &["worktree", "prune"]);
    // Warm the page cache for both sides alike.
    let _ = Command::new("rg")
        .args(["-c", "zzzz_warm_zzzz"])
        .arg(&repo)
        .stdout(Stdio::null())
        .status();

    // git worktree add, the way a session makes one: a new branch off HEAD.
    let scratch = tempfile::tempdir().expect("a scratch directory");
    let runs = 3;
    let mut git_times = Vec::new();
    for i in 0..runs {
        let wt = scratch.path().join(format!("wt{i}"));
        let branch = format!("bench-wt-{}-{i}", std::process::id());
        let t = Instant::now();
        let st = git(&repo)
            .args(["worktree", "add", "--quiet", "-b", &branch])
            .arg(&wt)
            .arg("HEAD")
            .status()
            .expect("git worktree add");
        git_times.push(t.elapsed());
        assert!(st.success());
        let _ = git(&repo)
            .args(["worktree", "remove", "--force"])
            .arg(&wt)
            .status();
        let _ = git(&repo).args(["branch", "-D", &branch]).output();
    }
    let git_wt = median(git_times);

    // Sessions on the repository: each writes one new file and changes one
    // tracked file, so the diff has an untracked and a modified entry.
    let tracked = git_out(&repo, &["ls-files"])
        .lines()
        .nth(files / 2)
        .unwrap_or("README.md")
        .to_string();
    let bash = format!("echo changed >> '{tracked}'");
    let mock = MockModel::start(move |req| match req.step_in_turn() {
        0 => Reply::tools(vec![
            ToolUse::new(
                "Write",
                json!({"file_path": "bench-new.txt", "content": "new\n"}),
            ),
            ToolUse::new("Bash", json!({"command": bash})),
        ]),
        _ => Reply::text("done"),
    });
    let client = McpClient::builder(&mock)
        .env("RUST_LOG", SERVER_LOG)
        .call_timeout(Duration::from_secs(1800))
        .spawn()
        .await;
    let mut starts = Vec::new();
    let mut worktree = String::new();
    let mut sums = BTreeMap::new();
    for i in 0..runs {
        let skip = client.server_log().len();
        let t = Instant::now();
        let r = client
            .call("agentkimi_start", start_args(&format!("scale {i}"), &repo))
            .await;
        starts.push(t.elapsed());
        let s = structured(&r, "agentkimi_start");
        assert_eq!(s["status"], "completed", "{s}");
        assert_eq!(s["files_changed"].as_array().map(Vec::len), Some(2), "{s}");
        worktree = s["worktree"].as_str().unwrap_or_default().to_string();
        let log = client.server_log();
        for (k, (us, _)) in phases(log.get(skip..).unwrap_or(log.as_str())) {
            sums.entry(k)
                .or_insert_with(Vec::new)
                .push(Duration::from_micros(us));
        }
    }
    let phase = |p: &str| sums.get(p).cloned().map(median).unwrap_or_default();
    table.ratio(
        "session worktree creation",
        ms(phase("worktree")),
        ms(git_wt),
        "git worktree add",
        "ms",
        1.5,
    );
    table.info(
        "  whole agentkimi_start (turn included)",
        format!("{} ms", fmt_num(ms(median(starts)))),
        String::new(),
        String::new(),
    );

    // The diff of the last session's turn, against git on that worktree
    // (the turn is committed, so both compare the base commit with it).
    let wt = PathBuf::from(&worktree);
    let git_diff = time_cmd(runs, || {
        let mut c = git(&wt);
        c.args(["diff", &base]);
        c
    });
    let git_untracked = time_cmd(runs, || {
        let mut c = git(&wt);
        c.args(["ls-files", "--others", "--exclude-standard"]);
        c
    });
    table.ratio(
        "diff of a small change",
        ms(phase("diff")),
        ms(git_diff + git_untracked),
        "git diff + ls-files -o",
        "ms",
        1.5,
    );
    table.info(
        "  commit of that change",
        format!("{} ms", fmt_num(ms(phase("commit")))),
        String::new(),
        String::new(),
    );
    client.shutdown().await;
    git_out(&repo, &["worktree", "prune"]);
    let branches = git_out(
        &repo,
        &[
            "branch",
            "--list",
            "agentkimi/*",
            "--format=%(refname:short)",
        ],
    );
    for b in branches.lines() {
        let _ = git(&repo).args(["branch", "-D", b]).output();
    }

    // Grep and Glob through the executor, against rg on the same tree.
    let mut sb = Sandbox::spawn(profile, &repo, &repo).expect("spawn a sandbox");
    let limit = Duration::from_secs(600);
    let mut tool = async |name: &str, input: Value| {
        let mut v = Vec::new();
        let mut output = String::new();
        for i in 0..=runs {
            let t = Instant::now();
            let resp = sb.call(name, &input, limit).await.expect("a tool call");
            let d = t.elapsed();
            assert!(resp.ok, "{name}: {}", resp.output);
            output = resp.output;
            if i > 0 {
                v.push(d);
            }
        }
        (median(v), output)
    };
    let (grep, grep_out) = tool(
        "Grep",
        json!({"pattern": "NEEDLE_[0-9]+", "output_mode": "files_with_matches"}),
    )
    .await;
    let (glob, glob_out) = tool("Glob", json!({"pattern": "**/*.rs"})).await;
    sb.kill().await;
    let rg_grep = time_cmd(runs, || {
        let mut c = Command::new("rg");
        c.args(["-l", "NEEDLE_[0-9]+"]).current_dir(&repo);
        c
    });
    let rg_glob = time_cmd(runs, || {
        let mut c = Command::new("rg");
        c.args(["--files", "-g", "*.rs"]).current_dir(&repo);
        c
    });
    let rg_grep1 = time_cmd(runs, || {
        let mut c = Command::new("rg");
        c.args(["-j1", "-l", "NEEDLE_[0-9]+"]).current_dir(&repo);
        c
    });
    table.ratio(
        "Grep, files with matches",
        ms(grep),
        ms(rg_grep),
        "rg -l",
        "ms",
        1.5,
    );
    table.info(
        "  same, against one rg thread",
        format!("{} ms", fmt_num(ms(grep))),
        format!("rg -j1 -l {} ms", fmt_num(ms(rg_grep1))),
        format!("{:.2}×", ms(grep) / ms(rg_grep1)),
    );
    // Glob has no target of its own; it is shown beside rg all the same.
    table.info(
        "Glob **/*.rs (no target set)",
        format!("{} ms", fmt_num(ms(glob))),
        format!("rg --files -g {} ms", fmt_num(ms(rg_glob))),
        format!("{:.2}×", ms(glob) / ms(rg_glob)),
    );
    table.notes.push(format!(
        "scale: Grep found {} lines of output, Glob {}",
        grep_out.lines().count(),
        glob_out.lines().count()
    ));
}

// ---------------------------------------------------------------------------

fn main() {
    // cargo passes `--bench`; anything else not starting with `-` names a
    // section.
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |s: &str| wanted.is_empty() || wanted.iter().any(|w| w == s);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let state = tempfile::tempdir().expect("a state directory");
        let profile = profile(state.path()).await;
        let mut table = Table::default();
        println!(
            "agentkimi benchmark: {} cores, kernel {}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
        );
        if want("turn") {
            eprintln!("bench: turn overhead…");
            turn_overhead(&mut table, &profile).await;
        }
        if want("tools") {
            eprintln!("bench: tool round trips…");
            tool_round_trip(&mut table, &profile).await;
        }
        if want("memory") {
            eprintln!("bench: memory…");
            memory(&mut table).await;
        }
        if want("concurrency") {
            eprintln!("bench: concurrency…");
            concurrency(&mut table).await;
        }
        if want("scale") {
            eprintln!("bench: scale…");
            scale(&mut table, &profile).await;
        }
        table.print();
    });
}
