#!/usr/bin/env bash
# The README's quick start, proven: a fresh Debian 12 container, as root, gets a clone of this
# repository and runs the two command lines of README.md's "Quick start" section verbatim (read
# from the README, not copied here); both must succeed.
#
# The container is the machine the README describes: Debian 12 with what bin/bootstrap installs
# from Debian already there (image bs-systest-dev, tests/images/build-dev: the tests reach no
# network, so bootstrap finds its packages present), `just` (copied in, as for every scenario),
# a Rust toolchain installed by rustup for root (the host's ~/.rustup and ~/.cargo/bin mounted
# read-only, a writable copy of the host's cargo registry, cargo set offline) and a running Docker
# engine (the host's, through its socket, with the host's docker client). No bs-* binary is
# installed beforehand: bootstrap builds and installs them.
#
# `just test` runs the unit tests and the system tests again inside; that run has
# BS_SYSTEST_NESTED=1: it never runs this scenario, and of the others only those marked
# `# systest-nested: run` (the outer run has just run every one on this same engine). The container shares the host's process ids (--pid host) so the nested runner's
# leftover sweep sees which scenario shells are alive, here and on the host. Root on a machine may
# mount file systems (bs-perms' tests mount a tmpfs): the container has CAP_SYS_ADMIN. It shares
# the host's network (--network host, CAP_NET_ADMIN) because the engine is the host's: a registry
# the tests start on 127.0.0.1 must be the engine's 127.0.0.1, and the firewall tests work in the
# namespaces and the DOCKER-USER chain the engine uses. None of this gives the tests inside more
# power than `just test` has when it runs on the host itself.
#
# 15-host's cache of Debian packages (filled by the outer run's 15-host, which runs first) is
# mounted read-only: the nested 15-host builds its local apt repository from it.
#
# The engine resolves bind-mount sources on the host, so what the tests inside bind-mount must be
# at the same path in here and out there: the clone and TMPDIR live on a Docker volume mounted in
# the container at the very path where the host keeps it (its Mountpoint), as in 50-jobs.
# systest-timeout: 5400
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

st_require_bins just
if [[ ${BS_SYSTEST_NESTED:-} == 1 ]]; then
    st_fail "90-readme must not run inside its own nested test run (BS_SYSTEST_NESTED=1)"
fi
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
for need in "$rustup_home/toolchains" "$cargo_home/bin/cargo" "$cargo_home/registry" \
    /var/run/docker.sock; do
    [[ -e $need ]] || st_fail "the README scenario needs $need on this host (rustup, Docker)"
done
docker_cli=$(command -v docker)
# Ansible for 70-fleet comes from PyPI into a venv (bin/bootstrap); the container reaches no
# network, so the host's venv is lent read-only at the same path, and bootstrap finds it there.
ansible_venv=${BS_ANSIBLE_VENV:-/usr/local/lib/bs-ansible}
[[ -x $ansible_venv/bin/ansible-playbook ]] ||
    st_fail "the README scenario needs the Ansible venv $ansible_venv (bin/bootstrap makes it)"

st_step "the image: Debian 12 with bin/bootstrap's packages"
"$ST_REPO/tests/images/build-dev" >/dev/null
ST_IMAGE=bs-systest-dev:latest
vol=$(st_volume readme)
mp=$(docker volume inspect -f '{{.Mountpoint}}' "$vol")
clone=$mp/bs
tmp=$mp/tmp
st_start readme --pid host --network host --cap-add SYS_ADMIN --cap-add NET_ADMIN \
    -v /var/run/docker.sock:/var/run/docker.sock -v "$vol:$mp" \
    -v "$rustup_home:/root/.rustup:ro" \
    -v "$cargo_home/bin:/root/.cargo/bin:ro" \
    -v "$cargo_home/registry:/mnt/host-cargo-registry:ro" \
    -v /var/cache/bs-systest/debs:/var/cache/bs-systest/debs:ro \
    -v "$ansible_venv:$ansible_venv:ro"

