#!/usr/bin/env bash
# Generates the repository the benchmark's scale section works on:
# FILES files (default 100000) of about 10 KiB each (about 1 GB in all) in
# directories of 100, mixed Rust, Python, Markdown and text, committed once.
# Every 10000th file holds a NEEDLE_<n> marker for the Grep benchmark.
#
#   bash bench/gen-repo.sh <dir> [files]
#
# The content is deterministic (a fixed seed), so two machines that generate
# the same size search the same bytes. <dir>.done marks a finished repository;
# without it the directory is rebuilt from scratch.
set -euo pipefail

dir=${1:?usage: gen-repo.sh <dir> [files]}
files=${2:-100000}

rm -rf "$dir" "$dir.done"
mkdir -p "$dir"
echo "gen-repo: writing $files files into $dir" >&2

python3 - "$dir" "$files" <<'PY'
import os, random, sys

root, files = sys.argv[1], int(sys.argv[2])
rng = random.Random(20261203)
words = ["alpha", "beta", "gamma", "delta", "value", "config", "parse", "render",
         "session", "worktree", "sandbox", "result", "buffer", "stream", "token",
         "index", "commit", "branch", "handler", "request", "response", "error"]
# One pool of text, sliced at random offsets: fast to write, varied enough
# that no two files are identical.
lines = []
for i in range(40000):
    n = rng.randint(3, 12)
    lines.append("    " + " ".join(rng.choice(words) for _ in range(n)) + f" {i};\n")
pool = "".join(lines)
exts = [".rs", ".py", ".md", ".txt"]
for i in range(files):
    d = os.path.join(root, f"d{i // 10000:02d}", f"s{(i // 100) % 100:02d}")
    if i % 100 == 0:
        os.makedirs(d, exist_ok=True)
    size = rng.randint(5000, 15500)
    start = rng.randrange(0, len(pool) - size)
    body = pool[start:start + size]
    if i % 10000 == 0:
        body += f"// NEEDLE_{i}\n"
    with open(os.path.join(d, f"f{i:06d}{exts[i % 4]}"), "w") as f:
        f.write(f"// file {i}\n")
        f.write(body)
with open(os.path.join(root, "README.md"), "w") as f:
    f.write("Generated repository for the agentkimi benchmark.\n")
PY

cd "$dir"
git init --quiet --initial-branch main
git config user.name bench
git config user.email bench@localhost
git config gc.auto 0
# Fast, light compression: the benchmark measures reading the tree, not
# packing it.
git config core.compression 1
echo "gen-repo: committing (git add of the whole tree takes a while)" >&2
git add -A
git commit --quiet -m "Generated benchmark repository"
touch "$dir.done"
echo "gen-repo: done: $(git ls-files | wc -l) files, $(du -sh --exclude=.git . | cut -f1)" >&2
