#!/usr/bin/env bash
# A fleet of three Debian backends driven by Ansible (ansible/, the opensafely.bs collection),
# reached with Ansible's docker connection from ansible-playbook in the venv bin/bootstrap
# makes. Each host has the checkout at /opt/bs turned into a git repository with a tag, and
# the playbooks bring /srv/bs to that tag (bs_source/bs_version) before converging from it.
# fleet1 is the canary (bs_canary), fleet2 and fleet3 production (bs_production); fleet3's
# bs-users fetches keys from the tests' fake key server on its loopback.
#  1. manage.yml converges all three; the hosts are really in the backend's state.
#  2. manage.yml again: changed=0 on every host; facts.yml gathers every tool's list/status.
#  3. A hand-made change on fleet2; check.yml reports drift on fleet2 alone, exits non-zero,
#     and changes nothing on any host.
#  4. fleet3's key server answers 500: manage.yml reports fleet3 failed (with every other
#     tool's results still there) while fleet1 and fleet2 converge (fleet2's drift repaired).
#  5. rollout.yml with a canary whose config is broken: the canary fails and no production
#     host is touched; mended, the rollout converges the canary and then production.
# Ansible's json callback gives the results; jq asserts on them.
# systest-timeout: 600
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

st_require_bins bs-host bs-users bs-perms bs-docker bs-chrony bs-jobs bs-release just
venv=${BS_ANSIBLE_VENV:-/usr/local/lib/bs-ansible}
[[ -x $venv/bin/ansible-playbook ]] ||
    st__die "ansible-playbook is missing from $venv: run bin/bootstrap (it makes that venv)"
ST_DUMP_FILES="/var/log/fake-keys.log /etc/bs/local.toml"

hosts=(fleet1 fleet2 fleet3)
port=8765
served=/srv/fake-keys
tag=fleet-test

st_network fleet
for h in "${hosts[@]}"; do
    st_start "$h"
    # The release the fleet runs: this checkout as a git repository, tagged.
    st_sh 'cd /opt/bs && git init -q -b main && git add -A &&
        git -c user.name=fleet -c user.email=fleet@bs.invalid commit -q -m "fleet test" &&
        git tag "$1"' "$tag"
done
# Each host's secrets: a token the runs must never carry off the host.
token="fleet-token-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
for h in "${hosts[@]}"; do
    docker exec "bs-st-$h-$ST_RUN" sh -c 'install -d -m 755 /etc/bs &&
        umask 077 && printf "JOB_SERVER_TOKEN=%s\n" "$1" >/etc/bs/secrets.env' sh "$token"
done
st_use fleet3
st_fake_keyserver "$served" "$port"
st_sh 'mkdir -p /etc/bs && printf "%s\n" "[users]" "fetch_keys = true" \
    "key_source = \"http://127.0.0.1:$1\"" >/etc/bs/local.toml' "$port"

inventory=$ST_LOG_DIR/inventory.yml
{
    printf '%s\n' 'bs_backends:' '  vars:' \
        '    ansible_connection: community.docker.docker' \
        '    ansible_python_interpreter: /usr/bin/python3' \
        '    bs_repo: /srv/bs' '    bs_source: file:///opt/bs' "    bs_version: $tag" \
        '  children:' '    bs_canary:' '      hosts:' \
        "        fleet1: {ansible_host: bs-st-fleet1-$ST_RUN, bs_backend: test}" \
        '    bs_production:' '      hosts:' \
        "        fleet2: {ansible_host: bs-st-fleet2-$ST_RUN, bs_backend: test}" \
        "        fleet3: {ansible_host: bs-st-fleet3-$ST_RUN, bs_backend: test}"
} >"$inventory"