st_step "the machine: rustup's toolchain for root, a Docker engine, no bs tools yet"
st_exec sh -c 'rm -f /usr/local/bin/bs-*'
docker cp "$docker_cli" "$ST_C:/usr/local/bin/docker" >/dev/null
st_sh 'set -e
    cp -a /mnt/host-cargo-registry /root/.cargo/registry
    # What rustup-init leaves for root: ~/.cargo/env, sourced by the login shell.
    printf "%s\n" "case \":\$PATH:\" in *:\"\$HOME/.cargo/bin\":*) ;; *) export PATH=\"\$HOME/.cargo/bin:\$PATH\" ;; esac" \
        >/root/.cargo/env
    echo ". \"\$HOME/.cargo/env\"" >>/root/.profile
    echo ". \"\$HOME/.cargo/env\"" >>/root/.bashrc
    # The test reaches no network: cargo works from the registry copy.
    printf "[net]\noffline = true\n" >/root/.cargo/config.toml
    # sudo resets the environment; the nested run must still know it is nested, and keep the
    # TMPDIR the engine can see.
    echo "Defaults env_keep += \"BS_SYSTEST_NESTED TMPDIR\"" >/etc/sudoers.d/bs-systest-nested
    chmod 440 /etc/sudoers.d/bs-systest-nested
    visudo -cq'
assert_contains "$(st_exec bash -lc 'cargo --version')" "cargo " "cargo runs in a root login shell"
assert_success "the Docker engine answers from inside" st_exec docker info
assert_failure "no bs tool is installed yet" st_exec sh -c 'ls /usr/local/bin/bs-* 2>/dev/null'

st_step "a clone of the repository (the working tree as it is, committed in a scratch repo)"
st_sh 'set -e
    cd /opt/bs
    git init -q
    git add -A
    git -c user.name=systest -c user.email=systest@localhost commit -q -m "working tree"
    git clone -q /opt/bs "$1"
    install -d -m 1777 "$2"' "$clone" "$tmp"
assert_success "the clone has the README" st_exec test -f "$clone/README.md"

st_step "README.md's quick start commands"
# The indented lines of the "Quick start" section, up to the next heading.
mapfile -t commands < <(awk '/^## / { on = ($0 ~ /^## Quick start/); next }
    on && /^    [^ ]/ { sub(/^    /, ""); print }' "$ST_REPO/README.md")
assert_eq 2 "${#commands[@]}" "README.md's Quick start has two command lines: $(printf '[%s] ' "${commands[@]}")"

total_start=$SECONDS
for i in "${!commands[@]}"; do
    cmd=${commands[$i]}
    n=$((i + 1))
    st_step "README command $n, verbatim, in the clone: $cmd"
    start=$SECONDS
    rc=0
    docker exec -e BS_SYSTEST_NESTED=1 -e TMPDIR="$tmp" -w "$clone" "$ST_C" bash -lc "$cmd" \
        >"$ST_LOG_DIR/readme-$n.out" 2>"$ST_LOG_DIR/readme-$n.err" || rc=$?
    printf 'README command %d took %ss (exit %s)\n' "$n" "$((SECONDS - start))" "$rc" >&2
    if ((rc != 0)); then
        printf -- '--- stdout (last 40 lines) ---\n' >&2
        tail -n 40 "$ST_LOG_DIR/readme-$n.out" >&2
        printf -- '--- stderr (last 60 lines) ---\n' >&2
        tail -n 60 "$ST_LOG_DIR/readme-$n.err" >&2
    fi
    assert_eq 0 "$rc" "exit status of README command $n: $cmd"
done
printf 'README commands took %ss in all\n' "$((SECONDS - total_start))" >&2

st_step "what the commands did"
for main in "$ST_REPO"/crates/bs-*/src/main.rs; do
    tool=${main%/src/main.rs}
    tool=${tool##*/}
    assert_success "bootstrap installed $tool" st_exec test -x "/usr/local/bin/$tool"
done
out1=$(<"$ST_LOG_DIR/readme-1.out")
assert_json_eq '[.[] | select(.type == "summary")] | length > 0 and all(.ok)' true \
    "$(jq -R -s -c '[split("\n")[] | fromjson? | objects]' <<<"$out1")" \
    "the demo printed summaries, all ok"
out2=$(<"$ST_LOG_DIR/readme-2.out")
assert_contains "$out2" "nested run (BS_SYSTEST_NESTED=1)" \
    "the nested system tests ran only the scenarios marked systest-nested"
for s in "$ST_REPO"/tests/system/scenarios/*.sh; do
    if grep -qx '# systest-nested: run' "$s"; then
        assert_contains "$out2" "PASS  $(basename "$s" .sh)" "the nested run passed $(basename "$s" .sh)"
    fi
done
assert_contains "$(<"$ST_LOG_DIR/readme-2.err")" " failed; logs in " \
    "the nested system tests ran to their end"
printf 'nested system tests:\n%s\n' "$(grep -E '^(PASS|FAIL|SKIP) ' <<<"$out2")" >&2
