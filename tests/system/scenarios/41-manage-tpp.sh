#!/usr/bin/env bash
# `just manage tpp`, typed as an operator types it (root, in /opt/bs), on a Debian container: the
# whole tpp chain (bs-host bs-users bs-perms bs-docker bs-chrony bs-jobs bs-release) with the tpp policy,
# and only what a container lacks stood in for by a host-local /etc/bs/local.toml:
# - bs-host installs no packages (the container has no apt sources; 15-host proves the installs
#   from a local repository), so pam_pwquality, whose package that would bring, is off too.
# - bs-users fetches keys from a fake key server on 127.0.0.1 (the real contract, GET
#   <key_source>/<login>.keys), for the test backend's people: tpp's `developers` list is empty.
#   refresh stays "systemd": with no systemd as the init, the units are written, not enabled.
# - bs-docker reaches the host's engine through its socket and creates tpp's `jobs-db` network
#   there, labelled as this run's so the harness removes it (also after a killed run). The
#   daemon.json it writes is the container's own; the host's engine is never restarted
#   (allow_restart is false) and the host's daemon.json is checked untouched.
# - bs-chrony: the Hyper-V PTP device is a stand-in (a link to /dev/null), and services go
#   through the stand-in service manager bs-svc (lib.sh), chrony.service being a real chronyd -x.
# The first run writes tpp's own drop-in (refclock PHC /dev/ptp_hyperv): chronyd cannot open
# /dev/null as a PHC, so its restart fails, and that run shows the guarantee (the job runner is
# started again in reverse order, the restart stays owed, manage exits 1). The second run
# overrides the refclock line with a SOCK refclock named PHC0, which chronyd can run here: that
# run shows the complete ordered restart, with the wait until chronyd answers. Both are needed:
# tpp's real line cannot run in a container, and the stand-in line is not tpp's.
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

st_require_bins bs-host bs-users bs-perms bs-docker bs-chrony bs-jobs bs-release just
ST_DUMP_FILES="/var/log/bs-svc.log /var/log/fake-keys.log /etc/bs/local.toml
    /etc/chrony/conf.d/bs-hyperv-ptp.conf"

tools=(bs-host bs-users bs-perms bs-docker bs-chrony bs-jobs bs-release)
jobs_net=jobs-db
port=8765
served=/srv/fake-keys
sock=/run/chrony/phc-standin.sock
units=(bs-jobs-poller.service bs-jobs-worker.service)

# A jobs-db on the host's engine that this run did not create is not ours to touch (the runner
# has already swept the labelled leftovers of killed runs).
if docker network inspect "$jobs_net" >/dev/null 2>&1; then
    st_fail "the host's Docker engine already has a network $jobs_net; not touching it"
fi
host_daemon_json() { sha256sum /etc/docker/daemon.json 2>/dev/null || echo absent; }
host_daemon_before=$(host_daemon_json)

st_start manage-tpp --init -v /var/run/docker.sock:/var/run/docker.sock

manage() { st_tool sh -c 'cd /opt/bs && exec just manage tpp'; }
svc_log() { st_exec cat /var/log/bs-svc.log; }
all() { jq -s -c . <<<"$ST_JSON"; }
steps='select(.type == "restart_step") | "\(.step) \(.target) \(.ok)"'
# The summaries' tools in the order they ran, one line.
ran() { jq -r 'select(.type == "summary") | .tool' <<<"$ST_JSON" | paste -sd ' '; }

st_step "set up: the stand-in PTP device, service manager and key server"
st_exec ln -s /dev/null /dev/ptp_hyperv
st_standin_services "${units[@]}"
st_fake_keyserver "$served" "$port"
# test-developer has a key on the "GitHub" server besides keys/test-developer; TestCapitals has
# none there (an empty 200, as GitHub answers).
gh_key=$(st_new_key github-test-developer)
st_sh 'cp "$1.pub" "$2/keys/test-developer.keys"' "$gh_key" "$served"
gh_pub=$(st_exec awk '{ print $1, $2 }' "$gh_key.pub")

# local_toml [CHRONY-LINE...]: the host-local override; CHRONY-LINEs are more [chrony] keys.
local_toml() {
    {
        cat <<EOF
[host]
packages = []

[perms.pam]
pwquality = false

[users]
key_source = "http://127.0.0.1:$port"

# tpp's developers list is empty: the test backend's platform team stands in, with the groups
# tpp gives its developers.
[users.lists.systest]
file = "backends/test/developers"
groups = ["developers", "researchers", "reviewers", "docker", "sudo"]

# The container uses the host's engine: its bridges and DOCKER-USER are not in this container's
# network namespace (30-docker-firewall tests the rules).
[docker]
manage_firewall = false

[docker.networks.$jobs_net.labels]
"bs.systest" = "1"
"bs.systest.run" = "$ST_RUN"

EOF
        st_chrony_toml "$@"
    } | st_exec sh -c 'mkdir -p /etc/bs && cat >/etc/bs/local.toml'
}
local_toml
st_exec cat /etc/bs/local.toml >&2

