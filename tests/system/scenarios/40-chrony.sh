#!/usr/bin/env bash
# bs-chrony on a Debian container with the tpp backend's config: the Hyper-V PTP device is a
# stand-in (a link to /dev/null: `chronyd -p` only parses), the container has no systemd, so
# a host-local [chrony] override drives services through a stand-in service manager that logs
# every call (the job runner's units are state files; chrony.service is the real chronyd,
# run with -x so the clock is never touched). bs-chrony runs alone here, down to its failure
# without a device and its status and check; 41-manage-tpp runs it in the whole tpp chain.
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

st_require_bins bs-chrony
# --init: a PID 1 that reaps, as systemd would; chronyd takes a zombie's pid for a running chronyd.
st_start chrony --init

tool() { st_tool env BS_BACKEND=tpp BS_REPO=/opt/bs bs-chrony "$@"; }
svc_log() { st_exec cat /var/log/bs-svc.log; }
steps='select(.type == "restart_step") | "\(.step) \(.target) \(.ok)"'

st_step "set up: the stand-in service manager, chronyd -x running, the job runner 'running'"
st_standin_services bs-jobs-poller.service bs-jobs-worker.service
st_exec mkdir -p /etc/bs
cp_conf=$(st_exec cat /etc/chrony/chrony.conf)
assert_contains "$cp_conf" "confdir /etc/chrony/conf.d" "Debian's chrony.conf reads conf.d"

st_chrony_toml | st_exec sh -c 'cat >/etc/bs/local.toml'

st_step "no PTP device: an error, nothing changed"
tool apply
assert_eq 1 "$ST_RC" "apply without the device"
assert_json_eq 'select(.type == "error") | .kind' device_missing "$ST_JSON" "error kind"
assert_eq "$cp_conf" "$(st_exec cat /etc/chrony/chrony.conf)" "chrony.conf untouched"
assert_failure "no drop-in" st_exec test -e /etc/chrony/conf.d/bs-hyperv-ptp.conf
assert_failure "no service touched" st_exec test -e /var/log/bs-svc.log

st_step "stand-in device, but systemd as the service manager where systemd is not the init: the drop-in goes live, no service is touched, the restart stays owed"
st_exec ln -s /dev/null /dev/ptp_hyperv
st_exec sh -c 'printf "[chrony]\nready_timeout_secs = 15\n" >/etc/bs/local.toml'
tool apply
assert_eq 1 "$ST_RC" "apply exits 1"
assert_json_eq 'select(.type == "error") | .kind' no_systemd "$ST_JSON" "the only error: no systemd to drive the services"
assert_json_eq 'select(.type == "restart_step") | .step' "" "$ST_JSON" "no restart step was taken"
assert_failure "no service touched" st_exec test -e /var/log/bs-svc.log
assert_success "the job runner still runs" st_exec test -e /run/bs-svc/bs-jobs-poller.service
assert_success "the drop-in is in place" st_exec test -e /etc/chrony/conf.d/bs-hyperv-ptp.conf
assert_success "the restart is owed" st_exec test -e /var/lib/bs/chrony/restart-pending
st_chrony_toml | st_exec sh -c 'cat >/etc/bs/local.toml'

st_step "the stand-in service manager configured: the owed restart runs; /dev/null is no PHC, so chrony's restart fails and the services still come back"
tool apply
assert_eq 1 "$ST_RC" "apply exits 1: chronyd cannot open the stand-in as a PHC"
assert_json_eq 'select(.type == "device") | .device_present' true "$ST_JSON" "device found"
assert_json_eq 'select(.type == "error") | .kind' restart_failed "$ST_JSON" "the failed restart is reported"
dropin=$(st_exec cat /etc/chrony/conf.d/bs-hyperv-ptp.conf)
printf '%s\n' "$dropin" >&2
assert_contains "$dropin" "refclock PHC /dev/ptp_hyperv poll 3 dpoll -2 offset 0 stratum 2" "the refclock line"
assert_contains "$dropin" "makestep 1.0 -1" "the makestep line"
assert_contains "$(st_exec cat /etc/chrony/chrony.conf)" "#bs-chrony-disabled: makestep 1 3" \
    "Debian's later makestep no longer overrides ours"
assert_json_eq "$steps" $'stop bs-jobs-poller.service true\nstop bs-jobs-worker.service true\nrestart chrony.service false\nstart bs-jobs-worker.service true\nstart bs-jobs-poller.service true' \
    "$ST_JSON" "restart steps in order, services started again"
assert_eq $'stop bs-jobs-poller.service\nstop bs-jobs-worker.service\nrestart chrony.service\nstart bs-jobs-worker.service\nstart bs-jobs-poller.service' \
    "$(svc_log)" "what the service manager was asked, in order"
assert_success "the poller runs again" st_exec test -e /run/bs-svc/bs-jobs-poller.service
assert_success "the worker runs again" st_exec test -e /run/bs-svc/bs-jobs-worker.service
assert_success "the restart is still owed" st_exec test -e /var/lib/bs/chrony/restart-pending

st_step "a refclock chronyd can run here (SOCK, refid PHC0): the drop-in changes, chrony restarts and answers"
st_exec truncate -s 0 /var/log/bs-svc.log
st_chrony_toml 'refclock_line = "refclock SOCK /run/chrony/phc-standin.sock refid PHC0 poll 0 dpoll -2"' |
    st_exec sh -c 'cat >/etc/bs/local.toml'
tool apply
assert_eq 0 "$ST_RC" "apply exits 0"
assert_json_eq "$steps" $'stop bs-jobs-poller.service true\nstop bs-jobs-worker.service true\nrestart chrony.service true\nwait chrony.service true\nstart bs-jobs-worker.service true\nstart bs-jobs-poller.service true' \
    "$ST_JSON" "stop, restart, wait, start in reverse"
assert_json_eq 'select(.type == "restart") | .ok' true "$ST_JSON" "restart record"
assert_contains "$(st_exec cat /etc/chrony/conf.d/bs-hyperv-ptp.conf)" "refclock SOCK /run/chrony/phc-standin.sock refid PHC0" "new drop-in"
assert_success "chronyd runs" st_exec pgrep -x chronyd
assert_failure "nothing owed any more" st_exec test -e /var/lib/bs/chrony/restart-pending
assert_eq $'stop bs-jobs-poller.service\nstop bs-jobs-worker.service\nrestart chrony.service\nstart bs-jobs-worker.service\nstart bs-jobs-poller.service' \
    "$(svc_log)" "service manager calls"

st_step "idempotent: a second apply changes nothing and restarts nothing"
st_exec truncate -s 0 /var/log/bs-svc.log
tool apply
assert_eq 0 "$ST_RC" "second apply"
assert_json_eq 'select(.type == "summary") | .changed' 0 "$ST_JSON" "nothing changed"
assert_eq "" "$(svc_log)" "no service touched"

st_step "status and check read the real chronyd"
tool check
assert_eq 3 "$ST_RC" "check: the refclock has no samples yet, so it is not selected"
assert_json_eq 'select(.type == "clock") | .refclock_selected' false "$ST_JSON" "not selected"
st_feed_refclock /run/chrony/phc-standin.sock PHC0
tool status
assert_eq 0 "$ST_RC" "status"
assert_json_eq 'select(.type == "clock") | [.selected_source, .refclock_selected, .synchronised]' \
    '["PHC0",true,true]' "$ST_JSON" "the refclock is the selected source"
assert_json_eq 'select(.type == "source") | .name' PHC0 "$ST_JSON" "source record"
tool check
assert_eq 0 "$ST_RC" "check passes: synchronised, in bound, refclock selected"
