#!/usr/bin/env bash
# Fleet benchmark: converging three backends with Ansible (ansible/playbooks/manage.yml over
# the docker connection, the hosts in parallel) against what an operator does today, three
# sequential `just manage test` runs, one per host, over `docker exec`. Each side gets three
# fresh containers from the system tests' base image (tests/system/lib.sh) and is timed twice:
# the first converge of fresh hosts, then a no-op re-run. Prints the times and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
export ST_REPO=$PWD
export BS_BIN_DIR=${BS_BIN_DIR:-$PWD/target/release}
venv=${BS_ANSIBLE_VENV:-/usr/local/lib/bs-ansible}
[ -x "$venv/bin/ansible-playbook" ] || { echo "bench: $venv/bin/ansible-playbook is missing: run bin/bootstrap" >&2; exit 1; }
# shellcheck source=tests/system/lib.sh
source tests/system/lib.sh
st_require_bins bs-users bs-perms bs-docker bs-chrony bs-jobs bs-release just || exit 1
tests/images/build-base >/dev/null

now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$2"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }

st_network fleetbench
for i in 1 2 3; do
    st_start "ans$i" >/dev/null 2>&1
    st_start "seq$i" >/dev/null 2>&1
done

inventory=$ST_LOG_DIR/inventory.yml
{
    printf '%s\n' 'bs_backends:' '  vars:' \
        '    ansible_connection: community.docker.docker' \
        '    ansible_python_interpreter: /usr/bin/python3' \
        '    bs_repo: /opt/bs' '  children:' '    bs_production:' '      hosts:'
    for i in 1 2 3; do
        printf '        ans%s: {ansible_host: bs-st-ans%s-%s, bs_backend: test}\n' "$i" "$i" "$ST_RUN"
    done
} >"$inventory"
fleet() {
    LC_ALL=C.UTF-8 ANSIBLE_CONFIG=$PWD/ansible/ansible.cfg ANSIBLE_HOME=$ST_LOG_DIR/ansible-home \
        "$venv/bin/ansible-playbook" -i "$inventory" ansible/playbooks/manage.yml \
        >"$ST_LOG_DIR/fleet-$1.log" 2>&1 ||
        { echo "bench: the fleet run failed ($ST_LOG_DIR/fleet-$1.log)" >&2; tail -n 30 "$ST_LOG_DIR/fleet-$1.log" >&2; exit 1; }
}
sequential() {
    local i
    for i in 1 2 3; do
        docker exec "bs-st-seq$i-$ST_RUN" sh -c 'cd /opt/bs && exec just manage test' \
            >"$ST_LOG_DIR/seq-$1-$i.jsonl" 2>&1 ||
            { echo "bench: just manage test failed on seq$i" >&2; tail -n 30 "$ST_LOG_DIR/seq-$1-$i.jsonl" >&2; exit 1; }
    done
}

echo "## fleet (3 backends, the test backend)"
printf '| run | Ansible manage.yml (3 hosts in parallel) | 3 x just manage over docker exec | ratio |\n'
printf '|---|---|---|---|\n'
for run in first no-op; do
    t0=$(now); fleet "$run"; t1=$(now)
    sequential "$run"; t2=$(now)
    a=$(elapsed "$t0" "$t1") s=$(elapsed "$t1" "$t2")
    printf '| %s | %s s | %s s | %s |\n' "$run" "$a" "$s" "$(ratio "$a" "$s")"
done
grep -E 'changed=|failed=' "$ST_LOG_DIR/fleet-no-op.log" | sed 's/^/    /' >&2
