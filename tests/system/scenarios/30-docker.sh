#!/usr/bin/env bash
# bs-docker in a system-test container that reaches the host's Docker engine through its socket
# (the only scenario that does): the test backend's network and service (bs-busybox's httpd)
# are created, reported by `bs-docker status`, and left alone by a second apply.
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

st_require_bins bs-docker
command -v jq >/dev/null || st__die "jq is missing"
"$ST_REPO/tests/images/build-busybox" >/dev/null

svc=bs-test-web netname=bs-test-services
# A leftover of a killed run would make the first apply a no-op: start clean.
docker rm -f "$svc" >/dev/null 2>&1 || true
docker network rm "$netname" >/dev/null 2>&1 || true

st_start docker -v /var/run/docker.sock:/var/run/docker.sock

st_step "the service account is in the docker group (what bs-users sets up)"
st_sh 'groupadd -f docker && groupadd -g 10000 opensafely &&
    useradd -u 10000 -g 10000 -G docker -m opensafely'
# The service container and the network carry the harness's labels, so its clean-up removes
# them (also when the scenario fails before its own clean-up at the end).
st_sh 'mkdir -p /etc/bs && cat >/etc/bs/local.toml' <<EOF_LOCAL
[docker.services.$svc.labels]
"bs.test" = "1"
"bs.systest" = "1"
"bs.systest.run" = "$ST_RUN"

[docker.networks.$netname.labels]
"bs.systest" = "1"
"bs.systest.run" = "$ST_RUN"
EOF_LOCAL

bsd() { st_tool bs-docker --repo /opt/bs --backend test "$@"; }

st_step "before apply the service is missing"
bsd status
assert_eq 0 "$ST_RC" "status exits 0"
assert_json_eq 'select(.type=="engine") | .reachable' true "$ST_JSON" "the engine is reached through the socket"
assert_json_eq "select(.type==\"service\" and .target==\"$svc\") | .state" missing "$ST_JSON" "not created yet"

st_step "apply creates the network and the service"
bsd apply
assert_eq 0 "$ST_RC" "apply exits 0"
assert_json_eq "select(.type==\"network\" and .target==\"$netname\") | .action" create_network "$ST_JSON" "network created"
assert_json_eq "select(.type==\"service\" and .target==\"$svc\") | .action" create_service "$ST_JSON" "service created"
assert_json_eq 'select(.type=="daemon_json") | .changed' true "$ST_JSON" "daemon.json written in the container"
assert_json_eq '."log-opts"."max-file"' '"3"' "$(st_exec cat /etc/docker/daemon.json)" "daemon.json holds the managed keys"
id1=$(docker inspect -f '{{.Id}}' "$svc")

st_step "status reports the service active, as the service account, limited"
bsd status
assert_json_eq "select(.type==\"service\" and .target==\"$svc\") | [.state, .current]" '["active",true]' "$ST_JSON" "active and current"
assert_json_eq 'select(.type=="summary") | .services.active' 1 "$ST_JSON" "summary counts it"
assert_eq "10000:10000 33554432 true" "$(docker inspect -f '{{.Config.User}} {{.HostConfig.Memory}} {{.HostConfig.ReadonlyRootfs}}' "$svc")" "user, memory and read-only root applied"
assert_eq true "$(docker network inspect -f '{{.Internal}}' "$netname")" "the network is internal"

st_step "a second apply changes nothing and keeps the container"
bsd apply
assert_eq 0 "$ST_RC" "second apply exits 0"
assert_json_eq 'select(.type=="summary") | .changed' 0 "$ST_JSON" "nothing changed"
assert_eq "$id1" "$(docker inspect -f '{{.Id}}' "$svc")" "same container id"
bsd check
assert_eq 3 "$ST_RC" "check: the engine restart owed for daemon.json is drift"
assert_json_eq 'select(.type=="engine_restart") | [.needed, .changed]' '[true,true]' "$ST_JSON" "the owed restart is the drift"
st_engine_restarted_by_hand
bsd check
assert_eq 0 "$ST_RC" "check finds no drift once the engine has restarted"

st_step "clean up the service and the network on the host engine"
docker rm -f "$svc" >/dev/null
docker network rm "$netname" >/dev/null
