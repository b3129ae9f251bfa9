#!/usr/bin/env bash
# bs-users benchmarks: each measures bs-users and the baseline an operator
# would otherwise run, side by side in one run, and prints the ratio.
#   1. no-op apply, 1,000 managed users (keys from keys/ only)
#      vs the original's per-user loop (id check, usermod -aG, rewrite keys)
#   2. creating 1,000 users in a sandbox root
#      vs a loop of useradd + usermod -aG + passwd -de per user
#   3. keys refresh of 1,000 users from a key server adding 50 ms a request
#      vs fetching one by one with curl
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

echo "## bs-users ($users users)"

# --- 2. creating users -------------------------------------------------------
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

# --- 1. no-op apply ----------------------------------------------------------
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

# --- 3. keys refresh against a slow key server --------------------------------
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