st_step "first run: everything converges but chrony, which cannot run tpp's PHC line on /dev/null"
manage
assert_eq 1 "$ST_RC" "exit status of the first 'just manage tpp' (an item failed: chrony's restart)"
assert_json_lines "$ST_JSON" "first run: stdout"
assert_eq "${tools[*]}" "$(ran)" "the chain ran every tool, in order"
assert_json_eq 'select(.type == "summary") | "\(.tool) \(.ok) \(.failed)"' \
    $'bs-host true 0\nbs-users true 0\nbs-perms true 0\nbs-docker true 0\nbs-chrony false 1\nbs-jobs true 0\nbs-release true 0' \
    "$ST_JSON" "only bs-chrony failed an item"
assert_json_eq '[.[] | select(.type == "error") | "\(.tool) \(.kind)"]' '["bs-chrony restart_failed"]' \
    "$(all)" "the one error is chrony's failed restart"

st_step "first run: tpp's drop-in"
dropin=$(st_exec cat /etc/chrony/conf.d/bs-hyperv-ptp.conf)
printf '%s\n' "$dropin" >&2
assert_eq $'refclock PHC /dev/ptp_hyperv poll 3 dpoll -2 offset 0 stratum 2\nmakestep 1.0 -1' \
    "$(grep -v '^#' <<<"$dropin")" "the drop-in's directives: the PHC refclock and makestep"
assert_contains "$(st_exec cat /etc/chrony/chrony.conf)" "#bs-chrony-disabled: makestep 1 3" \
    "Debian's later makestep no longer overrides the drop-in's"
assert_json_eq 'select(.type == "device") | .device_present' true "$ST_JSON" "the stand-in device is found"

st_step "first run: the job runner stopped around chrony, and started again although chrony failed"
assert_json_eq "$steps" $'stop bs-jobs-poller.service true\nstop bs-jobs-worker.service true\nrestart chrony.service false\nstart bs-jobs-worker.service true\nstart bs-jobs-poller.service true' \
    "$ST_JSON" "restart steps in order"
assert_eq $'stop bs-jobs-poller.service\nstop bs-jobs-worker.service\nrestart chrony.service\nstart bs-jobs-worker.service\nstart bs-jobs-poller.service' \
    "$(svc_log)" "what the service manager was asked, in order"
for unit in "${units[@]}"; do
    assert_success "$unit runs again" st_exec test -e "/run/bs-svc/$unit"
done
assert_success "the restart is owed" st_exec test -e /var/lib/bs/chrony/restart-pending

st_step "first run: the accounts and groups bs-users made"
assert_managed_groups
assert_person test-developer "developers researchers reviewers docker sudo"
assert_person TestCapitals "developers researchers reviewers docker sudo"
assert_contains "$(st_exec cat /etc/ssh/authorized_keys.d/test-developer)" "$gh_pub" \
    "test-developer's keys file has the key from the key server"
assert_eq $'/TestCapitals.keys 200\n/test-developer.keys 200' \
    "$(st_exec sort /var/log/fake-keys.log)" "bs-users asked the key server once for each login"
assert_json_eq 'select(.type == "summary" and .tool == "bs-users") | [.people, .fetch_failed]' \
    '[2,0]' "$ST_JSON" "bs-users' summary"

st_step "first run: no systemd here, so units are written and systemctl is never called"
for tool in bs-users bs-jobs; do
    assert_json_eq "select(.tool == \"$tool\" and .type == \"note\" and .target == \"systemd\") | .message" \
        "systemd is not running here: units written, not enabled" "$ST_JSON" "$tool says so"
done
for unit in bs-users-refresh.service bs-users-refresh.timer "${units[@]}"; do
    assert_success "$unit is written" st_exec test -s "/etc/systemd/system/$unit"
done
assert_json_eq '[.[] | select(.argv? and (.argv[0] | test("systemctl$")))] | length' 0 \
    "$(all)" "no tool ran systemctl"

st_step "first run: bs-docker on the host's engine and the container's daemon.json"
assert_json_eq "select(.type == \"network\" and .target == \"$jobs_net\") | .action" create_network \
    "$ST_JSON" "$jobs_net created"
assert_eq "false false bs-docker $ST_RUN" \
    "$(docker network inspect -f '{{.Internal}} {{index .Options "com.docker.network.bridge.enable_icc"}} {{index .Labels "bs.managed-by"}} {{index .Labels "bs.systest.run"}}' "$jobs_net")" \
    "$jobs_net on the host's engine: not internal, icc off, labelled bs-docker's and this run's"
net_id=$(docker network inspect -f '{{.Id}}' "$jobs_net")
assert_json_eq '."log-opts"."max-file"' '"3"' "$(st_exec cat /etc/docker/daemon.json)" \
    "the container's daemon.json holds the managed keys"
assert_json_eq 'select(.type == "engine_restart") | [.needed, .done]' '[true,false]' "$ST_JSON" \
    "the engine restart daemon.json asks for is owed, not done (allow_restart is false)"
assert_eq "$host_daemon_before" "$(host_daemon_json)" "the host's daemon.json is untouched"