# fleet_run NAME PLAYBOOK [ARGS...]: ansible-playbook PLAYBOOK over the test fleet with the json
# callback. Sets FLEET_RC and FLEET_JSON (its stdout, one JSON document; also in NAME.json).
FLEET_RC=0
FLEET_JSON=""
fleet_run() {
    local name=$1 playbook=$2
    shift 2
    st_step "ansible-playbook $playbook $* ($name)"
    FLEET_RC=0
    LC_ALL=C.UTF-8 ANSIBLE_CONFIG=$ST_REPO/ansible/ansible.cfg ANSIBLE_STDOUT_CALLBACK=ansible.posix.json \
        ANSIBLE_HOME=$ST_LOG_DIR/ansible-home ANSIBLE_NOCOLOR=1 \
        "$venv/bin/ansible-playbook" -i "$inventory" "$ST_REPO/ansible/playbooks/$playbook" "$@" \
        >"$ST_LOG_DIR/$name.json" 2>"$ST_LOG_DIR/$name.stderr" || FLEET_RC=$?
    FLEET_JSON=$(<"$ST_LOG_DIR/$name.json")
    cp "$ST_LOG_DIR/$name.json" "$ST_LAST_JSON"
    jq -c '.stats' <<<"$FLEET_JSON" >&2 || { cat "$ST_LOG_DIR/$name.stderr" >&2; return 1; }
}
# stat HOST FIELD: a field of the recap of HOST (ok, changed, failures, ...); 0 when absent.
stat() { jq -r --arg h "$1" --arg f "$2" '.stats[$h][$f] // 0' <<<"$FLEET_JSON"; }
# result HOST TASK: the result of TASK (its name; a role's tasks are "ROLE : NAME") on HOST,
# compact JSON ("null" if it never ran).
result() {
    jq -c --arg h "$1" --arg t "$2" \
        '[.plays[].tasks[] | select(.task.name == $t or (.task.name | endswith(" : " + $t)))
          | .hosts[$h] // empty] | last' \
        <<<"$FLEET_JSON"
}
converge_task="Converge the host with the bs tools"
# The test backend's manage chain, in its order (backends/test/justfile).
all_tools='["bs-host","bs-users","bs-perms","bs-docker","bs-chrony","bs-jobs","bs-release"]'

# nothing_changed_since HOST: no file under the trees bs manages is newer than the marker.
mark() { docker exec "bs-st-$1-$ST_RUN" sh -c 'touch /tmp/fleet-marker && sleep 1'; }
nothing_changed_since() {
    local newer
    newer=$(docker exec "bs-st-$1-$ST_RUN" find /etc /srv /home /var/lib/bs /usr/local/bin \
        -xdev -newer /tmp/fleet-marker -print)
    assert_eq "" "$newer" "$2: nothing on $1 changed"
}

st_step "1. manage.yml converges the three hosts"
fleet_run first manage.yml
assert_eq 0 "$FLEET_RC" "exit status of the first manage.yml"
for h in "${hosts[@]}"; do
    assert_eq 0 "$(stat "$h" failures)" "first run: $h has no failure"
    (($(stat "$h" changed) >= 2)) || st_fail "first run: $h changed nothing (checkout and converge)"
    r=$(result "$h" "$converge_task")
    assert_json_eq '[.exit, .mode, .changed, .failed_tools, .tool_order]' \
        "[0,\"apply\",true,[],$all_tools]" "$r" "first run: $h's converge result"
    assert_json_eq '[.tools[] | .ok] | all' true "$r" "first run: every tool on $h is ok"
    assert_json_eq '.tools["bs-users"].summary.changed > 0' true "$r" \
        "first run: bs-users on $h changed something"
    assert_json_eq '.ansible_facts.bs_converge.tools["bs-perms"].ok' true "$r" \
        "first run: the converge facts on $h"
    st_use "$h"
    assert_eq "$(st_exec git -C /opt/bs rev-parse "$tag^{commit}")" \
        "$(st_exec git -C /srv/bs rev-parse HEAD)" "$h: /srv/bs is at $tag"
    # The accounts are really there (10-manage-twice checks the whole state of one host).
    assert_eq "test-researcher docker researchers reviewers" \
        "$(st_exec id -nG test-researcher)" "$h: test-researcher and its groups"
done

st_step "2. manage.yml again: nothing changes"
fleet_run second manage.yml
assert_eq 0 "$FLEET_RC" "exit status of the second manage.yml"
for h in "${hosts[@]}"; do
    assert_eq "0 0" "$(stat "$h" changed) $(stat "$h" failures)" "second run: $h changed=0 failures=0"
    assert_json_eq '[.tools[] | .summary.changed] | add' 0 "$(result "$h" "$converge_task")" \
        "second run: every tool on $h changed nothing"
done

