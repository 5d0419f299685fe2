#!/usr/bin/env bash
# Runs the agentkimi benchmark end to end on a fresh machine:
#   bash bench/run.sh [turn] [tools] [memory] [concurrency] [scale]
# Installs what is missing (bubblewrap, git, ripgrep, hyperfine, python3),
# generates the large repository once (AGENTKIMI_BENCH_FILES files, default
# 100000, about 10 KiB each) under target/, builds in release mode and
# prints the table. Set AGENTKIMI_BENCH_FILES=5000 for a quick run.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in bwrap:bubblewrap git:git rg:ripgrep hyperfine:hyperfine python3:python3; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if ((${#missing[@]})); then
    echo "run.sh: installing ${missing[*]}" >&2
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${missing[@]}"
fi

files=${AGENTKIMI_BENCH_FILES:-100000}
repo=$PWD/target/bench-repo-$files
if [ ! -e "$repo.done" ]; then
    bash bench/gen-repo.sh "$repo" "$files"
fi

echo "run.sh: building in release mode" >&2
cargo bench --bench agentkimi --no-run

# The floor, measured a second way: hyperfine running bwrap with the same
# namespaces and mounts (no seccomp filter) on `true`.
echo "run.sh: bare bwrap spawn, hyperfine (cross-check of the floor):"
hyperfine --style basic --warmup 5 --runs 50 -N \
    "bwrap --unshare-user --unshare-pid --unshare-ipc --unshare-uts --unshare-cgroup-try \
--unshare-net --die-with-parent --new-session --clearenv --cap-drop ALL \
--ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64 \
--proc /proc --dev /dev --tmpfs /tmp -- /usr/bin/true" 2>&1 | sed -n '/Time/,/Range/p' \
    || echo "run.sh: the hyperfine cross-check failed (the table below has its own floor)"


AGENTKIMI_BENCH_REPO=$repo cargo bench --bench agentkimi -- "$@"
