#!/usr/bin/env bash
# bs-perms on a fresh Debian, after bs-users made the test backend's people: the privacy trees
# really grant what they promise (checked as the users themselves with runuser, not by reading
# ACL bits), sudo -l shows exactly the configured rules, sshd -T shows the hardening, a second
# apply changes nothing, and check reports drift with exit 3.
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

st_require_bins bs-users bs-perms
st_start perms

run_tool() { st_tool sh -c "cd /opt/bs && BS_BACKEND=test BS_REPO=/opt/bs exec $*"; }

st_step "bs-users apply, then bs-perms apply"
run_tool bs-users apply
assert_eq 0 "$ST_RC" "bs-users apply"
for u in test-developer testcapitals test-researcher test-reviewer opensafely; do
    assert_success "user $u exists" st_exec id "$u"
done
run_tool bs-perms apply
assert_eq 0 "$ST_RC" "bs-perms apply"
assert_json_eq 'select(.type == "summary") | [.ok, .failed]' '[true,0]' "$ST_JSON" "bs-perms summary"
assert_json_eq 'select(.type == "command" and .argv[0] == "kill") | .status' 0 "$ST_JSON" \
    "the live sshd was told to reload (live root)"
assert_success "sshd still runs after the reload" st_exec pgrep -x sshd

st_step "the trees: owners, modes and ACLs"
assert_eq "opensafely opensafely 750" "$(st_exec stat -c '%U %G %a' /srv/high_privacy/workspaces)" \
    "high privacy workspaces"
assert_eq "opensafely opensafely 750" "$(st_exec stat -c '%U %G %a' /srv/medium_privacy/requests)" \
    "medium privacy requests"
acl=$(st_exec getfacl -cp /srv/medium_privacy/workspaces)
assert_contains "$acl" "group:reviewers:r-x" "access ACL on medium privacy"
assert_contains "$acl" "default:group:reviewers:r-x" "default ACL on medium privacy"
assert_contains "$acl" "default:mask::r-x" "default mask on medium privacy"
assert_not_contains "$(st_exec getfacl -cp /srv/high_privacy/workspaces)" "researchers" \
    "the test backend gives researchers no ACL on high privacy"

st_step "a 0600 file a job wrote in medium privacy: reviewers read it after apply"
st_exec runuser -u opensafely -- sh -c 'echo secret > /srv/medium_privacy/workspaces/out.csv &&
    chmod 600 /srv/medium_privacy/workspaces/out.csv'
st_exec runuser -u opensafely -- sh -c 'echo hidden > /srv/high_privacy/workspaces/raw.csv &&
    chmod 600 /srv/high_privacy/workspaces/raw.csv'
assert_failure "before apply the reviewer cannot read it" \
    st_exec runuser -u test-reviewer -- cat /srv/medium_privacy/workspaces/out.csv
run_tool bs-perms check
assert_eq 3 "$ST_RC" "check finds the drift"
assert_json_eq 'select(.type == "path" and .target == "/srv/medium_privacy/workspaces/out.csv") | .differs' \
    '["mode","acl","mask"]' "$ST_JSON" "what differs"
run_tool bs-perms apply
assert_eq 0 "$ST_RC" "bs-perms apply"
assert_eq secret "$(st_exec runuser -u test-reviewer -- cat /srv/medium_privacy/workspaces/out.csv)" \
    "the reviewer reads the medium-privacy file"
assert_contains "$(st_exec getfacl -cp /srv/medium_privacy/workspaces/out.csv)" "group:reviewers:r--" \
    "getfacl shows the reviewers entry"
assert_failure "a researcher cannot read high privacy" \
    st_exec runuser -u test-researcher -- cat /srv/high_privacy/workspaces/raw.csv
assert_failure "a reviewer cannot read high privacy" \
    st_exec runuser -u test-reviewer -- cat /srv/high_privacy/workspaces/raw.csv
assert_failure "a developer without sudo cannot read high privacy" \
    st_exec runuser -u test-developer -- cat /srv/high_privacy/workspaces/raw.csv
assert_eq hidden "$(st_exec runuser -u opensafely -- cat /srv/high_privacy/workspaces/raw.csv)" \
    "the service account reads high privacy"