st_step "2b. facts.yml: list/status of every tool, the records hidden (no_log)"
fleet_run facts facts.yml
assert_eq 0 "$FLEET_RC" "exit status of facts.yml"
for h in "${hosts[@]}"; do
    assert_json_eq '.censored | type' '"string"' "$(result "$h" "Gather list/status of every tool")" \
        "$h: the facts task's result is hidden by no_log"
    assert_json_eq '.msg | map(select(.[1])) | map(.[0]) | sort' '["bs-jobs","bs-perms","bs-users"]' \
        "$(result "$h" "Show which tools answered")" "$h: bs-users, bs-perms and bs-jobs answered"
    # The containers have no Docker engine and no chronyd: those two are warnings, not failures.
    assert_json_eq '.warnings | map(split(":")[0]) | sort' '["bs-chrony status","bs-docker status"]' \
        "$(result "$h" "Gather list/status of every tool")" "$h: the tools that could not answer are warned of"
done

st_step "3. a hand-made change on fleet2: check.yml reports it there alone and changes nothing"
for h in "${hosts[@]}"; do
    st_use "$h"
    st_engine_restarted_by_hand # the engine restart bs-docker owes for daemon.json, done
done
st_use fleet2
st_exec chmod 0755 /srv/high_privacy
for h in "${hosts[@]}"; do mark "$h"; done
fleet_run check check.yml --diff
assert_eq 2 "$FLEET_RC" "exit status of check.yml with drift (a failed host: the fleet sum-up)"
check_task="Run the check chain (nothing changes)"
r=$(result fleet2 "$check_task")
assert_json_eq '[.mode, .drift, .changed, .exit, .failed_tools]' '["check",true,true,3,[]]' "$r" \
    "fleet2's check result"
assert_json_eq '.tools["bs-perms"].changed' true "$r" "fleet2: bs-perms found the drift"
assert_json_eq '[.records["bs-perms"][] | select(.target == "/srv/high_privacy") | .differs] | first' \
    '["mode"]' "$r" "fleet2: the drift record names the path and the mode"
assert_contains "$(jq -r '.diff[].prepared' <<<"$r")" "/srv/high_privacy" \
    "fleet2: --diff shows the drifted path"
assert_json_eq '[.tools | to_entries[] | select(.value.changed) | .key]' '["bs-perms"]' "$r" \
    "fleet2: bs-perms alone drifted"
for h in fleet1 fleet3; do
    assert_json_eq '[.mode, .drift, .changed, .exit]' '["check",false,false,0]' \
        "$(result "$h" "$check_task")" "$h's check result: no drift"
    assert_eq "0 0" "$(stat "$h" changed) $(stat "$h" failures)" "check: $h changed=0 failures=0"
done
assert_eq "1 0" "$(stat fleet2 changed) $(stat fleet2 failures)" "check: fleet2 changed=1 (drift)"
assert_eq 1 "$(stat localhost failures)" "check: the sum-up failed"
msg=$(result localhost "Fail when any backend drifted" | jq -r .msg)
assert_contains "$msg" "drift on fleet2" "the sum-up names fleet2"
assert_not_contains "$msg" "fleet1" "the sum-up does not name fleet1"
assert_not_contains "$msg" "fleet3" "the sum-up does not name fleet3"
assert_eq 755 "$(docker exec "bs-st-fleet2-$ST_RUN" stat -c %a /srv/high_privacy)" \
    "check left the hand-made mode on fleet2"
for h in "${hosts[@]}"; do nothing_changed_since "$h" "check.yml"; done

st_step "4. fleet3's key server fails: fleet3 is failed, fleet1 and fleet2 converge"
st_use fleet3
st_sh 'echo 500 >"$1/mode"' "$served"
keys_before=$(st_exec cat /etc/ssh/authorized_keys.d/test-researcher)
fleet_run keyserver manage.yml
assert_eq 2 "$FLEET_RC" "exit status of manage.yml with a failed host"
assert_eq 1 "$(stat fleet3 failures)" "fleet3 is failed"
r=$(result fleet3 "$converge_task")
assert_json_eq '[.failed, .exit, .failed_tools]' '[true,1,["bs-users"]]' "$r" "fleet3's result"
assert_json_eq '[.errors[] | select(.kind == "fetch_failed")] | length > 0' true "$r" \
    "fleet3: the fetch_failed error records are in the result"
