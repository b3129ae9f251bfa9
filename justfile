# bs: manage the servers of secure research backends.
# `just --list` shows the recipes; README.md says where to start.

set shell := ["bash", "-euo", "pipefail", "-c"]

release := justfile_directory() / "target/release"
sandbox := justfile_directory() / ".bs-sandbox"
ansible_dir := justfile_directory() / "ansible"
ansible_venv := env_var_or_default("BS_ANSIBLE_VENV", "/usr/local/lib/bs-ansible")

default:
    @just --list

# Converge this host (or the sandbox root in $BS_ROOT) to backends/BACKEND.
manage backend:
    just --justfile backends/{{backend}}/justfile manage

# Report drift against backends/BACKEND without changing anything (exit 3 on drift).
check-backend backend:
    just --justfile backends/{{backend}}/justfile check

# Which backend this host is (BACKEND, which bs-host gives every login shell).
whereami:
    just --justfile backends/${BACKEND:?BACKEND is not set: run just manage BACKEND first}/justfile whereami

# Fleet-wide drift over an Ansible INVENTORY (docs/fleet.md): non-zero exit when a backend drifted.
fleet-check inventory *args:
    ANSIBLE_CONFIG={{ansible_dir}}/ansible.cfg {{ansible_venv}}/bin/ansible-playbook -i {{quote(join(invocation_directory(), inventory))}} {{ansible_dir}}/playbooks/check.yml {{args}}

# Bring every backend in INVENTORY to its bs version and converge it, all at once.
fleet-manage inventory *args:
    ANSIBLE_CONFIG={{ansible_dir}}/ansible.cfg {{ansible_venv}}/bin/ansible-playbook -i {{quote(join(invocation_directory(), inventory))}} {{ansible_dir}}/playbooks/manage.yml {{args}}

# The same through the canary: the test backend first, then production one at a time.
fleet-rollout inventory *args:
    ANSIBLE_CONFIG={{ansible_dir}}/ansible.cfg {{ansible_venv}}/bin/ansible-playbook -i {{quote(join(invocation_directory(), inventory))}} {{ansible_dir}}/playbooks/rollout.yml {{args}}

# ansible-lint on ansible/ (the venv bin/bootstrap makes); part of `just check`.
lint-ansible:
    cd {{ansible_dir}} && ANSIBLE_CONFIG={{ansible_dir}}/ansible.cfg {{ansible_venv}}/bin/ansible-lint --offline --nocolor playbooks collections/ansible_collections/opensafely/bs

# ansible-test sanity and units on the collection. Not in `just check`: its first run builds a
# virtualenv per sanity test from PyPI (about 20 minutes on 2 cores), too slow for every CI run.
test-ansible:
    {{ansible_dir}}/tests/ansible-test sanity
    {{ansible_dir}}/tests/ansible-test units

# Build the release binaries of every tool.
build:
    cargo build --release --locked --workspace

# The quick start: `manage test` into a fresh sandbox root (.bs-sandbox/), printing its JSON.
demo: build
    bin/sandbox-root {{sandbox}}
    PATH="{{release}}:$PATH" BS_ROOT={{sandbox}} just manage test

# Every test: unit and integration tests, then the system tests in containers.
test: test-unit test-system

# Unit and per-tool integration tests (sandbox roots, fake servers on 127.0.0.1).
test-unit:
    cargo test --workspace --locked

# System tests: real containers, real sshd, sudo and ACLs (needs Docker and debootstrap).
test-system: build
    BS_BIN_DIR={{release}} tests/system/run

# fmt --check, clippy -D warnings, shellcheck on every script, the Ansible lints, then every test.
check: lint-shell lint-ansible
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked -- -D warnings
    just test

# shellcheck on every shell script git tracks (bin/, bench/, tests/, .ci/).
lint-shell:
    git ls-files -z | xargs -0 grep -lZ -m1 -E '^#!.*\b(bash|sh)\b' | xargs -0 shellcheck -x tests/system/lib.sh

# Benchmarks: each tool against its baseline in one run; ratios go to BENCHMARKS.md.
bench: build
    BS_BIN_DIR={{release}} bench/run
