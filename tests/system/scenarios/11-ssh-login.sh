#!/usr/bin/env bash
# Real SSH logins after `just manage test`: a developer logs in with their key (the private half
# of keys/<login> is in tests/fixtures/ssh): sshd accepts the key at once, the first login demands
# a new password (new accounts have an empty, expired one), and once it is set `ssh -i` works with
# the groups of their lists. A key not in the repository is refused, and so is another person's;
# root cannot log in even with a key in place; a correct password is refused (a second sshd that
# allows passwords proves the client really offered it); `sshd -T` shows the effective settings.
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

st_require_bins bs-users just
ST_DUMP_FILES=/var/log/sshd-password.log
st_start login

# has_line TEXT LINE: TEXT has LINE as a whole line.
has_line() { [[ $'\n'$1$'\n' == *$'\n'"$2"$'\n'* ]]; }

st_step "converge"
st_tool sh -c 'cd /opt/bs && exec just manage test'
assert_eq 0 "$ST_RC" "exit status of 'just manage test'"
assert_json_eq 'select(.type == "summary" and .tool == "bs-users") | .ok' true "$ST_JSON" \
    "bs-users' summary is ok"

st_step "sshd's effective configuration"
assert_success "sshd -t accepts the configuration" st_exec sshd -t
sshd_t=$(st_exec sshd -T)
printf 'sshd -T (authentication and login settings):\n%s\n' "$(grep -E \
    '^(authorizedkeysfile|permitrootlogin|passwordauthentication|kbdinteractiveauthentication|pubkeyauthentication|permitemptypasswords|authenticationmethods|usepam|allowgroups|allowusers|denygroups|denyusers|maxauthtries|x11forwarding|allowtcpforwarding|allowagentforwarding|permittunnel|strictmodes) ' \
    <<<"$sshd_t")" >&2
has_line "$sshd_t" "authorizedkeysfile /etc/ssh/authorized_keys.d/%u" ||
    st_fail "sshd -T: AuthorizedKeysFile is not /etc/ssh/authorized_keys.d/%u alone:
$(grep '^authorizedkeysfile' <<<"$sshd_t")"
dropin=/etc/ssh/sshd_config.d/00-bs-authorized-keys.conf
assert_eq "644 root root" "$(st_exec stat -c '%a %U %G' "$dropin")" "$dropin's owner and mode"
keyfile=/etc/ssh/authorized_keys.d/test-developer
assert_eq "644 root root" "$(st_exec stat -c '%a %U %G' "$keyfile")" "$keyfile's owner and mode"
assert_eq "755 root root" "$(st_exec stat -c '%a %U %G' /etc/ssh/authorized_keys.d)" \
    "the keys directory's owner and mode"

st_step "a developer logs in with the key from keys/"
dev_key=$(st_fixture_key test-developer)
st_first_login "$dev_key" test-developer
dev_password=$ST_PASSWORD
assert_eq test-developer "$(st_ssh "$dev_key" test-developer id -un)" "ssh -i as test-developer"
groups=$(st_ssh "$dev_key" test-developer id -nG)
for group in developers researchers reviewers docker sudo; do
    assert_contains " $groups " " $group " "test-developer's login session has group $group"
done
assert_failure "the developer cannot edit their own keys file" \
    st_ssh "$dev_key" test-developer "echo x >>$keyfile"
assert_failure "the developer cannot add a keys file of their own making" \
    st_ssh "$dev_key" test-developer "echo x >/etc/ssh/authorized_keys.d/new"

st_step "a login with capitals (TestCapitals) logs in as testcapitals"
caps_key=$(st_fixture_key TestCapitals)
st_first_login "$caps_key" testcapitals
assert_eq testcapitals "$(st_ssh "$caps_key" testcapitals id -un)" "ssh -i as testcapitals"

