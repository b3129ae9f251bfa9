#!/usr/bin/env bash
# bs-users benchmarks: each measures bs-users and the baseline an operator
# would otherwise run, side by side in one run, and prints the ratio.
#   1. no-op apply, 1,000 managed users (keys from keys/ only)
#      vs the original's per-user loop (id check, usermod -aG, rewrite keys)
#   2. creating 1,000 users in a sandbox root
#      vs a loop of useradd + usermod -aG + passwd -de per user
#   3. keys refresh of 1,000 users from a key server adding 50 ms a request
#      vs fetching one by one with curl
#   4. growth: the no-op apply at 1,000 and at 10,000 people (10x), each in
#      a root bs-users converged; target <= 11x the time, < 50 ms at 1,000
# BENCH_SECTIONS picks some of them (default "create noop refresh growth";
# noop and refresh need create). Growth builds its own roots: creating
# 10,000 accounts takes minutes, most of it the fsyncs of the homes.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BS_BIN_DIR:-$PWD/target/release}
users=${BENCH_USERS:-1000}
work=$(mktemp -d /tmp/bs-bench-users.XXXXXX)
server_pid=
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.1f}')" "$1" "$2"; }

# A repository with one list of $users logins and a key for each.
repo=$work/repo
mkdir -p "$repo/backends/bench" "$repo/keys"
cp backends/defaults.toml "$repo/backends/"
cat > "$repo/backends/bench/backend.toml" <<TOML
[backend]
name = "bench"
[users]
fetch_keys = false
refresh = "none"
TOML
ssh-keygen -q -t ed25519 -N '' -f "$work/k"
key=$(cat "$work/k.pub")
: > "$repo/developers"
for i in $(seq 1 "$users"); do
    echo "user$i" >> "$repo/developers"
    echo "$key" > "$repo/keys/user$i"
done
export BS_REPO=$repo BS_BACKEND=bench
sections=" ${BENCH_SECTIONS:-create noop refresh growth} "
want() { [[ $sections == *" $1 "* ]]; }

# Best of $1 runs of the rest of the line: "wall_seconds cpu_seconds"
# (cpu = user + system of the child; the best of each, apart).
best_of() {
    python3 - "$@" <<'PY'
import os, subprocess, sys, time
runs, cmd = int(sys.argv[1]), sys.argv[2:]
walls, cpus = [], []
for _ in range(runs):
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    walls.append(time.perf_counter() - t0)
    cpus.append(ru.ru_utime + ru.ru_stime)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[0]} failed")
print(f"{min(walls):.3f} {min(cpus):.3f}")
PY
}

echo "## bs-users ($users users)"

# --- 2. creating users -------------------------------------------------------
if want create; then
bin/sandbox-root "$work/a" 2>/dev/null
t0=$(now); BS_ROOT=$work/a "$bin/bs-users" apply > "$work/create.jsonl"; t1=$(now)
ours_create=$(elapsed "$t0" "$t1")
grep -q '"ok":true' "$work/create.jsonl"

bin/sandbox-root "$work/b" 2>/dev/null
for g in developers researchers reviewers docker; do groupadd --prefix "$work/b" "$g"; done
t0=$(now)
for i in $(seq 1 "$users"); do
    useradd --prefix "$work/b" -m -s /bin/bash "user$i"
    usermod --prefix "$work/b" -aG developers,researchers,reviewers,docker,sudo "user$i"
    passwd --root "$work/b" -de "user$i" > /dev/null
done
t1=$(now)
base_create=$(elapsed "$t0" "$t1")
echo "create:  bs-users apply ${ours_create}s  shell loop ${base_create}s  speedup $(ratio "$base_create" "$ours_create")x (target >= 5x)"
fi