assert_json_eq '.tool_order' "$all_tools" "$r" \
    "fleet3: every tool still ran and is reported"
assert_json_eq '[.tools | to_entries[] | select(.key != "bs-users") | .value.ok] | all' true "$r" \
    "fleet3: the other tools' results are there and ok"
assert_eq "$keys_before" "$(st_exec cat /etc/ssh/authorized_keys.d/test-researcher)" \
    "fleet3 kept the last good keys"
assert_eq "0 0" "$(stat fleet1 changed) $(stat fleet1 failures)" "fleet1 converged (no change)"
assert_eq "1 0" "$(stat fleet2 changed) $(stat fleet2 failures)" "fleet2 converged (its drift)"
assert_json_eq '.tools["bs-perms"].changed' true "$(result fleet2 "$converge_task")" \
    "fleet2: bs-perms repaired the drift"
assert_eq 750 "$(docker exec "bs-st-fleet2-$ST_RUN" stat -c %a /srv/high_privacy)" \
    "fleet2's /srv/high_privacy is back to 0750"
st_sh 'echo good >"$1/mode"' "$served"

st_step "5. rollout.yml: a failing canary touches no production host"
st_use fleet1
st_sh 'mkdir -p /etc/bs && printf "%s\n" "[users]" "fetch_keyz = true" >/etc/bs/local.toml'
st_use fleet2
st_exec chmod 0755 /srv/high_privacy
for h in fleet2 fleet3; do mark "$h"; done
fleet_run rollout-bad rollout.yml
assert_eq 2 "$FLEET_RC" "exit status of a rollout whose canary failed"
assert_eq 1 "$(stat fleet1 failures)" "the canary failed"
assert_json_eq '.exit' 2 "$(result fleet1 "$converge_task")" "the canary's config error (exit 2)"
for h in fleet2 fleet3; do
    assert_eq "0 0 0" "$(stat "$h" ok) $(stat "$h" changed) $(stat "$h" failures)" \
        "rollout: $h was not touched"
    assert_eq null "$(result "$h" "$converge_task")" "rollout: no converge ran on $h"
    nothing_changed_since "$h" "the failed rollout"
done
assert_eq 755 "$(docker exec "bs-st-fleet2-$ST_RUN" stat -c %a /srv/high_privacy)" \
    "the failed rollout left fleet2's drift alone"

st_step "5b. the canary mended: the rollout converges it, then production one at a time"
st_use fleet1
st_exec rm /etc/bs/local.toml
# Both production hosts in one batch (bs_serial): the canary still goes first, alone.
fleet_run rollout-good rollout.yml -e bs_serial=2
assert_eq 0 "$FLEET_RC" "exit status of the rollout"
for h in "${hosts[@]}"; do
    assert_eq 0 "$(stat "$h" failures)" "rollout: $h has no failure"
done
assert_eq 1 "$(stat fleet2 changed)" "rollout: fleet2 converged"
assert_eq 750 "$(docker exec "bs-st-fleet2-$ST_RUN" stat -c %a /srv/high_privacy)" \
    "the rollout repaired fleet2"
# One play entry per serial batch: the names in order, repeats dropped.
assert_json_eq '[.plays[].play.name] | . as $n | [range(length) | select(. == 0 or $n[.] != $n[. - 1]) | $n[.]]' \
    '["Refuse a rollout without a canary","Converge the canary (the test backend)","Converge the production backends, one at a time"]' \
    "$FLEET_JSON" "the rollout's plays, canary first"
assert_json_eq '[.plays[] | select(.play.name | startswith("Converge the canary")) | .tasks[-1].hosts | keys]' \
    '[["fleet1"]]' "$FLEET_JSON" "the canary play converged fleet1 alone"
st_step "the hosts' tokens never left them"
all_output=$(cat "$ST_LOG_DIR"/*.json "$ST_LOG_DIR"/*.stderr)
assert_not_contains "$all_output" "$token" "no fleet run's output holds a host's token"
for h in "${hosts[@]}"; do
    assert_eq "600 root $token" \
        "$(docker exec "bs-st-$h-$ST_RUN" sh -c 'stat -c "%a %U" /etc/bs/secrets.env &&
            cut -d= -f2 /etc/bs/secrets.env' | tr '\n' ' ' | sed 's/ $//')" \
        "$h's secrets file is where it was, as it was"
done
