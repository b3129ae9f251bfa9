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
mkdir -p "$work/root/etc/bs" "$work/root/var/run"
# bs-jobs reaches the engine at [docker] socket under its root.
ln -s /var/run/docker.sock "$work/root/var/run/docker.sock"
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

# --- 3. re-attach ---------------------------------------------------------------------------------
# BENCH_REATTACH (default 20) jobs run in their containers; the worker is SIGKILLed and started
# again: the time until every job is claimed again (re-attached to its container, none started
# anew), then every job must end once, in its original container.
n=${BENCH_REATTACH:-20}
mkdir -p "$work/ra/etc/bs" "$work/ra/var/run"
ln -s /var/run/docker.sock "$work/ra/var/run/docker.sock"
printf '[jobs]\ndefault_memory = "64m"\ndefault_cpu = 0.1\n' >"$work/ra/etc/bs/local.toml"
bsr() { "$bin/bs-jobs" --root "$work/ra" --repo "$PWD" --backend test "$@"; }
ws="bench-ra-$$"
python3 - "$n" "$image" "$ws" >"$work/ra.jsonl" <<'PY'
import json, sys
n, image, ws = int(sys.argv[1]), sys.argv[2], sys.argv[3]
for i in range(n):
    print(json.dumps({"id": f"{ws}-{i}", "workspace": ws, "action": f"a{i}", "image": image,
                      "command": ["sh", "-c", f"sleep 20; hostname > out{i}.txt"],
                      "outputs": {"highly_sensitive": [f"out{i}.txt"]}}))
PY
bsr submit "$work/ra.jsonl" >/dev/null
running() { docker ps -q --filter "label=bs.job.workspace=$ws" | wc -l; }
# Not through bsr (a function: $! would be its subshell, and the kill would miss the worker).
"$bin/bs-jobs" --root "$work/ra" --repo "$PWD" --backend test work --forever --max-workers "$n" \
    >/dev/null 2>&1 &
worker=$!
for ((i = 0; i < 600 && $(running) < n; i++)); do sleep 0.1; done
[ "$(running)" -eq "$n" ] || { kill -9 "$worker"; echo "bench: only $(running) of $n jobs started" >&2; exit 1; }
before=$(docker ps -q --no-trunc --filter "label=bs.job.workspace=$ws" | sort)
kill -9 "$worker"; wait "$worker" 2>/dev/null || true
r0=$(now)
"$bin/bs-jobs" --root "$work/ra" --repo "$PWD" --backend test work --once --max-workers "$n" \
    >"$work/ra.json" &
again=$!
running_entries() { find "$work/ra/var/lib/bs/jobs/running" -name '*.json' | wc -l; }
for ((i = 0; i < 600; i++)); do
    [ "$(jq -s '[.[] | select(.type == "recovered")] | length' "$work/ra.json" 2>/dev/null)" -eq "$n" ] &&
        [ "$(running_entries)" -eq "$n" ] && break
    sleep 0.05
done
r1=$(now)
wait "$again"
after=$(docker ps -aq --no-trunc --filter "label=bs.job.workspace=$ws" | sort)
[ -z "$after" ] || { echo "bench: containers left behind" >&2; exit 1; }
kept=$(jq -s '[.[] | select(.type == "recovered" and .container_removed == false)] | length' "$work/ra.json")
once=$(cat "$work/ra/var/lib/bs/jobs/done/"*.json | jq -s '[.[] | select(.attempts == 1)] | length')
# Each job's output names the container it ran in: one of those running before the kill.
same=$(cat "$work/ra/srv/high_privacy/workspaces/$ws"/out*.txt |
    while read -r h; do grep -c "^$h" <<<"$before"; done | grep -c '^1$' || true)
if [ "$kept" -ne "$n" ] || [ "$once" -ne "$n" ] || [ "$same" -ne "$n" ]; then
    echo "bench: re-attach kept $kept containers; $once of $n jobs ran once, $same in their original container" >&2
    exit 1
fi
echo "reattach: $n running jobs, worker SIGKILLed: all re-attached in $(calc "$r1 - $r0" .2f) s," \
    "$kept containers kept, $once jobs ended once (attempt 1), $same in their original container"
