#!/usr/bin/env bash
# bs-docker benchmark: a no-op `apply` for 5 declared services against the real engine,
# vs `docker-compose up -d` (Debian's docker-compose) on the equivalent compose file, side by
# side in one run. Both converge their own 5 running containers first; then each is timed over
# $BENCH_ROUNDS no-op runs and the ratio of the totals is printed. Target: >= 3x.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BS_BIN_DIR:-$PWD/target/release}
rounds=${BENCH_ROUNDS:-5}
command -v docker-compose >/dev/null || { echo "bench: docker-compose is missing (apt-get install docker-compose)" >&2; exit 1; }
[ -x "$bin/bs-docker" ] || { echo "bench: $bin/bs-docker is missing: cargo build --release -p bs-docker" >&2; exit 1; }
tests/images/build-busybox >/dev/null
image=bs-busybox:latest

work=$(mktemp -d /tmp/bs-bench-docker.XXXXXX)
prefix=bsbench$$
cleanup() {
    docker-compose -p "$prefix" -f "$work/compose.yml" down -t 1 >/dev/null 2>&1 || true
    for i in 1 2 3 4 5; do docker rm -f "$prefix-bs-$i" >/dev/null 2>&1 || true; done
    rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.1f}')" "$1" "$2"; }

# --- bs-docker: a repository with 5 services and a sandbox root reaching the real engine ------
repo=$work/repo root=$work/root
mkdir -p "$repo/backends/bench" "$root/etc/bs" "$root/run/lock" "$root/var/run"
cp backends/defaults.toml "$repo/backends/"
printf 'opensafely:x:10000:10000::/home/opensafely:/bin/bash\n' >"$root/etc/passwd"
printf 'opensafely:x:10000:\ndocker:x:990:opensafely\n' >"$root/etc/group"
ln -s /var/run/docker.sock "$root/var/run/docker.sock"
{
    printf '[backend]\nname = "bench"\n'
    for i in 1 2 3 4 5; do
        cat <<TOML
[docker.services.$prefix-bs-$i]
image = "$image"
command = ["sleep", "3600"]
user = "10000:10000"
memory = "32m"
cpus = 0.5
pids_limit = 32
labels = { "bs.test" = "1", "bs.bench" = "1" }
TOML
    done
} >"$repo/backends/bench/backend.toml"
bsd() { "$bin/bs-docker" --root "$root" --repo "$repo" --backend bench "$@"; }

# --- docker-compose: the same 5 services -------------------------------------------------------
{
    printf 'version: "2.4"\nservices:\n'
    for i in 1 2 3 4 5; do
        cat <<YAML
  svc$i:
    image: $image
    command: ["sleep", "3600"]
    user: "10000:10000"
    init: true
    mem_limit: 32m
    memswap_limit: 32m
    cpus: 0.5
    pids_limit: 32
    cap_drop: [ALL]
    security_opt: [no-new-privileges]
    restart: unless-stopped
    labels: { bs.test: "1", bs.bench: "1" }
YAML
    done
} >"$work/compose.yml"
dc() { docker-compose -p "$prefix" -f "$work/compose.yml" "$@"; }

echo "## bs-docker (5 services, $rounds no-op runs each)"
bsd apply >"$work/first.jsonl"
[ "$(grep -c '"action":"create_service"' "$work/first.jsonl")" = 5 ] || { echo "bench: the first apply did not create 5 services" >&2; cat "$work/first.jsonl" >&2; exit 1; }
dc up -d >/dev/null 2>&1

t0=$(now)
for _ in $(seq 1 "$rounds"); do bsd apply >"$work/noop.jsonl"; done
t1=$(now)
ours=$(elapsed "$t0" "$t1")
grep -q '"changed":0' "$work/noop.jsonl" || { echo "bench: the no-op apply changed something" >&2; exit 1; }

t0=$(now)
for _ in $(seq 1 "$rounds"); do dc up -d >/dev/null 2>&1; done
t1=$(now)
base=$(elapsed "$t0" "$t1")
echo "no-op:   bs-docker apply ${ours}s  docker-compose up -d ${base}s  speedup $(ratio "$base" "$ours")x (target >= 3x)"
