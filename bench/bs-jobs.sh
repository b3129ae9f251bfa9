#!/usr/bin/env bash
# bs-jobs benchmark, side by side in one run, printing ratios:
#  1. queue: BENCH_JOBS (default 10000) submit -> claim -> complete cycles with the no-op executor
#     (every job still gets a volume, finalize, logs in both trees and a manifest update), jobs per
#     second, and the per-job overhead as a share of a real container run (`docker run --rm` of
#     `true`, averaged over BENCH_ROUNDS). Target: below 5%.
#  2. launch: create + start + wait + remove of a container running `true` through bs-jobs'
#     engine code (with the job hardening: --init, no network, uid 10000, no capabilities) vs
#     `docker run --rm` with the same flags, BENCH_ROUNDS each, interleaved. Target: <= 1.2x.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BS_BIN_DIR:-$PWD/target/release}
jobs=${BENCH_JOBS:-10000}
rounds=${BENCH_ROUNDS:-20}
[ -x "$bin/bs-jobs" ] || { echo "bench: $bin/bs-jobs is missing: cargo build --release -p bs-jobs" >&2; exit 1; }
tests/images/build-busybox >/dev/null
image=bs-busybox:latest

work=$(mktemp -d /tmp/bs-bench-jobs.XXXXXX)
trap 'rm -rf --one-file-system "$work"' EXIT
mkdir -p "$work/root/etc/bs"
bsj() { "$bin/bs-jobs" --root "$work/root" --repo "$PWD" --backend test "$@"; }
now() { date +%s.%N; }
calc() { python3 -c "import sys; print(format(eval(sys.argv[1]), sys.argv[2]))" "$1" "$2"; }

# --- 1. the queue -----------------------------------------------------------------------------
python3 - "$jobs" "$image" >"$work/jobs.jsonl" <<'PY'
import json, sys
n, image = int(sys.argv[1]), sys.argv[2]
for i in range(n):
    print(json.dumps({"id": f"bench-{i}", "workspace": "bench", "action": "noop",
                      "image": image, "command": ["true"]}))
PY
t0=$(now)
bsj submit "$work/jobs.jsonl" >/dev/null
t1=$(now)
bsj work --once --executor noop --max-workers 2 >"$work/work.json" # the default max_workers
t2=$(now)
done_count=$(find "$work/root/var/lib/bs/jobs/done" -name '*.json' | wc -l)
[ "$done_count" -eq "$jobs" ] || { echo "bench: only $done_count of $jobs jobs done" >&2; exit 1; }

for ((i = 0; i < 5; i++)); do docker run --rm --network none "$image" true; done # warm up
d0=$(now)
for ((i = 0; i < rounds; i++)); do docker run --rm --network none "$image" true; done
d1=$(now)
per_container=$(calc "($d1 - $d0) / $rounds" .4f)
per_job=$(calc "($t2 - $t0) / $jobs" .6f)
echo "queue: $jobs jobs: submit $(calc "$t1 - $t0" .2f) s, claim+run+complete $(calc "$t2 - $t1" .2f) s," \
    "$(calc "$jobs / ($t2 - $t0)" .0f) jobs/s, $(calc "$per_job * 1000" .2f) ms a job"
echo "queue: docker run --rm true: $(calc "$per_container * 1000" .0f) ms a run;" \
    "overhead $(calc "100 * $per_job / $per_container" .2f)% of a container run (target < 5%)"

# --- 2. launch ----------------------------------------------------------------------------------
flags=(--init --network none --user 10000:10000 --cap-drop ALL --security-opt no-new-privileges
    --memory 4g --cpus 2 --pids-limit 1024)
bsj bench-launch --image "$image" --count 3 >/dev/null # warm up
b_total=0 d_total=0
for ((i = 0; i < rounds; i++)); do
    a=$(now); docker run --rm "${flags[@]}" "$image" true; b=$(now)
    bsj bench-launch --image "$image" --count 1 >/dev/null; c=$(now)
    d_total=$(calc "$d_total + $b - $a" .6f)
    b_total=$(calc "$b_total + $c - $b" .6f)
done
echo "launch: $rounds runs: bs-jobs $(calc "1000 * $b_total / $rounds" .0f) ms," \
    "docker run --rm $(calc "1000 * $d_total / $rounds" .0f) ms a launch;" \
    "ratio $(calc "$b_total / $d_total" .2f)x (target <= 1.2x)"
