#!/usr/bin/env bash
# bs-release serve reached the way people reach it: `bs-release apply` writes its unit; the
# server runs as the service account on /run/bs-release/web.sock; a reviewer logs in with their
# SSH key and forwards a local port to the socket with a real `ssh -L`; the page fetched through
# it names the person the key belongs to. Another local user connecting to the socket is
# themselves, not the reviewer; someone with no release role is refused; a form without the
# person's token is refused; `serve --status` names everyone who connected.
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

st_require_bins bs-users bs-release
st_start releaseweb
st_sh 'echo "127.0.0.1 $(hostname)" >>/etc/hosts'

st_step "people (bs-users apply), the store and the unit (bs-release apply)"
st_tool bs-users --repo /opt/bs --backend test apply
assert_eq 0 "$ST_RC" "bs-users apply"
st_tool bs-release --repo /opt/bs --backend test apply
assert_eq 0 "$ST_RC" "bs-release apply"
unit=$(st_exec cat /etc/systemd/system/bs-release-web.service)
assert_contains "$unit" "User=opensafely" "the unit runs serve as the service account"
assert_contains "$unit" "ExecStart=/usr/local/bin/bs-release serve" "the unit runs serve"
assert_contains "$unit" "RuntimeDirectory=bs-release" "systemd makes the socket's directory"

st_step "a workspace with an output and its manifest"
st_sh 'set -e
    ws=/srv/medium_privacy/workspaces/ws1
    mkdir -p $ws/output $ws/metadata
    printf "group,count\nA,120\nB,3\n" >$ws/output/small.csv
    f=output/small.csv
    printf "{\"workspace\":\"ws1\",\"repo\":null,\"outputs\":{\"%s\":{\"level\":\"moderately_sensitive\",\"job_id\":\"j1\",\"job_request\":\"r1\",\"action\":\"a\",\"user\":\"test-researcher\",\"repo\":\"https://github.com/opensafely/s\",\"commit\":\"c0ffee\",\"size\":%s,\"timestamp\":%s,\"content_hash\":\"%s\",\"excluded\":false,\"message\":null,\"row_count\":2,\"col_count\":2}}}\n" \
        "$f" "$(stat -c %s $ws/$f)" "$(stat -c %Y $ws/$f).5" "$(sha256sum $ws/$f | cut -d" " -f1)" \
        >$ws/metadata/manifest.json
    chown -R opensafely:opensafely /srv/medium_privacy/workspaces'

st_step "the server, as its unit runs it (no systemd here: started as the service account)"
st_sh 'install -d -m 0755 -o opensafely -g opensafely /run/bs-release'
docker exec -d -u opensafely "$ST_C" sh -c \
    'exec /usr/local/bin/bs-release serve >/tmp/serve.out 2>/tmp/serve.log'
for _ in $(seq 100); do
    st_exec test -S /run/bs-release/web.sock && break
    sleep 0.1
done
assert_success "serve listens on /run/bs-release/web.sock" st_exec test -S /run/bs-release/web.sock

st_step "a reviewer forwards a port over SSH and is known by it"
key=$(st_fixture_key test-reviewer)
st_first_login "$key" test-reviewer
# In the background (docker exec -d): `ssh -f` would keep docker exec waiting on its output.
st_exec_bg ssh -i "$key" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ExitOnForwardFailure=yes \
    -N -L 127.0.0.1:8000:/run/bs-release/web.sock test-reviewer@127.0.0.1
st_wait_port 8000
page=$(st_exec curl -sS --max-time 10 http://localhost:8000/)
assert_contains "$page" "Signed in as <b>test-reviewer</b>" "the page names the key's owner"
page=$(st_exec curl -sS --max-time 10 http://localhost:8000/workspaces/ws1/files/output/small.csv)
assert_contains "$page" '<td class="flag" title="low count">3</td>' "the low count is marked"
headers=$(st_exec curl -sS -D - -o /dev/null --max-time 10 http://localhost:8000/workspaces/ws1/raw/output/small.csv)
assert_contains "$headers" "X-Content-Type-Options: nosniff" "raw bytes are nosniff"

st_step "another local user on the socket is themselves; no role, no entry"
page=$(st_exec_as test-researcher curl -sS --max-time 10 --unix-socket /run/bs-release/web.sock http://localhost/)
assert_contains "$page" "Signed in as <b>test-researcher</b>" "test-researcher is test-researcher"
[[ $page != *"<b>test-reviewer</b>"* ]] || st_fail "test-researcher's connection was test-reviewer's"
code=$(st_exec_as nobody curl -s -o /dev/null -w '%{http_code}' --max-time 10 \
    --unix-socket /run/bs-release/web.sock http://localhost/)
assert_eq 403 "$code" "a user with no passwd role is refused"

st_step "a form without the person's token is refused"
code=$(st_exec curl -s -o /dev/null -w '%{http_code}' --max-time 10 -d workspace=ws1 \
    http://localhost:8000/requests)
assert_eq 403 "$code" "a POST without the CSRF token"

st_step "serve --status names everyone who connected (nobody too: refused, but known)"
st_tool sudo -n -u opensafely /usr/local/bin/bs-release serve --status
assert_eq 0 "$ST_RC" "serve --status"
assert_json_eq 'select(.type=="server") | .running' true "$ST_JSON" "the server runs"
assert_eq "nobody,test-researcher,test-reviewer" \
    "$(jq -s -r '[.[] | select(.type=="person") | .user] | sort | join(",")' <<<"$ST_JSON")" \
    "the people served"
