#!/usr/bin/env bash
# Removing a developer from the list disables them on the next `just manage test`: their SSH
# login fails (keys gone; and the expired account refuses even a key planted by hand), their home
# and files are intact, `id` shows none of the managed groups (docker and sudo included), the
# account is locked, expired and has no shell; the key refresh does not bring the keys back;
# nobody else is touched, and a further run changes nothing. Putting them back restores the
# groups, the keys and the login.
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

st_require_bins bs-users just
st_start readd

manage() { # WHAT: run `just manage test`; it and bs-users must succeed
    st_tool sh -c 'cd /opt/bs && exec just manage test'
    assert_eq 0 "$ST_RC" "$1: exit status of 'just manage test'"
    assert_json_eq 'select(.type == "summary" and .tool == "bs-users") | [.ok, .failed]' \
        '[true,0]' "$ST_JSON" "$1: bs-users' summary is ok"
}
user=test-developer
list=/opt/bs/backends/test/developers
managed_groups=(developers researchers reviewers docker sudo)
keyfile=/etc/ssh/authorized_keys.d/$user

st_step "converge; $user logs in and writes a file in their home"
manage "first run"
key=$(st_fixture_key "$user")
st_first_login "$key" "$user"
st_ssh "$key" "$user" 'echo "work in progress" >notes.txt && mkdir -p project && echo data >project/data.csv'
assert_eq "$user" "$(st_exec stat -c %U "/home/$user/notes.txt")" "the file belongs to $user"
caps_groups=$(st_exec id -nG testcapitals)
caps_shadow=$(st_exec getent shadow testcapitals)

st_step "remove $user from $list and converge"
st_exec sed -i -E "/^[[:space:]]*${user}[[:space:]]*(#.*)?$/d" "$list"
assert_failure "$user is no longer in $list" st_exec grep -qw "$user" "$list"
assert_success "TestCapitals is still in $list" st_exec grep -q '^TestCapitals' "$list"
manage "after the removal"
assert_json_eq "[.[] | select(.target == \"$user\" and .changed == true)] | length > 0" true \
    "$(jq -s -c . <<<"$ST_JSON")" "the run changed something about $user"

st_step "$user can no longer log in"
out=$(st_ssh "$key" "$user" id 2>&1) && st_fail "$user still logs in after removal: $out"
assert_contains "$out" "Permission denied" "sshd refuses $user"
assert_failure "$user's keys file is gone" st_exec test -e "$keyfile"
assert_failure "$user has no keys in their home either" \
    st_exec test -e "/home/$user/.ssh/authorized_keys"

st_step "the home is intact"
assert_eq "work in progress" "$(st_exec cat "/home/$user/notes.txt")" "notes.txt survives"
assert_eq "data" "$(st_exec cat "/home/$user/project/data.csv")" "project/data.csv survives"
assert_eq "750 $user $user" "$(st_exec stat -c '%a %U %G' "/home/$user")" \
    "the home keeps its owner and mode"

st_step "no managed group is left, docker and sudo included"
assert_eq "$user" "$(st_exec id -nG "$user")" "id -nG $user shows only the user's own group"
for group in "${managed_groups[@]}"; do
    members=$(st_exec getent group "$group" | cut -d: -f4)
    assert_not_contains ",$members," ",$user," "$user is not a member of $group"
done

st_step "the account is locked, expired and has no shell"
chage=$(st_exec chage -l "$user" | tr -s ' \t' ' ')
printf '%s\n' "$chage" >&2
assert_contains "$chage" "Account expires : Jan 02, 1970" \
    "chage -l shows the account expired (expiry day 1)"
shadow=$(st_exec getent shadow "$user")
[[ $(cut -d: -f2 <<<"$shadow") == '!'* ]] || st_fail "the password is not locked: $shadow"
assert_eq 1 "$(cut -d: -f8 <<<"$shadow")" "shadow expiry day"
assert_eq L "$(st_exec passwd -S "$user" | awk '{ print $2 }')" "passwd -S status"
assert_eq /usr/sbin/nologin "$(st_exec getent passwd "$user" | cut -d: -f7)" "login shell"

st_step "the expired account refuses even a key planted by hand"
st_sh 'cp "/opt/bs/keys/$1" "$2" && chmod 644 "$2"' "$user" "$keyfile"
denied="Access denied for user $user by PAM account configuration"
before=$(st_sshd_count "$denied")
out=$(st_ssh "$key" "$user" id 2>&1) && st_fail "a planted key logs a disabled user in: $out"
(($(st_sshd_count "$denied") > before)) ||
    st_fail "sshd did not log '$denied' (the expired account must refuse a valid key)"
st_exec rm -f "$keyfile"

st_step "the key refresh (the cron job) does not bring the keys back"
st_tool bs-users keys refresh
assert_eq 0 "$ST_RC" "exit status of bs-users keys refresh"
assert_json_eq "[.[] | select(.target == \"$user\")] | length" 0 "$(jq -s -c . <<<"$ST_JSON")" \
    "the refresh leaves the disabled $user alone"
assert_failure "$user's keys file is still gone after the refresh" st_exec test -e "$keyfile"

st_step "nobody else was touched"
assert_eq "$caps_groups" "$(st_exec id -nG testcapitals)" "testcapitals' groups"
assert_eq "$caps_shadow" "$(st_exec getent shadow testcapitals)" "testcapitals' shadow entry"

st_step "another run changes nothing: disabling is stable"
manage "second run after the removal"
assert_json_eq '[.[] | select(.tool == "bs-users" and .changed == true)] | length' 0 \
    "$(jq -s -c . <<<"$ST_JSON")" "bs-users changed nothing"

st_step "put $user back: the login works again"
st_exec sed -i "\$a $user" "$list"
manage "after putting $user back"
assert_eq "$user" "$(st_ssh "$key" "$user" id -un)" "ssh -i as $user works again"
groups=$(st_ssh "$key" "$user" id -nG)
for group in "${managed_groups[@]}"; do
    assert_contains " $groups " " $group " "$user is back in $group"
done
assert_eq /bin/bash "$(st_exec getent passwd "$user" | cut -d: -f7)" "the login shell is back"
assert_contains "$(st_exec chage -l "$user" | tr -s ' \t' ' ')" "Account expires : never" \
    "the account no longer expires"
assert_eq "work in progress" "$(st_ssh "$key" "$user" cat notes.txt)" \
    "$user finds their notes again"