st_step "second run: a refclock chronyd can run here (SOCK, refid PHC0): the complete ordered restart"
local_toml "refclock_line = \"refclock SOCK $sock refid PHC0 poll 0 dpoll -2\""
st_exec truncate -s 0 /var/log/bs-svc.log
manage
assert_eq 0 "$ST_RC" "exit status of the second 'just manage tpp'"
assert_eq "${tools[*]}" "$(ran)" "the chain ran every tool, in order"
assert_json_eq 'select(.type == "summary") | [.ok, .failed]' "$(printf '[true,0]\n%.0s' "${tools[@]}")" \
    "$ST_JSON" "every tool's summary is ok"
assert_json_eq '[.[] | select(.changed == true) | "\(.tool) \(.type)"]' \
    '["bs-chrony chrony_conf","bs-chrony restart"]' "$(all)" "only the drop-in and chrony changed"
assert_contains "$(st_exec cat /etc/chrony/conf.d/bs-hyperv-ptp.conf)" "refclock SOCK $sock refid PHC0" \
    "the drop-in has the stand-in refclock"
assert_json_eq "$steps" $'stop bs-jobs-poller.service true\nstop bs-jobs-worker.service true\nrestart chrony.service true\nwait chrony.service true\nstart bs-jobs-worker.service true\nstart bs-jobs-poller.service true' \
    "$ST_JSON" "stop poller, stop worker, restart chrony, wait, start worker, start poller"
assert_eq $'stop bs-jobs-poller.service\nstop bs-jobs-worker.service\nrestart chrony.service\nstart bs-jobs-worker.service\nstart bs-jobs-poller.service' \
    "$(svc_log)" "what the service manager was asked, in order"
assert_json_eq 'select(.type == "restart") | .ok' true "$ST_JSON" "the restart record says ok"
assert_failure "nothing owed any more" st_exec test -e /var/lib/bs/chrony/restart-pending
chronyd_pid=$(st_exec cat /run/chrony/chronyd.pid)

st_step "third run, the same config: changes nothing and restarts nothing"
st_exec truncate -s 0 /var/log/bs-svc.log
manage
assert_eq 0 "$ST_RC" "exit status of the third 'just manage tpp'"
assert_eq "${tools[*]}" "$(ran)" "the chain ran every tool, in order"
assert_json_eq 'select(.type == "summary") | [.ok, .failed, .changed]' \
    "$(printf '[true,0,0]\n%.0s' "${tools[@]}")" "$ST_JSON" "every tool's summary: ok, nothing changed"
assert_json_eq '[.[] | select(.changed == true)] | length' 0 "$(all)" "no record says it changed"
assert_json_eq '[.[] | select(.type == "restart_step")] | length' 0 "$(all)" "no restart step"
assert_eq "" "$(svc_log)" "the service manager was not asked anything"
assert_eq "$chronyd_pid" "$(st_exec cat /run/chrony/chronyd.pid)" "the same chronyd runs"
assert_eq "$net_id" "$(docker network inspect -f '{{.Id}}' "$jobs_net")" "the same $jobs_net"

# check-backend in a container: two things differ from what tpp describes. bs-docker wrote
# daemon.json but may not restart the engine (tpp: allow_restart = false), so the engine still
# runs the old file until someone restarts it in a quiet moment: drift. bs-chrony's check also
# asks chronyd about the clock (tpp leaves check_clock on): until the stand-in PTP clock gives
# time, chrony follows nothing, which is what check must flag on a real TPP host whose PHC is
# silent. Once the clock is fed and the engine has restarted, the container is exactly as tpp
# wants (exit 0).
st_step "check-backend: exit 3 while the engine restart is owed and the stand-in PTP clock is silent"
st_tool sh -c 'cd /opt/bs && exec just check-backend tpp'
assert_eq 3 "$ST_RC" "exit status of 'just check-backend tpp' with the refclock unfed (drift)"
assert_json_eq 'select(.type == "summary") | "\(.tool) \(.failed) \(.changed) \(.exit)"' \
    $'bs-host 0 0 0\nbs-users 0 0 0\nbs-perms 0 0 0\nbs-docker 0 1 3\nbs-chrony 0 0 3\nbs-jobs 0 0 0' \
    "$ST_JSON" "only bs-docker and bs-chrony find something"
assert_json_eq 'select(.type == "engine_restart") | [.needed, .changed]' '[true,true]' "$ST_JSON" \
    "bs-docker: the engine restart is owed"
assert_json_eq 'select(.type == "clock") | .refclock_selected' false "$ST_JSON" \
    "the clock record says the refclock is not selected"

st_step "check-backend: exit 0 once the stand-in PTP clock gives time and the engine has restarted"
st_feed_refclock "$sock" PHC0
st_engine_restarted_by_hand
st_tool sh -c 'cd /opt/bs && exec just check-backend tpp'
assert_eq 0 "$ST_RC" "exit status of 'just check-backend tpp' (converged, the clock on the refclock)"
assert_json_eq 'select(.type == "clock") | [.selected_source, .refclock_selected, .synchronised]' \
    '["PHC0",true,true]' "$ST_JSON" "the refclock is the selected source"
