# bs: manage the servers of secure research backends.
# `just --list` shows the recipes; README.md says where to start.

set shell := ["bash", "-euo", "pipefail", "-c"]

release := justfile_directory() / "target/release"
sandbox := justfile_directory() / ".bs-sandbox"

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

# fmt --check, clippy -D warnings, shellcheck on every script, then every test.
check: lint-shell
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked -- -D warnings
    just test

# shellcheck on every shell script git tracks (bin/, bench/, tests/, .ci/).
lint-shell:
    git ls-files -z | xargs -0 grep -lZ -m1 -E '^#!.*\b(bash|sh)\b' | xargs -0 shellcheck -x tests/system/lib.sh

# Benchmarks: each tool against its baseline in one run; ratios go to BENCHMARKS.md.
bench: build
    BS_BIN_DIR={{release}} bench/run
