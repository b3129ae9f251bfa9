#!/usr/bin/env bash
# Self-test of the harness; needs no bs binary. The container has what later scenarios rely on
# (isolation, the checkout, sshd with real key logins, sudo, chrony, POSIX ACLs on the image's
# own file system and on a volume), and the assertions and the failure dump really fail.
# systest-nested: run
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

vol=$(st_volume data)
st_start harness -v "$vol:/vol"

st_step "the container is isolated and holds the checkout"
assert_eq "lo 127.0.0.1/8" "$(st_exec ip -o -4 addr show | awk '{ print $2, $4 }')" \
    "the only IPv4 address is loopback (--network none)"
assert_success "the checkout is at /opt/bs" st_exec test -f /opt/bs/tests/system/lib.sh
assert_failure "target/ is not copied" st_exec test -e /opt/bs/target
if st_just_path >/dev/null; then
    assert_success "the copied just runs in the container" st_exec just --version
fi

st_step "sshd runs and its configuration parses"
assert_success "sshd is running" st_exec pgrep -x sshd
assert_success "sshd -t passes" st_exec sshd -t

st_step "ssh without a key is refused, with the right key it logs in"
if out=$(st_exec ssh -o BatchMode=yes -o StrictHostKeyChecking=no -o ConnectTimeout=10 \
    root@127.0.0.1 true 2>&1); then
    st_fail "root logged in over ssh without any key"
fi
assert_contains "$out" "Permission denied" "refused for want of a key (not a broken sshd)"
st_exec useradd --create-home --shell /bin/bash st-user
st_exec ssh-keygen -q -t ed25519 -N '' -C st-key -f /root/st-key
st_exec ssh-keygen -q -t ed25519 -N '' -C other-key -f /root/other-key
st_sh 'install -d -m 700 -o st-user -g st-user ~st-user/.ssh &&
    install -m 600 -o st-user -g st-user /root/st-key.pub ~st-user/.ssh/authorized_keys'
assert_eq st-user "$(st_ssh /root/st-key st-user id -un)" "key login as st-user"
assert_failure "login with a key not in authorized_keys" st_ssh /root/other-key st-user true

st_step "sudo and chrony are there"
assert_success "sudo -V" st_exec sudo -V
assert_contains "$(st_exec chronyd -v)" "chronyd (chrony) version" "chronyd -v"

st_step "POSIX ACLs work on the image's file system and on a volume"
for dir in /srv /vol; do
    st_sh 'echo secret >"$1/acl-file" && chmod 600 "$1/acl-file" &&
        setfacl -m u:st-user:r "$1/acl-file"' "$dir"
    assert_contains "$(st_exec getfacl -cp "$dir/acl-file")" "user:st-user:r--" \
        "an ACL set on $dir reads back"
    assert_eq secret "$(st_exec_as st-user cat "$dir/acl-file")" \
        "the ACL lets st-user read a 0600 root file on $dir"
    st_exec setfacl -m u:st-user:- "$dir/acl-file"
    assert_failure "an ACL entry with no rights denies st-user on $dir" \
        st_exec_as st-user cat "$dir/acl-file"
    st_sh 'mkdir "$1/acl-dir" && setfacl -d -m u:st-user:rwx "$1/acl-dir" &&
        touch "$1/acl-dir/new"' "$dir"
    assert_contains "$(st_exec getfacl -cp "$dir/acl-dir/new")" "user:st-user:rwx" \
        "a default ACL on $dir is inherited"
done

st_step "st_tool keeps the JSON and the exit status"
st_tool sh -c 'echo "{\"type\":\"change\",\"changed\":true}";
    echo "{\"type\":\"summary\",\"changed\":1,\"ok\":false}"; echo "a note" >&2; exit 3'
assert_eq 3 "$ST_RC" "st_tool's exit status"
assert_json_eq 'select(.type == "summary") | .changed' 1 "$ST_JSON" "summary.changed"
assert_json_eq '.type' $'change\nsummary' "$ST_JSON" "record types as plain text"
assert_eq "$ST_JSON" "$(<"$ST_LOG_DIR/last.json")" "last.json holds the last tool's stdout"

st_step "the assertions pass when they should"
assert_eq a a "equal strings"
assert_contains "abc" "b" "substring"
assert_not_contains "abc" "x" "absent substring"
assert_success "true succeeds" true
assert_failure "false fails" false
assert_json_eq '.ok' true '{"ok":true}' "JSON value"
assert_json_eq '.kind' missing_key '{"kind":"missing_key"}' "plain text"

st_step "the assertions fail when they should, saying so"
# expect_fail WHAT CMD...: CMD (an assertion) must return non-zero and print a failure message.
expect_fail() {
    local what=$1 err
    shift
    if err=$("$@" 2>&1); then
        st_fail "$what passed but should have failed"
    fi
    assert_contains "$err" "ASSERTION FAILED: self-test" "$what's message"
}
expect_fail "assert_eq" assert_eq a b "self-test"
expect_fail "assert_contains" assert_contains "abc" "x" "self-test"
expect_fail "assert_not_contains" assert_not_contains "abc" "b" "self-test"
expect_fail "assert_success" assert_success "self-test" false
expect_fail "assert_failure" assert_failure "self-test" true
expect_fail "assert_json_eq (JSON)" assert_json_eq '.changed' 0 '{"changed":1}' "self-test"
expect_fail "assert_json_eq (text)" assert_json_eq '.type' summary '{"type":"error"}' "self-test"
expect_fail "assert_json_eq (not JSON)" assert_json_eq '.a' 1 'not json' "self-test"
if (assert_eq a b "self-test in a subshell") 2>/dev/null; then
    st_fail "a failing assertion in a subshell returned zero"
fi

st_step "a failing scenario fails, dumps its logs and the tool's JSON, and cleans up"
nested="$ST_LOG_DIR/nested"
mkdir -p "$nested"
rc=0
ST_LOG_DIR=$nested BS_SYSTEST_KEEP=0 bash -c 'set -euo pipefail; source "$1"
    st_start nested
    st_tool sh -c "echo {\\\"type\\\":\\\"summary\\\",\\\"ok\\\":false}"
    assert_eq 1 2 "planted failure"
    echo "not reached"' nested "$ST_REPO/tests/system/lib.sh" >"$nested/output.log" 2>&1 || rc=$?
assert_eq 1 "$rc" "exit status of a scenario whose assertion failed"
assert_not_contains "$(<"$nested/output.log")" "not reached" "the scenario stopped at the failure"
assert_success "the failure wrote a dump" test -s "$nested/dump.txt"
dump=$(<"$nested/dump.txt")
assert_contains "$dump" '{"type":"summary","ok":false}' "the dump has the tool's JSON"
assert_contains "$dump" "/var/log/sshd.log ===" "the dump has sshd's log"
assert_contains "$dump" "Server listening on" "sshd's log has content"
assert_contains "$dump" ": processes ===" "the dump has the processes"
assert_eq "" "$(docker ps -aq --filter name=bs-st-nested-)" "the failed scenario's container is gone"