st_step "keys not in the repository for that person are refused"
stranger_key=$(st_new_key stranger)
out=$(st_ssh "$stranger_key" test-developer id 2>&1) && st_fail "a key not in keys/ logged in: $out"
assert_contains "$out" "Permission denied" "a key not in keys/ is refused by sshd"
researcher_key=$(st_fixture_key test-researcher)
out=$(st_ssh "$researcher_key" test-developer id 2>&1) &&
    st_fail "test-researcher's key logged in as test-developer: $out"
assert_contains "$out" "Permission denied" "another person's key is refused"
assert_eq 0 "$(st_sshd_count "$(st_exec ssh-keygen -lf "$stranger_key" | awk '{ print $2 }')")" \
    "sshd never accepted the stranger's key"

# Hardening is bs-perms' job (sshd drop-in); these hold only once it is in the backend's chain.
# Each is checked and reported; the scenario fails at the end if any does not hold.
st_step "hardening: root and password logins are refused"
failures=()
for setting in "permitrootlogin no" "passwordauthentication no" \
    "kbdinteractiveauthentication no" "permitemptypasswords no"; do
    if ! has_line "$sshd_t" "$setting"; then
        printf 'HARDENING MISSING: sshd -T has "%s" (expected "%s")\n' \
            "$(grep "^${setting% *} " <<<"$sshd_t")" "$setting" >&2
        failures+=("sshd -T: $setting")
    fi
done

# Root, with a key where sshd looks (both places, whatever AuthorizedKeysFile says).
root_key=$(st_new_key root-login)
st_sh 'install -d -m 700 /root/.ssh && cp /root/keys/root-login.pub /root/.ssh/authorized_keys &&
    cp /root/keys/root-login.pub /etc/ssh/authorized_keys.d/root'
if out=$(st_ssh "$root_key" root id -un 2>&1); then
    printf 'HARDENING MISSING: root logged in with a key: %s\n' "$out" >&2
    failures+=("root login with a key")
else
    assert_contains "$out" "Permission denied" "root's key login is refused by sshd"
fi
st_exec rm -f /root/.ssh/authorized_keys /etc/ssh/authorized_keys.d/root

# Passwords: test-developer's real password, typed by SSH_ASKPASS (BatchMode would not even try).
st_sh 'printf "#!/bin/sh\necho \"\$ST_PASSWORD\"\n" >/root/askpass && chmod 700 /root/askpass'
password_login() { # PORT: a password-only login as test-developer
    docker exec -i -e ST_PASSWORD="$dev_password" -e SSH_ASKPASS=/root/askpass \
        -e SSH_ASKPASS_REQUIRE=force -e DISPLAY=none "$ST_C" setsid -w ssh -p "$1" \
        -o PreferredAuthentications=password,keyboard-interactive -o PubkeyAuthentication=no \
        -o NumberOfPasswordPrompts=1 -o StrictHostKeyChecking=no \
        -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=10 \
        test-developer@127.0.0.1 id -un </dev/null
}
# The control: an sshd of our own on port 2222 that allows passwords lets that same client in.
st_sh 'printf "%s\n" "Port 2222" "ListenAddress 127.0.0.1" "HostKey /etc/ssh/ssh_host_ed25519_key" \
    "UsePAM yes" "PasswordAuthentication yes" "KbdInteractiveAuthentication no" \
    "PidFile /run/sshd-password.pid" >/root/sshd-password.conf'
st_exec /usr/sbin/sshd -f /root/sshd-password.conf -E /var/log/sshd-password.log
st_wait_port 2222
assert_eq test-developer "$(password_login 2222 2>&1)" \
    "control: the password login works against an sshd that allows passwords"
if out=$(password_login 22 2>&1); then
    printf 'HARDENING MISSING: test-developer logged in with a password: %s\n' "$out" >&2
    failures+=("password login")
else
    assert_contains "$out" "Permission denied" "the password login is refused by sshd"
    assert_eq 0 "$(st_sshd_count "Accepted password for")" "sshd (port 22) never accepted a password"
fi

((${#failures[@]} == 0)) ||
    st_fail "hardening does not hold (bs-perms' sshd drop-in missing?): $(printf '[%s] ' "${failures[@]}")"
