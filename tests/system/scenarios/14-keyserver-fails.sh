#!/usr/bin/env bash
# Keys from a key server that fails. A host override (/etc/bs/local.toml) points bs-users at a
# fake GitHub keys endpoint on loopback inside the container. A researcher whose only new key is
# on the server (not in keys/) logs in with it. Then the server answers 500s, then an HTML page
# with status 200 (a proxy's error page): after each `bs-users keys refresh` the exit status is 1
# with a fetch_failed error record, the keys files are untouched and the researcher still logs in
# with the key from the server; a full `just manage test` meanwhile keeps them too (exit 1).
# When the server answers again with a new key, the refresh installs it and drops the old one.
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

st_require_bins bs-users just
ST_DUMP_FILES="/var/log/fake-keys.log /etc/bs/local.toml"
st_start keyserver

port=8765
user=test-researcher
keyfile=/etc/ssh/authorized_keys.d/$user
served=/srv/fake-keys

# The fake key server (lib.sh): "good" serves $served/keys/<login>.keys, "500" and "html" fail.
st_fake_keyserver "$served" "$port"

st_step "host override: fetch keys from the fake server"
st_sh 'mkdir -p /etc/bs && printf "%s\n" "[users]" "fetch_keys = true" \
    "key_source = \"http://127.0.0.1:$1\"" >/etc/bs/local.toml' "$port"
st_exec cat /etc/bs/local.toml >&2

# mode MODE: what the fake server answers from now on.
mode() { st_sh 'echo "$2" >"$1/mode"' "$served" "$1"; }
# requests PATH: how many requests for PATH the fake server has had, and their statuses.
requests() { st_exec grep -c "^$1 " /var/log/fake-keys.log || true; }

st_step "a key that only the server has"
gh_key=$(st_new_key github-only)
st_sh 'cp /root/keys/github-only.pub "$1/keys/$2.keys"' "$served" "$user"
gh_pub=$(st_exec cat /root/keys/github-only.pub | awk '{ print $1, $2 }')
assert_failure "the server's key is not in keys/$user" \
    st_exec grep -qF "$gh_pub" "/opt/bs/keys/$user"
gh_fp=$(st_exec ssh-keygen -lf "$gh_key" | awk '{ print $2 }')

st_step "converge with the server answering"
st_tool sh -c 'cd /opt/bs && exec just manage test'
assert_eq 0 "$ST_RC" "exit status of 'just manage test'"
assert_json_eq 'select(.type == "summary" and .tool == "bs-users") | [.ok, .fetch_failed]' \
    '[true,0]' "$ST_JSON" "bs-users fetched every login's keys"
(($(requests "/$user.keys") >= 1)) || st_fail "bs-users never asked the server for $user's keys"
assert_contains "$(st_exec cat "$keyfile")" "$gh_pub" "$keyfile has the server's key"
assert_contains "$(st_exec cat "$keyfile")" \
    "$(st_exec awk '/^ssh-/ { print $1, $2; exit }' "/opt/bs/keys/$user")" \
    "$keyfile still has the key from keys/$user"

st_step "$user logs in with the key from the server"
st_first_login "$gh_key" "$user"
assert_eq "$user" "$(st_ssh "$gh_key" "$user" id -un)" "ssh -i with the server's key"
assert_contains " $(st_ssh "$gh_key" "$user" id -nG) " " researchers " \
    "$user's session has the researchers group"
dev_keys=$(st_exec cat /etc/ssh/authorized_keys.d/test-developer)

# failed_refresh WHAT EXPECTED-MESSAGE: a refresh against a failing server exits 1 with a
# fetch_failed error for $user, keeps every keys file as it was, and $user still logs in.
failed_refresh() {
    local what=$1 message=$2 before_keys before_requests all
    before_keys=$(st_exec cat "$keyfile")
    before_requests=$(requests "/$user.keys")
    st_tool bs-users keys refresh
    assert_eq 1 "$ST_RC" "$what: exit status of bs-users keys refresh" || return 1
    assert_json_lines "$ST_JSON" "$what: stdout" || return 1
    all=$(jq -s -c . <<<"$ST_JSON")
    assert_json_eq "[.[] | select(.type == \"error\" and .kind == \"fetch_failed\" and .target == \"$user\")] | length" \
        1 "$all" "$what: one fetch_failed error record for $user" || return 1
    assert_contains \
        "$(jq -r "select(.type == \"error\" and .target == \"$user\") | .message" <<<"$ST_JSON")" \
        "$message" "$what: the error says why" || return 1
    assert_json_eq '[.[] | select(.type == "summary")] | last | [.tool, .ok]' \
        '["bs-users",false]' "$all" "$what: the summary is not ok" || return 1
    assert_json_eq '[.[] | select(.type == "summary")] | last | .fetch_failed > 0' true "$all" \
        "$what: the summary counts the failed fetches" || return 1
    (($(requests "/$user.keys") > before_requests)) ||
        st_fail "$what: the refresh did not ask the server" || return 1
    assert_eq "$before_keys" "$(st_exec cat "$keyfile")" "$what: $keyfile is unchanged" ||
        return 1
    assert_eq "$dev_keys" "$(st_exec cat /etc/ssh/authorized_keys.d/test-developer)" \
        "$what: test-developer's keys are unchanged" || return 1
    assert_eq "$user" "$(st_ssh "$gh_key" "$user" id -un)" \
        "$what: $user still logs in with the key from the server" || return 1
}

st_step "the server answers 500"
mode 500
failed_refresh "500s" "HTTP 500"

st_step "the server answers 200 with an HTML page"
mode html
failed_refresh "HTML page" "not a list of keys"

st_step "a full converge during the outage keeps the keys too"
before_keys=$(st_exec cat "$keyfile")
st_tool sh -c 'cd /opt/bs && exec just manage test'
assert_eq 1 "$ST_RC" "exit status of 'just manage test' while fetches fail (an item failed)"
assert_json_eq "select(.type == \"error\" and .target == \"$user\") | .kind" fetch_failed \
    "$ST_JSON" "manage reports the failed fetch of $user"
assert_json_eq 'select(.type == "summary" and .tool == "bs-users") | [.ok, .fetch_failed > 0]' \
    '[false,true]' "$ST_JSON" "bs-users' summary counts the failed fetches"
assert_eq "$before_keys" "$(st_exec cat "$keyfile")" "manage left $keyfile as it was"
assert_eq "$user" "$(st_ssh "$gh_key" "$user" id -un)" \
    "$user still logs in with the key from the server after manage"

st_step "the server recovers with a new key: the refresh installs it, the old one goes"
new_key=$(st_new_key github-rotated)
st_sh 'cp /root/keys/github-rotated.pub "$1/keys/$2.keys"' "$served" "$user"
mode good
st_tool bs-users keys refresh
assert_eq 0 "$ST_RC" "exit status of bs-users keys refresh"
assert_json_eq '[.[] | select(.type == "summary")] | last | [.ok, .fetch_failed]' '[true,0]' \
    "$(jq -s -c . <<<"$ST_JSON")" "the refresh's summary"
assert_json_eq "select(.type == \"keys\" and .target == \"$user\") | .removed" "[\"$gh_fp\"]" \
    "$ST_JSON" "the refresh reports the old server key removed"
assert_eq "$user" "$(st_ssh "$new_key" "$user" id -un)" "ssh -i with the new key"
out=$(st_ssh "$gh_key" "$user" id 2>&1) && st_fail "the replaced key still logs in: $out"
assert_contains "$out" "Permission denied" "the replaced key is refused"
