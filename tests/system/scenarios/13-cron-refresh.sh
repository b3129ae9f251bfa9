#!/usr/bin/env bash
# The cron path of the key refresh: after `just manage test` (the test backend says
# refresh = "cron") /etc/cron.d/bs-users-keys exists, cron itself loads it without complaint, and
# its command, taken from the installed line and run the way cron runs it (sh -c, cron's
# environment, from root's home, no repository around), refreshes the keys: exit 0, a JSON Lines
# summary that is ok, and a keys file that went missing is back.
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

st_require_bins bs-users just
ST_DUMP_FILES="/var/log/cron-syslog.log /root/cron-run.out"
st_start cron

cron_file=/etc/cron.d/bs-users-keys

st_step "converge"
st_tool sh -c 'cd /opt/bs && exec just manage test'
assert_eq 0 "$ST_RC" "exit status of 'just manage test'"

st_step "the cron entry is installed the way cron wants it"
assert_eq "644 root root" "$(st_exec stat -c '%a %U %G' "$cron_file")" \
    "$cron_file is root's and not writable by others (cron ignores it otherwise)"
[[ ${cron_file##*/} =~ ^[A-Za-z0-9_-]+$ ]] ||
    st_fail "cron ignores files in /etc/cron.d whose names have other characters: $cron_file"
assert_eq "" "$(st_exec tail -c 1 "$cron_file")" "$cron_file ends with a newline"
cron_text=$(st_exec cat "$cron_file")
printf '%s:\n%s\n' "$cron_file" "$cron_text" >&2
# The job lines: not comments, not blank, not VAR=value.
jobs=$(grep -Ev '^[[:space:]]*(#|$)|^[[:space:]]*[A-Za-z_][A-Za-z0-9_]*[[:space:]]*=' \
    <<<"$cron_text" || true)
assert_eq 1 "$(grep -c . <<<"$jobs")" "$cron_file has one job line"
read -r m h dom mon dow cron_user cmd <<<"$jobs"
assert_eq root "$cron_user" "the job runs as root"
for field in "$m" "$h" "$dom" "$mon" "$dow"; do
    [[ $field =~ ^(\*|[0-9]+(-[0-9]+)?)(/[0-9]+)?(,[0-9]+(-[0-9]+)?)*$ ]] ||
        st_fail "not a cron time field: '$field' in: $jobs"
done
assert_contains "$cmd" "bs-users keys refresh" "the job runs bs-users keys refresh"

st_step "cron loads the file without complaint"
# cron reports file problems to syslog only: listen on /dev/log while cron starts. A planted bad
# file must be reported, or the silence about ours would prove nothing.
st_sh 'cat >/root/devlog.py <<"EOF"
import os, socket, sys
path = "/dev/log"
if os.path.exists(path):
    os.unlink(path)
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
os.chmod(path, 0o666)
with open(sys.argv[1], "a", buffering=1) as log:
    while True:
        log.write(s.recv(65536).decode(errors="replace") + "\n")
EOF'
st_exec_bg python3 /root/devlog.py /var/log/cron-syslog.log
for ((i = 0; i < 50; i++)); do
    st_exec test -S /dev/log && break
    sleep 0.1
done
st_sh 'printf "61 * * * * root true\n" >/etc/cron.d/zz-bs-systest-bad'
st_exec cron
for ((i = 0; i < 50; i++)); do
    st_exec grep -q 'zz-bs-systest-bad' /var/log/cron-syslog.log && break
    sleep 0.1
done
sleep 1 # files are read in order: give ours (read before zz-*) the same chance
cron_log=$(st_exec cat /var/log/cron-syslog.log)
printf 'cron said:\n%s\n' "$cron_log" >&2
assert_contains "$cron_log" "zz-bs-systest-bad" "control: cron reports a bad file in /etc/cron.d"
assert_not_contains "$cron_log" "bs-users-keys" "cron has nothing to say about $cron_file"
st_sh 'kill "$(cat /run/crond.pid)"; rm -f /etc/cron.d/zz-bs-systest-bad'

st_step "the installed command refreshes the keys, run as cron runs it"
# The entry sleeps a random 0..300 s first; run it with at most 1 s, otherwise as installed.
if [[ $cmd == *"--random-delay "* ]]; then
    run_cmd=$(sed -E 's/--random-delay [0-9]+/--random-delay 1/' <<<"$cmd")
else
    run_cmd=$cmd
fi
# cron's environment: HOME, LOGNAME and SHELL from the entry's user, PATH=/usr/bin:/bin, then
# the VAR=value lines of the file override.
env_args=(HOME=/root LOGNAME=root USER=root SHELL=/bin/sh PATH=/usr/bin:/bin)
while IFS= read -r line; do
    env_args+=("$(sed -E 's/^[[:space:]]*([A-Za-z_][A-Za-z0-9_]*)[[:space:]]*=[[:space:]]*/\1=/' \
        <<<"$line")")
done < <(grep -E '^[[:space:]]*[A-Za-z_][A-Za-z0-9_]*[[:space:]]*=' <<<"$cron_text" || true)
cron_shell=/bin/sh
for kv in "${env_args[@]}"; do [[ $kv == SHELL=* ]] && cron_shell=${kv#SHELL=}; done
printf 'running as cron would: env -i %s %s -c %q\n' "${env_args[*]}" "$cron_shell" "$run_cmd" >&2

# Something to do: a keys file gone missing. And no repository: the refresh needs none.
removed=/etc/ssh/authorized_keys.d/test-reviewer
expected_keys=$(st_exec cat "$removed")
st_exec rm "$removed"
st_exec mv /opt/bs /opt/bs.away
rc=0
docker exec -w /root "$ST_C" env -i "${env_args[@]}" "$cron_shell" -c "$run_cmd" \
    >"$ST_LOG_DIR/cron-run.out" 2>&1 || rc=$?
st_exec mv /opt/bs.away /opt/bs
assert_eq 0 "$rc" "exit status of the cron command ($(<"$ST_LOG_DIR/cron-run.out"))"

# Its output: where the command sends it, or what it printed (cron would mail that).
out_file=$(grep -oE '>[[:space:]]*/[^[:space:]]+' <<<"$run_cmd" | head -n 1 | tr -d '> ' || true)
if [[ -n $out_file ]]; then
    ST_JSON=$(st_exec cat "$out_file")
else
    ST_JSON=$(<"$ST_LOG_DIR/cron-run.out")
fi
printf '%s\n' "$ST_JSON" >"$ST_LAST_JSON"
assert_json_lines "$ST_JSON" "the refresh's output (${out_file:-stdout})"
assert_json_eq '[.[] | select(.type == "summary")] | last | [.tool, .ok, .failed]' \
    '["bs-users",true,0]' "$(jq -s -c . <<<"$ST_JSON")" "the refresh's summary is ok"
assert_json_eq 'select(.type == "keys" and .target == "test-reviewer") | .changed' true \
    "$ST_JSON" "the refresh rewrote test-reviewer's missing keys"
assert_eq "$expected_keys" "$(st_exec cat "$removed")" "test-reviewer's keys file is back as it was"
assert_eq "644 root root" "$(st_exec stat -c '%a %U %G' "$removed")" \
    "the restored keys file's owner and mode"
