# shellcheck shell=bash
# System-test harness, sourced by tests/system/scenarios/*.sh (and by tests/system/run).
#
# A scenario starts fresh containers from bs-systest-base:latest (built by
# tests/images/build-base), each with this checkout at /opt/bs, the release binaries and `just`
# in /usr/local/bin and sshd running, and asserts from outside with `docker exec`.
# Containers get no network by default (`--network none`): all test traffic stays on loopback
# inside a container, or on an internal network the scenario created with st_network.
#
# Sourcing this file has no side effects; the first st_start/st_network registers a clean-up
# that, at exit, writes a failure dump (when the scenario failed) and removes everything this
# scenario created, unless BS_SYSTEST_KEEP=1 (the runner sweeps up whatever a killed scenario
# left). Scenarios must not set their own EXIT trap.
#
# Environment:
#   BS_BIN_DIR        where bs-* release binaries are (default <repo>/target/release)
#   BS_JUST           the `just` binary to copy in (default: `just` on PATH, shims resolved)
#   BS_SYSTEST_KEEP=1 keep containers, volumes and networks for a look afterwards
#   ST_LOG_DIR        this scenario's log dir (the runner sets it; else a new temp dir)

ST_REPO=${ST_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
BS_BIN_DIR=${BS_BIN_DIR:-$ST_REPO/target/release}
ST_IMAGE=${ST_IMAGE:-bs-systest-base:latest}
ST_NETWORK=${ST_NETWORK:-none}
# Everything a scenario creates carries bs.systest=1 (so the runner can find leftovers of killed
# runs) and bs.systest.run=<pid of the scenario shell> (so cleanup removes exactly ours).
ST_RUN=$$
ST_C=""       # the current container: st_exec and friends run there
ST_RC=0       # exit status of the last st_tool
ST_JSON=""    # stdout (JSON Lines) of the last st_tool
ST__INITED=""

# --- messages ------------------------------------------------------------------------------------

st_step() { printf -- '--- %s\n' "$*" >&2; }

# Print an assertion failure and return 1 (so `set -e` ends the scenario right there).
st_fail() {
    printf 'ASSERTION FAILED: %s\n' "$*" >&2
    return 1
}

st__die() {
    printf 'systest: error: %s\n' "$*" >&2
    exit 1
}

# --- set-up and clean-up -------------------------------------------------------------------------

st__init() {
    [[ -n $ST__INITED ]] && return 0
    # A clean-up registered in a subshell would run when that subshell ends, removing what the
    # scenario just created.
    [[ $BASHPID == "$$" ]] ||
        st__die "call st_start/st_network in the scenario's own shell, not in \$(...) or a pipe"
    ST__INITED=1
    if [[ -z ${ST_LOG_DIR:-} ]]; then
        ST_LOG_DIR=$(mktemp -d /tmp/bs-systest.XXXXXX)
        printf 'systest: logs in %s\n' "$ST_LOG_DIR" >&2
    fi
    mkdir -p "$ST_LOG_DIR"
    ST_LAST_JSON="$ST_LOG_DIR/last.json"
    : >"$ST_LAST_JSON"
    trap st__on_exit EXIT
    # Without these, a signal ends bash without running the EXIT trap and containers leak.
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

st__on_exit() {
    local rc=$?
    if ((rc != 0)); then
        st_dump >"$ST_LOG_DIR/dump.txt" 2>&1 || true
    fi
    if [[ ${BS_SYSTEST_KEEP:-} == 1 ]]; then
        printf 'systest: kept (BS_SYSTEST_KEEP=1): %s\n' "$(st__ours container | tr '\n' ' ')" >&2
    else
        st__remove_ours
    fi
    exit "$rc"
}

# Names of this scenario's containers, volumes or networks (KIND = container|volume|network).
st__ours() {
    case $1 in
        container) docker ps -a --filter "label=bs.systest.run=$ST_RUN" --format '{{.Names}}' ;;
        volume) docker volume ls -q --filter "label=bs.systest.run=$ST_RUN" ;;
        network) docker network ls -q --filter "label=bs.systest.run=$ST_RUN" ;;
    esac
}