st_step "sudo -l shows exactly the configured rules"
rules() { # the rule lines sudo lists for a user, trimmed
    st_exec sudo -l -U "$1" | awk '/may run the following commands/ { on = 1; next } on && NF { $1 = $1; print }'
}
dev=$(rules test-developer)
# Debian's own /etc/sudoers gives %sudo the same; bs-developers adds %developers;
# bs-release-* let every role run bs-release as the service account.
release_rule="(opensafely) NOPASSWD: /usr/local/bin/bs-release *"
assert_eq "$(printf '%s\n' "(ALL : ALL) ALL" "$release_rule" | sort -u)" "$(sort -u <<<"$dev")" \
    "test-developer: every command with a password, bs-release as opensafely"
assert_contains "$(st_exec sudo -l -U test-developer)" "use_pty" "Defaults use_pty"
assert_contains "$(st_exec sudo -l -U test-developer)" "logfile=/var/log/sudo.log" "Defaults logfile"
expected=""
for unit in bs-jobs-poller.service bs-jobs-worker.service; do
    for verb in start stop restart status; do
        expected+="/usr/bin/systemctl $verb $unit, "
    done
done
expected="(root) NOPASSWD: ${expected%, }"
assert_eq "$expected" "$(rules opensafely | tr '\n' ' ' | sed 's/ *$//; s/, */, /g')" \
    "opensafely: exactly start/stop/restart/status of its units"
for u in test-reviewer test-researcher; do
    assert_eq "$release_rule" "$(rules "$u" | sort -u)" "$u: only bs-release, as opensafely"
done
assert_eq "440 root root" "$(st_exec stat -c '%a %U %G' /etc/sudoers.d/bs-developers)" "sudoers file mode"
assert_success "the whole sudoers config parses" st_exec visudo -c

st_step "sshd and login hardening"
sshd_t=$(st_exec sshd -T)
for kv in "permitrootlogin no" "passwordauthentication no" "kbdinteractiveauthentication no" \
    "maxauthtries 4" "x11forwarding no" "clientaliveinterval 300" "maxstartups 10:30:60" \
    "banner /etc/issue.net" \
    "macs hmac-sha2-512-etm@openssh.com,hmac-sha2-256-etm@openssh.com,hmac-sha2-512,hmac-sha2-256"; do
    assert_contains "$sshd_t" "$kv" "sshd -T"
done
assert_contains "$(st_exec grep -E '^UMASK' /etc/login.defs)" "027" "login.defs UMASK"
assert_eq 1 "$(st_exec grep -cE '^UMASK' /etc/login.defs)" "one active UMASK line"
assert_success "the rest of login.defs is kept" st_exec grep -q '^ENCRYPT_METHOD' /etc/login.defs
assert_eq 900 "$(st_exec runuser -u test-developer -- bash -lc 'echo $TMOUT')" "TMOUT in a login shell"
assert_failure "TMOUT is readonly" st_exec runuser -u test-developer -- bash -lc 'TMOUT=0'
assert_contains "$(st_exec cat /etc/issue.net)" "authorised use only" "the banner"

st_step "a second apply changes nothing; check is clean"
run_tool bs-perms apply
assert_eq 0 "$ST_RC" "second apply"
assert_json_eq 'select(.type == "summary") | [.changed, .paths_differing]' '[0,0]' "$ST_JSON" \
    "the second apply changed nothing"
run_tool bs-perms check --summary
assert_eq 0 "$ST_RC" "check after apply"
assert_json_eq '[.[] | select(.type == "path")] | length' 0 "$(jq -s -c . <<<"$ST_JSON")" \
    "--summary prints no path records"

st_step "a sudoers file name with a dot is refused before anything changes"
st_exec sh -c 'mkdir -p /etc/bs && printf "[[perms.sudoers]]\nname = \"bs.rules\"\nprincipal = \"opensafely\"\nrun_as = \"root\"\ncommands = [\"/usr/bin/true\"]\n" > /etc/bs/local.toml'
run_tool bs-perms apply
assert_eq 2 "$ST_RC" "config error"
assert_json_eq 'select(.type == "error") | .kind' config "$ST_JSON" "a config error record"
assert_failure "no file was written" st_exec test -e /etc/sudoers.d/bs.rules
st_exec rm /etc/bs/local.toml