# --- 1. no-op apply ----------------------------------------------------------
if want noop; then
t0=$(now); BS_ROOT=$work/a "$bin/bs-users" apply > "$work/noop.jsonl"; t1=$(now)
ours_noop=$(elapsed "$t0" "$t1")
grep -q '"changed":0' "$work/noop.jsonl"
t0=$(now)
for i in $(seq 1 "$users"); do
    # what the original did per user on every run
    chroot_passwd=$work/b/etc/passwd
    grep -q "^user$i:" "$chroot_passwd"
    usermod --prefix "$work/b" -aG developers,researchers,reviewers,docker,sudo "user$i"
    mkdir -p "$work/b/home/user$i/.ssh"
    cp "$repo/keys/user$i" "$work/b/home/user$i/.ssh/authorized_keys.tmp"
    mv "$work/b/home/user$i/.ssh/authorized_keys.tmp" "$work/b/home/user$i/.ssh/authorized_keys"
done
t1=$(now)
base_noop=$(elapsed "$t0" "$t1")
echo "no-op:   bs-users apply ${ours_noop}s  shell loop ${base_noop}s  speedup $(ratio "$base_noop" "$ours_noop")x (target >= 20x)"
fi

# --- 3. keys refresh against a slow key server --------------------------------
if want refresh; then
port_file=$work/port
python3 - "$port_file" "$key" <<'PY' &
import http.server, socketserver, sys, time
key = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(0.05)
        body = (key + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    request_queue_size = 128
s = S(("127.0.0.1", 0), H)
open(sys.argv[1], "w").write(str(s.server_address[1]))
s.serve_forever()
PY
server_pid=$!
for _ in $(seq 50); do [ -s "$port_file" ] && break; sleep 0.1; done
port=$(cat "$port_file")
mkdir -p "$work/a/etc/bs"
printf '[users]\nfetch_keys = true\nkey_source = "http://127.0.0.1:%s"\n' "$port" > "$work/a/etc/bs/local.toml"
BS_ROOT=$work/a "$bin/bs-users" apply > /dev/null
t0=$(now); BS_ROOT=$work/a "$bin/bs-users" keys refresh > "$work/refresh.jsonl"; t1=$(now)
ours_refresh=$(elapsed "$t0" "$t1")
grep -q '"fetch_failed":0' "$work/refresh.jsonl"
t0=$(now)
for i in $(seq 1 "$users"); do
    curl --silent --fail "http://127.0.0.1:$port/user$i.keys" > "$work/curl.keys"
done
t1=$(now)
base_refresh=$(elapsed "$t0" "$t1")
echo "refresh: bs-users keys refresh ${ours_refresh}s  curl loop ${base_refresh}s  speedup $(ratio "$base_refresh" "$ours_refresh")x (target >= 10x)"
kill "$server_pid" 2>/dev/null || true
server_pid=
fi

# --- 4. growth of the no-op apply ---------------------------------------------
# The same no-op apply in two roots, one with 10x the people: linear cost
# shows as about 10x. Best of 3 runs each, wall clock and CPU (user + sys).
if want growth; then
declare -A wall cpu
for n in 1000 10000; do
    g=$work/growth$n
    mkdir -p "$g/repo/backends/bench" "$g/repo/keys"
    cp "$repo/backends/defaults.toml" "$g/repo/backends/"
    cp "$repo/backends/bench/backend.toml" "$g/repo/backends/bench/"
    seq 1 "$n" | sed 's/^/user/' > "$g/repo/developers"
    for i in $(seq 1 "$n"); do echo "$key" > "$g/repo/keys/user$i"; done
    bin/sandbox-root "$g/root" 2>/dev/null
    BS_REPO=$g/repo BS_ROOT=$g/root "$bin/bs-users" apply > "$g/create.jsonl"
    grep -q '"ok":true' "$g/create.jsonl"
    BS_REPO=$g/repo BS_ROOT=$g/root "$bin/bs-users" apply > "$g/noop.jsonl"
    grep -q '"changed":0' "$g/noop.jsonl"
    read -r "wall[$n]" "cpu[$n]" < <(BS_REPO=$g/repo BS_ROOT=$g/root best_of 3 "$bin/bs-users" apply)
done
echo "growth:  no-op apply 1,000 people ${wall[1000]}s (cpu ${cpu[1000]}s)  10,000 people ${wall[10000]}s (cpu ${cpu[10000]}s)  growth $(ratio "${wall[10000]}" "${wall[1000]}")x wall, $(ratio "${cpu[10000]}" "${cpu[1000]}")x cpu (target <= 11x; < 0.050s at 1,000)"
fi