st__remove_ours() {
    local c v n
    for c in $(st__ours container); do docker rm -f -v "$c" >/dev/null 2>&1 || true; done
    for v in $(st__ours volume); do docker volume rm -f "$v" >/dev/null 2>&1 || true; done
    for n in $(st__ours network); do docker network rm "$n" >/dev/null 2>&1 || true; done
}

# The real `just` executable. Version-manager shims (pyenv, asdf) are scripts that exec the real
# binary found through the host's set-up; copied into a container they cannot work.
st_just_path() {
    local j=${BS_JUST:-$(command -v just || true)}
    [[ -n $j && -f $j ]] || return 1
    if [[ $(head -c 4 "$j") != $'\177ELF' ]] && command -v pyenv >/dev/null; then
        j=$(pyenv which just 2>/dev/null) || return 1
    fi
    [[ $(head -c 4 "$j") == $'\177ELF' ]] || return 1
    printf '%s\n' "$j"
}

# Fail loudly unless every named binary can be copied in: bs-* from $BS_BIN_DIR, or `just`.
# Call it before st_start in every scenario that runs a tool.
st_require_bins() {
    local name missing=()
    for name in "$@"; do
        if [[ $name == just ]]; then
            st_just_path >/dev/null || missing+=("just (no ELF binary found on PATH; set BS_JUST)")
        elif [[ ! -x $BS_BIN_DIR/$name ]]; then
            missing+=("$BS_BIN_DIR/$name")
        fi
    done
    if ((${#missing[@]})); then
        printf 'systest: error: missing binary: %s\n' "${missing[@]}" >&2
        printf 'systest: build them first: cargo build --release (just test-system does)\n' >&2
        return 1
    fi
}

# st_network NAME: create an internal network (no route out) for this scenario; the containers
# started after it join it (ST_NETWORK). Call it directly, not in $(...).
st_network() {
    st__init
    ST_NETWORK="bs-st-$1-$ST_RUN"
    docker network create --internal --label bs.systest=1 --label "bs.systest.run=$ST_RUN" \
        "$ST_NETWORK" >/dev/null || st__die "cannot create network $ST_NETWORK"
}

# st_volume NAME: create a Docker volume and print its name (for `-v NAME:/path`). Safe in $(...):
# it is labelled as this scenario's, so the clean-up (or the runner's sweep) removes it.
st_volume() {
    local v="bs-st-$1-$ST_RUN"
    docker volume create --label bs.systest=1 --label "bs.systest.run=$ST_RUN" "$v" >/dev/null ||
        st__die "cannot create volume $v"
    printf '%s\n' "$v"
}

# st_start NAME [DOCKER-RUN-ARGS...]: start a fresh container and make it the current one
# (ST_C). It gets the checkout at /opt/bs, the bs-* binaries that exist and `just` in
# /usr/local/bin, fresh sshd host keys and a running sshd logging to /var/log/sshd.log (not
# with `--network host`).
st_start() {
    local -
    set -o pipefail # a failed copy must fail here, whatever the scenario set
    st__init
    local name="bs-st-$1-$ST_RUN" arg net=(--network "$ST_NETWORK") prev="" host_net=0
    shift
    for arg in "$@"; do
        if [[ $arg == --network* || $arg == --net=* ]]; then net=(); fi
        if [[ $arg == --network=host || $arg == --net=host ]] ||
            [[ $arg == host && $prev == --network ]]; then host_net=1; fi
        prev=$arg
    done
    st_step "start container $name"
    # --pull never: no registry is reachable, and a missing image must not be looked up in one.
    docker run -d --pull never --name "$name" --hostname bs-st \
        --label bs.systest=1 --label "bs.systest.run=$ST_RUN" \
        "${net[@]}" "$@" "$ST_IMAGE" /bin/sleep infinity >/dev/null ||
        st__die "cannot start $name from $ST_IMAGE (built by tests/images/build-base?)"
    ST_C=$name

    # The working tree as it is (uncommitted and untracked files too, minus ignored ones and
    # target/), so a scenario tests what the developer is looking at.
    git -C "$ST_REPO" rev-parse --git-dir >/dev/null 2>&1 ||
        st__die "$ST_REPO is not a git checkout: cannot list the files to copy"
    git -C "$ST_REPO" ls-files -z -co --exclude-standard |
        while IFS= read -r -d '' f; do
            # Deleted-but-tracked files are still listed; tar would fail on them.
            if [[ $f != target/* ]] && [[ -e $ST_REPO/$f || -L $ST_REPO/$f ]]; then
                printf '%s\0' "$f"
            fi
        done |
        tar -C "$ST_REPO" --null -T - --owner=0 --group=0 --numeric-owner -c |
        docker exec -i "$name" sh -c 'mkdir -p /opt/bs && tar -C /opt/bs -x' ||
        st__die "cannot copy the checkout into $name"

    local bins=() f just
    for f in "$BS_BIN_DIR"/bs-*; do
        if [[ -f $f && -x $f && $f != *.d ]]; then bins+=("${f##*/}"); fi
    done
    if ((${#bins[@]})); then
        tar -C "$BS_BIN_DIR" --owner=0 --group=0 -c "${bins[@]}" |
            docker exec -i "$name" tar -C /usr/local/bin -x ||
            st__die "cannot copy ${bins[*]} into $name"
    fi
    if just=$(st_just_path); then
        docker cp "$just" "$name:/usr/local/bin/just" >/dev/null ||
            st__die "cannot copy $just into $name"
    fi

    # A container on the host's network gets no sshd: it would listen on the host's interfaces.
    ((host_net)) && return 0
    docker exec "$name" sh -c 'ssh-keygen -A >/dev/null && mkdir -p /run/sshd &&
        /usr/sbin/sshd -E /var/log/sshd.log' || st__die "cannot start sshd in $name"
    st__wait_port 22 || st__die "sshd in $name does not listen"
}

# Wait (up to 10 s) until something in the current container listens on TCP port $1.
st__wait_port() {
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -n $(docker exec "$ST_C" ss -Htln "sport = :$1") ]] && return 0
        sleep 0.1
    done
    st_fail "nothing listens on port $1 in $ST_C after 10 s"
}

# st_use NAME: make the container started as NAME the current one.
st_use() { ST_C="bs-st-$1-$ST_RUN"; }

# --- running things in the current container -----------------------------------------------------

# st_exec CMD...: run argv as root (no shell; pass `sh -c` yourself for one).
st_exec() { docker exec -i "$ST_C" "$@"; }

# st_exec_as USER CMD...: run argv as USER (uid, groups and HOME from the container's files).
st_exec_as() {
    local user=$1
    shift
    docker exec -i -u "$user" "$ST_C" "$@"
}

# st_sh 'SHELL TEXT' [ARGS...]: run shell text as root with bash; ARGS become $1...
st_sh() { docker exec -i "$ST_C" bash -c "$1" st_sh "${@:2}"; }

# st_ssh KEYFILE USER [CMD...]: a real SSH login from inside the container to USER@127.0.0.1 with
# only KEYFILE (a path in the container, mode 0600, owned by root) as identity.
st_ssh() {
    local key=$1 user=$2
    shift 2
    docker exec -i "$ST_C" ssh -i "$key" -o IdentitiesOnly=yes -o BatchMode=yes \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
        -o ConnectTimeout=10 "$user@127.0.0.1" "$@"
}

# st_tool CMD...: run a tool as root in the current container and keep what it printed. Sets
# ST_RC (exit status; never fails itself, so check ST_RC) and ST_JSON (stdout, JSON Lines).
# stdout also goes to $ST_LOG_DIR/last.json and tools.log, stderr to our stderr.
st_tool() {
    st_step "run: $*"
    ST_RC=0
    docker exec -i "$ST_C" "$@" >"$ST_LAST_JSON" 2>"$ST_LOG_DIR/last.stderr" || ST_RC=$?
    # shellcheck disable=SC2034 # read by the scenarios
    ST_JSON=$(<"$ST_LAST_JSON")
    { printf '### %s (exit %s)\n' "$*" "$ST_RC"; cat "$ST_LAST_JSON"; } >>"$ST_LOG_DIR/tools.log"
    cat "$ST_LOG_DIR/last.stderr" >&2
}

# --- assertions: print a clear message and return non-zero ---------------------------------------

assert_eq() {
    [[ $1 == "$2" ]] || st_fail "$3: expected '$1', got '$2'"
}

assert_contains() {
    [[ $1 == *"$2"* ]] || st_fail "$3: '$2' not found in:"$'\n'"$1"
}

assert_not_contains() {
    [[ $1 != *"$2"* ]] || st_fail "$3: '$2' found in:"$'\n'"$1"
}

# assert_success WHAT CMD...: CMD exits 0 (its output is shown only when it does not).
assert_success() {
    local what=$1 out rc=0
    shift
    out=$("$@" 2>&1) || rc=$?
    ((rc == 0)) || st_fail "$what: exit $rc from: $*"$'\n'"$out"
}

# assert_failure WHAT CMD...: CMD exits non-zero.
assert_failure() {
    local what=$1 out rc=0
    shift
    out=$("$@" 2>&1) || rc=$?
    ((rc != 0)) || st_fail "$what: succeeded but should have failed: $*"$'\n'"$out"
}

# assert_json_eq FILTER EXPECTED JSON WHAT: `jq -c FILTER` over JSON (one document or JSON Lines)
# equals EXPECTED. EXPECTED is JSON (0, true, "x", {"a":1}; several values one a line), or, if it
# does not parse as JSON, plain text compared with `jq -r FILTER`.
assert_json_eq() {
    local filter=$1 expected=$2 json=$3 what=$4 actual norm
    if norm=$(jq -c . <<<"$expected" 2>/dev/null) && [[ -n $norm ]]; then
        actual=$(jq -c "$filter" <<<"$json" 2>&1) ||
            st_fail "$what: jq '$filter' failed: $actual"$'\n'"on: $json" || return 1
        expected=$norm
    else
        actual=$(jq -r "$filter" <<<"$json" 2>&1) ||
            st_fail "$what: jq '$filter' failed: $actual"$'\n'"on: $json" || return 1
    fi
    [[ $actual == "$expected" ]] ||
        st_fail "$what: jq '$filter' gave '$actual', expected '$expected'"$'\n'"on: $json"
}

# --- logins and background services (added for the bs-users scenarios; others may use them) ---

# st_wait_port PORT: wait (up to 10 s) until something in the current container listens on PORT.
st_wait_port() { st__wait_port "$1"; }

# st_exec_bg CMD...: start argv as root in the current container and do not wait for it (a fake
# server, a daemon). It runs until the container goes.
st_exec_bg() { docker exec -d "$ST_C" "$@"; }

# st_fixture_key LOGIN: install the checkout's tests/fixtures/ssh/LOGIN (a private key whose
# public half is keys/LOGIN) as /root/keys/LOGIN, mode 0600 as ssh wants, and print that path.
st_fixture_key() {
    docker exec "$ST_C" sh -c 'install -d -m 700 /root/keys &&
        install -m 600 "/opt/bs/tests/fixtures/ssh/$1" "/root/keys/$1"' sh "$1" ||
        st_fail "cannot install the fixture key of $1" || return 1
    printf '/root/keys/%s\n' "$1"
}

# st_new_key NAME: make a fresh ed25519 key pair /root/keys/NAME(.pub) in the current container
# and print the private key's path.
st_new_key() {
    docker exec "$ST_C" sh -c 'install -d -m 700 /root/keys && rm -f "/root/keys/$1" "/root/keys/$1.pub" &&
        ssh-keygen -q -t ed25519 -N "" -C "$1" -f "/root/keys/$1"' sh "$1" ||
        st_fail "cannot make key $1" || return 1
    printf '/root/keys/%s\n' "$1"
}

# st_sshd_count TEXT: how many lines of the container's sshd log contain TEXT.
st_sshd_count() {
    local n
    n=$(docker exec "$ST_C" grep -cF -- "$1" /var/log/sshd.log) || true
    printf '%s\n' "${n:-0}"
}

# st_first_login KEY USER: the first login of a user bs-users created (empty, expired password).
# Asserts that sshd accepts the key (its log names the key's fingerprint) and then demands a new
# password, which a non-interactive ssh cannot give; then sets a password as the person would at
# that prompt (chpasswd as root) and keeps it in ST_PASSWORD. Call it directly, not in $(...).
ST_PASSWORD=""
st_first_login() {
    local key=$1 user=$2 fp accepted before out rc=0 i
    fp=$(docker exec "$ST_C" ssh-keygen -lf "$key" | awk '{ print $2 }')
    [[ -n $fp ]] || st_fail "cannot read the fingerprint of $key" || return 1
    accepted="Accepted publickey for $user from 127.0.0.1"
    before=$(st_sshd_count "$accepted")
    st_step "first login of $user: key accepted, then a new password demanded"
    out=$(st_ssh "$key" "$user" id 2>&1) || rc=$?
    ((rc != 0)) || st_fail "first login of $user succeeded with no password change: $out" ||
        return 1
    assert_contains "$out" "Password change required" \
        "the first login of $user demands a new password" || return 1
    for ((i = 0; i < 20; i++)); do
        (($(st_sshd_count "$accepted") > before)) && break
        sleep 0.1
    done
    (($(st_sshd_count "$accepted") > before)) ||
        st_fail "sshd did not log '$accepted' for the first login" || return 1
    assert_contains "$(docker exec "$ST_C" grep -F -- "$accepted" /var/log/sshd.log | tail -n 1)" \
        "$fp" "sshd accepted the key $key ($fp)" || return 1
    # A '#' after every hex digit: cracklib (pam_pwquality's dictcheck) refuses a password with
    # more than 3 neighbouring characters one apart ("34", "ba"), which random hex often has.
    ST_PASSWORD="St-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' | sed 's/./&#/g')"
    printf '%s:%s\n' "$user" "$ST_PASSWORD" | docker exec -i "$ST_C" chpasswd ||
        st_fail "chpasswd for $user failed" || return 1
}

# assert_managed_groups: the groups every backend's defaults give (developers, researchers,
# reviewers with its pinned gid 10010, docker, sudo) exist, and so does the service account
# opensafely, uid/gid 10000, in docker.
assert_managed_groups() {
    local group
    assert_eq "10000:10000" "$(st_exec id -u opensafely):$(st_exec id -g opensafely)" \
        "the service account opensafely is uid/gid 10000" || return 1
    assert_contains " $(st_exec id -nG opensafely) " " docker " "opensafely is in docker" ||
        return 1
    assert_eq 10010 "$(st_exec getent group reviewers | cut -d: -f3)" \
        "reviewers has its pinned gid" || return 1
    for group in developers researchers reviewers docker sudo; do
        assert_success "group $group exists" st_exec getent group "$group" || return 1
    done
}

# assert_person LOGIN GROUPS: bs-users made the account of list login LOGIN (its Unix name is
# LOGIN in lower case) with exactly the supplementary GROUPS (space-separated), a 0750 home of its
# own, an empty expired password (set at first login), and a root-owned keys file that holds the
# key from keys/LOGIN.
assert_person() {
    local login=$1 groups=$2 user actual expected keyfile key
    user=${login,,}
    assert_success "account $user exists" st_exec id "$user" || return 1
    actual=$(st_exec id -nG "$user" | tr ' ' '\n' | grep -vx "$user" | sort | tr '\n' ' ')
    expected=$(tr ' ' '\n' <<<"$groups" | sort | tr '\n' ' ')
    assert_eq "$expected" "$actual" "$user's supplementary groups" || return 1
    assert_eq "750 $user $user" "$(st_exec stat -c '%a %U %G' "/home/$user")" "$user's home" ||
        return 1
    # New people: empty password, expired (last change day 0), so they set one at first login.
    assert_eq ":0" "$(st_exec getent shadow "$user" | cut -d: -f2,3)" \
        "$user has an empty, expired password" || return 1
    keyfile=/etc/ssh/authorized_keys.d/$user
    assert_eq "644 root root" "$(st_exec stat -c '%a %U %G' "$keyfile")" \
        "$keyfile is root-owned and read-only to others" || return 1
    key=$(st_exec grep -m1 -E '^(ssh|ecdsa|sk)-' "/opt/bs/keys/$login" | awk '{ print $1, $2 }')
    assert_contains "$(st_exec cat "$keyfile")" "$key" "$keyfile holds the key from keys/$login"
}

# st_summaries: the summary records of the last st_tool, one a line (compact JSON).
st_summaries() { jq -c 'select(.type == "summary")' <<<"$ST_JSON"; }

# assert_json_lines JSON WHAT: every line of JSON is a JSON object with string "tool" and "type".
assert_json_lines() {
    local line n=0
    while IFS= read -r line; do
        n=$((n + 1))
        jq -e 'type == "object" and (.tool | type == "string") and (.type | type == "string")' \
            <<<"$line" >/dev/null 2>&1 ||
            st_fail "$2: line $n is not a JSON object with \"tool\" and \"type\": $line" || return 1
    done <<<"$1"
    ((n > 0)) || st_fail "$2: no output at all"
}

# --- what a failed scenario leaves behind --------------------------------------------------------

# Print the last tool output and every container's relevant logs (called at exit on failure).
# A scenario may name more files to show in ST_DUMP_FILES (space-separated container paths).
st_dump() {
    local c f
    printf '=== last tool stdout (%s) ===\n' "$ST_LAST_JSON"
    tail -n 50 "$ST_LAST_JSON" 2>/dev/null || true
    if [[ -s $ST_LOG_DIR/last.stderr ]]; then
        printf '=== last tool stderr ===\n'
        tail -n 50 "$ST_LOG_DIR/last.stderr"
    fi
    for c in $(st__ours container); do
        printf '=== %s: docker logs ===\n' "$c"
        docker logs --tail 50 "$c" 2>&1 || true
        for f in /var/log/sshd.log /var/log/auth.log /var/log/sudo.log /var/log/syslog \
            ${ST_DUMP_FILES:-}; do
            docker exec "$c" sh -c '[ -s "$1" ] && echo "=== '"$c"': $1 ===" && tail -n 50 "$1"' \
                sh "$f" 2>/dev/null || true
        done
        printf '=== %s: processes ===\n' "$c"
        docker exec "$c" ps -eo pid,user,args 2>&1 || true
    done
}

# --- stand-ins for what a container lacks: a service manager, a key server, a PTP clock ---------

# st_engine_restarted_by_hand: what an operator's restart of the Docker engine leaves for
# bs-docker to see, in the current container. bs-docker wrote the container's daemon.json and,
# with restarts not allowed (the default), owes a restart that `check` counts as drift until
# dockerd's pid file, of a running process, is newer than its marker. The engine these
# containers reach is the host's, which a test must never restart: the container's PID 1
# stands in for that dockerd.
st_engine_restarted_by_hand() {
    st_exec sh -c 'echo 1 >/var/run/docker.pid &&
        touch -r /var/lib/bs/docker/restart-pending -d "+1 second" /var/run/docker.pid'
}

# st_standin_services UNIT...: a stand-in service manager for a container without systemd, and the
# services it manages "running". /usr/local/sbin/bs-svc VERB UNIT appends "VERB UNIT" to
# /var/log/bs-svc.log (the order bs-chrony asked in); chrony.service is the real chronyd, run with
# -x so the clock is never touched (restart: the running one is killed and a new one started with
# the config as it now is, failing as chronyd fails); every other unit is a state file
# /run/bs-svc/UNIT. Starts chronyd -x and marks the UNITs running. Start the container with
# --init: chronyd takes a zombie's pid in its pid file for a chronyd still running.
st_standin_services() {
    st_sh 'cat >/usr/local/sbin/bs-svc <<"EOF"
#!/bin/sh
set -u
verb=$1 unit=$2
echo "$verb $unit" >>/var/log/bs-svc.log
if [ "$unit" = chrony.service ]; then
    if [ "$verb" != start ] && [ -s /run/chrony/chronyd.pid ]; then
        kill "$(cat /run/chrony/chronyd.pid)" 2>/dev/null || true
        i=0
        while pgrep -x chronyd >/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    fi
    [ "$verb" = stop ] && exit 0
    exec chronyd -x
fi
case $verb in
    stop) rm -f "/run/bs-svc/$unit" ;;
    start) mkdir -p /run/bs-svc && touch "/run/bs-svc/$unit" ;;
esac
EOF
chmod 755 /usr/local/sbin/bs-svc
install -d -o _chrony -g _chrony -m 750 /run/chrony
mkdir -p /run/bs-svc
for unit; do touch "/run/bs-svc/$unit"; done
chronyd -x' "$@"
}

# st_chrony_toml [LINE...]: the [chrony] tables of a host-local override (/etc/bs/local.toml)
# that drive services through bs-svc (service_manager = "commands": there is no systemctl), with
# a readiness bound that fails fast, plus LINEs (more [chrony] keys).
st_chrony_toml() {
    printf '%s\n' '[chrony]' 'service_manager = "commands"' 'ready_timeout_secs = 15' "$@" '' \
        '[chrony.service_commands]'
    local verb
    for verb in start stop restart; do
        printf '%s = ["/usr/local/sbin/bs-svc", "%s", "{service}"]\n' "$verb" "$verb"
    done
}

# st_feed_refclock SOCKET NAME: feed a `refclock SOCK SOCKET refid NAME` of the container's
# chronyd samples of the system clock (struct sock_sample, 4 a second), as a PTP clock would give
# them, and wait (up to 30 s) until chronyd selects NAME. The feeder runs until the container goes.
st_feed_refclock() {
    st_sh 'cat >/usr/local/bin/feed-refclock <<"EOF"
#!/usr/bin/python3
import socket, struct, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
while True:
    t = time.time()
    try:
        s.sendto(struct.pack("qqdiiii", int(t), int((t % 1) * 1e6), 0.0, 0, 0, 0, 0x534F434B),
                 sys.argv[1])
    except OSError:
        pass
    time.sleep(0.25)
EOF
chmod 755 /usr/local/bin/feed-refclock'
    st_exec_bg /usr/local/bin/feed-refclock "$1"
    local i
    for ((i = 0; i < 60; i++)); do
        st_exec chronyc -n -c sources | grep -q "^#,\*,$2," && return 0
        sleep 0.5
    done
    st_fail "chronyd did not select the refclock $2 fed through $1 within 30 s"
}

# st_fake_keyserver DIR PORT: a fake GitHub keys endpoint on 127.0.0.1:PORT, speaking the contract
# bs-users relies on: GET /<login>.keys answers by the mode in DIR/mode: "good" (the default)
# serves DIR/keys/<login>.keys as text (an empty 200, GitHub's answer for a login without keys,
# if there is none), "500" a server error, "html" a 200 text/html error page (a proxy's). Every
# request is logged to /var/log/fake-keys.log as "PATH STATUS". Returns once it listens.
st_fake_keyserver() {
    st_sh 'mkdir -p "$1/keys" && { [ -e "$1/mode" ] || echo good >"$1/mode"; } &&
        cat >/usr/local/bin/fake-keyserver' "$1" <<'EOF'
#!/usr/bin/python3
import http.server, os, re, sys

SERVED, PORT = sys.argv[1], int(sys.argv[2])
HTML = (b"<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n"
        b"<body><h1>Bad Gateway</h1><p>The proxy could not reach github.com.</p></body></html>\n")

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open(os.path.join(SERVED, "mode")) as f:
            mode = f.read().strip()
        m = re.fullmatch(r"/([A-Za-z0-9-]+)\.keys", self.path)
        if m is None:
            status, ctype, body = 404, "text/plain", b"Not Found\n"
        elif mode == "500":
            status, ctype, body = 500, "text/plain", b"Internal Server Error\n"
        elif mode == "html":
            status, ctype, body = 200, "text/html; charset=utf-8", HTML
        else:
            status, ctype = 200, "text/plain; charset=utf-8"
            try:
                with open(os.path.join(SERVED, "keys", m.group(1) + ".keys"), "rb") as f:
                    body = f.read()
            except FileNotFoundError:
                body = b""
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        with open("/var/log/fake-keys.log", "a") as log:
            log.write("%s %s\n" % (self.path, args[1] if len(args) > 1 else "-"))

http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
EOF
    st_exec chmod 755 /usr/local/bin/fake-keyserver
    st_exec_bg /usr/local/bin/fake-keyserver "$1" "$2"
    st_wait_port "$2"
}
