#!/usr/bin/env bash
# The account lock is not held across network I/O (issue 12, item 9). A key server that accepts
# connections and never answers stalls `bs-users apply` for its whole HTTP timeout; meanwhile a
# real `useradd` on the container's live root must get /etc/.pwd.lock at once (shadow-utils give
# up after 15 s). When the apply ends (exit 1: every fetch failed), the account `useradd` made is
# still there beside bs's own, and pwck -r and grpck -r find nothing wrong.
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

st_require_bins bs-users
ST_DUMP_FILES="/tmp/apply.json /tmp/apply.err /etc/bs/local.toml /var/log/stalled-keys.log"
st_start pwlock

port=8766

st_step "a key server that accepts connections and never answers"
st_sh 'cat >/usr/local/bin/stalled-keyserver && chmod 755 /usr/local/bin/stalled-keyserver' <<'EOF'
#!/usr/bin/python3
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(128)
held = []
while True:
    c, _ = s.accept()
    held.append(c)
    with open("/var/log/stalled-keys.log", "a") as log:
        log.write("accepted\n")
EOF
st_exec_bg /usr/local/bin/stalled-keyserver "$port"
st_wait_port "$port"

st_step "host override: fetch keys from it, with a 25 s HTTP timeout"
st_sh 'mkdir -p /etc/bs && printf "%s\n" "[users]" "fetch_keys = true" "fetch_retries = 0" \
    "key_source = \"http://127.0.0.1:$1\"" "" "[http]" "timeout_secs = 25" >/etc/bs/local.toml' \
    "$port"

st_step "bs-users apply in the background"
st_exec rm -f /tmp/apply.rc
st_exec_bg sh -c 'cd /opt/bs && BS_BACKEND=test bs-users apply >/tmp/apply.json 2>/tmp/apply.err;
    echo $? >/tmp/apply.rc'
for ((i = 0; i < 100; i++)); do
    st_exec test -s /var/log/stalled-keys.log && break
    sleep 0.1
done
st_exec test -s /var/log/stalled-keys.log || st_fail "bs-users never reached the key server"
sleep 1

st_step "useradd beside it"
assert_failure "bs-users is still waiting for the key server" st_exec test -e /tmp/apply.rc
start=$SECONDS
rc=0
st_exec timeout 30 useradd -m -s /bin/bash localperson || rc=$?
took=$((SECONDS - start))
assert_eq 0 "$rc" "exit status of useradd while bs-users waits for the key server"
((took < 5)) || st_fail "useradd waited ${took}s for the account lock"
assert_failure "bs-users is still waiting after useradd finished" st_exec test -e /tmp/apply.rc

st_step "the apply ends"
for ((i = 0; i < 600; i++)); do
    st_exec test -e /tmp/apply.rc && break
    sleep 0.1
done
assert_eq 1 "$(st_exec cat /tmp/apply.rc)" "exit status of bs-users apply (fetches failed)"
apply_json=$(st_exec cat /tmp/apply.json)
assert_json_eq '[.[] | select(.type == "error") | .kind] | unique' '["fetch_failed"]' \
    "$(jq -s -c . <<<"$apply_json")" "the only errors are the failed fetches"
assert_json_eq 'select(.type == "summary") | .fetch_failed > 0' true "$apply_json" \
    "the summary counts the failed fetches"
assert_contains "$(st_exec getent passwd localperson)" "localperson:" \
    "useradd's account survived bs-users' write"
assert_contains "$(st_exec getent passwd test-researcher)" "test-researcher:" \
    "bs-users created its people"
assert_success "pwck -r is clean" st_exec pwck -q -r
assert_success "grpck -r is clean" st_exec grpck -r
