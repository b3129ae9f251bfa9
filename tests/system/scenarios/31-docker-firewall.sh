#!/usr/bin/env bash
# The database network's firewall on the host's engine, end to end. bs-docker (sandbox root,
# the engine through its socket) creates a labelled network with its own bridge name, and
# `bs-docker firewall` on the live root keeps that bridge's DOCKER-USER rules with the host's
# iptables (every rule matches `-i <that bridge>`; nothing else is touched). The databases live
# in a network namespace this test makes, behind a veth pair (198.18.77.0/24, the benchmark
# range): traffic to them is forwarded, so it passes DOCKER-USER as it does to a real database
# server. (A listener on the host's own addresses would be reached through INPUT, which
# DOCKER-USER never sees.) PostgreSQL listens on 198.18.77.2, a second listener on 198.18.77.3.
# A container on the network gets PostgreSQL's answer and is refused by the other; removing the
# REJECT by hand lets it through (so the rule is what blocks), which check reports and
# `firewall` mends; a container with no network reaches nothing. Everything is removed at exit.
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

st_require_bins bs-docker
for tool in iptables ip jq runuser; do
    command -v "$tool" >/dev/null || st__die "$tool is missing (bin/bootstrap installs it)"
done
pg_bins=(/usr/lib/postgresql/*/bin)
pg_bin=${pg_bins[-1]}
[[ -x $pg_bin/postgres ]] || st__die "PostgreSQL is missing (bin/bootstrap installs postgresql)"
"$ST_REPO/tests/images/build-busybox" >/dev/null

run=$$
ns=bsst-db-$run
veth_host=bsdbh$((run % 100000))
veth_ns=bsdbn$((run % 100000))
bridge=bsstbr$((run % 100000))
dbnet=bs-st-dbnet-$run
db=198.18.77.2
other=198.18.77.3
work=$(mktemp -d /tmp/bs-st-firewall.XXXXXX)
chmod 0755 "$work"
pg_pid=""
other_pid=""

cleanup() {
    local rc=$? spec
    set +e
    docker ps -aq --filter "label=bs.systest.run=$run" | xargs -r docker rm -f >/dev/null 2>&1
    docker network rm "$dbnet" >/dev/null 2>&1
    # Only rules of this test's bridge, from the bottom up.
    while spec=$(iptables -w 10 -S DOCKER-USER | grep -m1 -- "-i $bridge ") && [[ -n $spec ]]; do
        # shellcheck disable=SC2086 # the rule's words, as iptables printed them
        iptables -w 10 -D ${spec#-A } || break
    done
    [[ -n $pg_pid ]] && kill "$pg_pid" 2>/dev/null
    [[ -n $other_pid ]] && kill "$other_pid" 2>/dev/null
    wait 2>/dev/null
    ip netns del "$ns" 2>/dev/null
    ip link del "$veth_host" 2>/dev/null
    rm -rf --one-file-system "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

st_step "the databases' network namespace, behind a veth pair"
ip netns add "$ns"
ip link add "$veth_host" type veth peer name "$veth_ns"
ip link set "$veth_ns" netns "$ns"
ip addr add 198.18.77.1/24 dev "$veth_host"
ip link set "$veth_host" up
ip netns exec "$ns" ip link set lo up
ip netns exec "$ns" ip addr add "$db/24" dev "$veth_ns"
ip netns exec "$ns" ip addr add "$other/24" dev "$veth_ns"
ip netns exec "$ns" ip link set "$veth_ns" up

st_step "PostgreSQL on $db and another listener on $other, inside it"
mkdir -p "$work/pg"
chown postgres:postgres "$work/pg"
runuser -u postgres -- "$pg_bin/initdb" -D "$work/pg/data" -A trust >"$work/initdb.log" 2>&1 ||
    st__die "initdb failed: $(cat "$work/initdb.log")"
echo "host all all 198.18.77.0/24 trust" >>"$work/pg/data/pg_hba.conf"
ip netns exec "$ns" runuser -u postgres -- "$pg_bin/postgres" -D "$work/pg/data" \
    -c "listen_addresses=$db" -c "unix_socket_directories=$work/pg" -p 5432 \
    >"$work/pg.log" 2>&1 &
pg_pid=$!
ip netns exec "$ns" python3 -m http.server --bind "$other" 5432 >"$work/other.log" 2>&1 &
other_pid=$!
for _ in $(seq 50); do
    if ip netns exec "$ns" "$pg_bin/pg_isready" -q -h "$db" -p 5432 &&
        curl -s -o /dev/null --max-time 2 "http://$other:5432/"; then
        break
    fi
    sleep 0.2
done
assert_success "PostgreSQL answers on $db" ip netns exec "$ns" "$pg_bin/pg_isready" -h "$db" -p 5432
assert_success "the other listener answers the host on $other" \
    curl -s -o /dev/null --max-time 2 "http://$other:5432/"

st_step "a repository whose backend declares the network and its one database"
repo=$work/repo root=$work/root
mkdir -p "$repo/backends/st" "$root/etc/bs" "$root/run/lock" "$root/var/run" "$root/var/lib"
cp "$ST_REPO/backends/defaults.toml" "$repo/backends/"
ln -s /var/run/docker.sock "$root/var/run/docker.sock"
printf 'root:x:0:0:root:/root:/bin/bash\nopensafely:x:10000:10000::/home/opensafely:/bin/bash\n' \
    >"$root/etc/passwd"
printf 'root:x:0:\nopensafely:x:10000:\ndocker:x:990:opensafely\n' >"$root/etc/group"
cat >"$repo/backends/st/backend.toml" <<EOF
[backend]
name = "st"

[docker.networks.$dbnet]
icc = false
subnet = "198.18.78.0/24"
bridge_name = "$bridge"
database_addresses = ["$db"]

[docker.networks.$dbnet.labels]
"bs.systest" = "1"
"bs.systest.run" = "$run"
EOF

bsd() { # bsd ROOT ARGS...: bs-docker; its JSON in $out, its exit status in $rc
    local r=$1
    shift
    rc=0
    out=$("$BS_BIN_DIR/bs-docker" --root "$r" --repo "$repo" --backend st "$@") || rc=$?
    printf '### bs-docker --root %s %s (exit %s)\n%s\n' "$r" "$*" "$rc" "$out" >&2
}

st_step "apply under a sandbox root: the network is created; iptables is skipped and said so"
bsd "$root" apply
assert_eq 0 "$rc" "apply exits 0"
assert_json_eq "select(.type==\"network\" and .target==\"$dbnet\") | .action" create_network "$out" \
    "the network is created"
assert_json_eq "select(.type==\"firewall\") | .inspected" false "$out" "firewall not inspected"
assert_json_eq 'select(.type=="command" and .argv[0]=="iptables") | .skipped' true "$out" \
    "iptables reported as skipped"
assert_eq "$bridge" "$(docker network inspect -f '{{index .Options "com.docker.network.bridge.name"}}' "$dbnet")" \
    "the network's bridge has its declared name"

st_step "firewall on the live root: the rules of this bridge, ACCEPT above REJECT"
bsd / firewall --check
assert_eq 3 "$rc" "check: the missing rules are drift"
bsd / firewall
assert_eq 0 "$rc" "firewall exits 0"
assert_json_eq 'select(.type=="firewall") | .changed' true "$out" "rules inserted"
rules=$(iptables -w 10 -S DOCKER-USER | grep -- "-i $bridge " || true)
assert_eq "-A DOCKER-USER -d $db/32 -i $bridge -j ACCEPT
-A DOCKER-USER -i $bridge -j REJECT --reject-with icmp-port-unreachable" "$rules" \
    "exactly the two rules, in order"
bsd / firewall
assert_json_eq 'select(.type=="firewall") | .changed' false "$out" "a second run inserts nothing"
assert_eq "$rules" "$(iptables -w 10 -S DOCKER-USER | grep -- "-i $bridge ")" "the rules unchanged"

# The PostgreSQL SSLRequest (length 8, code 80877103): a server answers one byte, N or S.
probe() { # probe NETWORK ADDRESS: what a container on NETWORK gets from ADDRESS:5432
    docker run --rm --label bs.systest=1 --label "bs.systest.run=$run" --network "$1" \
        bs-busybox:latest sh -c "printf '\\000\\000\\000\\010\\004\\322\\026\\057' | nc -w 3 $2 5432" 2>&1
}
st_step "a container on the network reaches PostgreSQL and nothing else"
assert_eq N "$(probe "$dbnet" "$db")" "PostgreSQL answers the SSLRequest (no SSL)"
assert_failure "the other listener is refused" probe "$dbnet" "$other"
assert_failure "a container with no network reaches nothing" probe none "$db"

st_step "without the REJECT the other listener is reached: the rule is what blocks; check and firewall see to it"
iptables -w 10 -D DOCKER-USER -i "$bridge" -j REJECT
reached=$(probe "$dbnet" "$other" || true)
assert_contains "$reached" "Error response" "the other listener (an HTTP server) answers once the REJECT is gone"
bsd / firewall --check
assert_eq 3 "$rc" "check: the lost REJECT is drift"
bsd / firewall
assert_eq 0 "$rc" "firewall puts it back"
assert_eq "$rules" "$(iptables -w 10 -S DOCKER-USER | grep -- "-i $bridge ")" "the rules as before"
assert_failure "the other listener is refused again" probe "$dbnet" "$other"
assert_eq N "$(probe "$dbnet" "$db")" "PostgreSQL still answers"
