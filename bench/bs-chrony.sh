#!/usr/bin/env bash
# bs-chrony benchmarks against what an operator would otherwise run, side by
# side in one run, with a real chronyd (-x: the clock is never touched) in a
# temp dir; prints ratios.
#   1. `bs-chrony status` vs `chronyc -c tracking; chronyc -c sources`
#      (a monitoring script's two calls). bs-chrony runs those same two
#      processes plus itself, so the ratio is about 3 by construction; the
#      target is absolute: <= 50 ms a run, nothing next to a monitoring interval.
#   2. a no-op `bs-chrony apply` (config already right) vs the same checks
#      by hand: `test -e /dev/ptp_hyperv; grep -q refclock conf.d/*;
#      chronyd -p -f chrony.conf; systemctl is-active systemd-timesyncd`
#      (target: ratio <= 1.2)
# BENCH_RUNS (50) runs of each.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BS_BIN_DIR:-$PWD/target/release}
runs=${BENCH_RUNS:-50}
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/bs-bench-chrony.XXXXXX")
chmod 700 "$work"
pid=""
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
    if [[ -n $pid ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }
status=0
verdict() { # NAME VALUE LIMIT
    if python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) <= float(sys.argv[2]) else 1)" "$2" "$3"; then
        echo "   $1: $2 <= $3  PASS"
    else
        echo "   $1: $2 <= $3  FAIL"; status=1
    fi
}

# The chronyd.
mkdir "$work/chronyd" && chmod 700 "$work/chronyd"
sock=$work/chronyd/chronyd.sock
cat >"$work/chronyd/chrony.conf" <<CONF
local stratum 3
bindcmdaddress $sock
cmdport 0
port 0
pidfile $work/chronyd/chronyd.pid
driftfile $work/chronyd/drift
CONF
/usr/sbin/chronyd -x -d -u root -f "$work/chronyd/chrony.conf" 2>"$work/chronyd/log" &
pid=$!
for _ in $(seq 50); do chronyc -h "$sock" -c tracking >/dev/null 2>&1 && break; sleep 0.1; done

# A sandbox root with Debian's chrony.conf, a stand-in device, already applied.
root=$work/root
bin/sandbox-root "$root" 2>/dev/null
mkdir -p "$root/etc/chrony/conf.d" "$root/dev" "$root/etc/bs"
cp /etc/chrony/chrony.conf "$root/etc/chrony/chrony.conf" 2>/dev/null ||
    printf 'confdir /etc/chrony/conf.d\nmakestep 1 3\n' >"$root/etc/chrony/chrony.conf"
ln -s ptp0 "$root/dev/ptp_hyperv"
printf '[chrony]\nchronyc_host = "%s"\n' "$sock" >"$root/etc/bs/local.toml"
export BS_ROOT=$root BS_REPO=$PWD BS_BACKEND=tpp
"$bin/bs-chrony" apply >/dev/null

echo "bs-chrony ($runs runs each)"
t0=$(now); for _ in $(seq "$runs"); do "$bin/bs-chrony" status >/dev/null; done; t1=$(now)
for _ in $(seq "$runs"); do chronyc -h "$sock" -n -c tracking >/dev/null; chronyc -h "$sock" -n -c sources >/dev/null; done; t2=$(now)
tool=$(elapsed "$t0" "$t1"); base=$(elapsed "$t1" "$t2")
echo "1. status: bs-chrony ${tool}s, chronyc x2 ${base}s, ratio $(ratio "$tool" "$base")"
verdict "status ms a run" "$(python3 -c "import sys; print(f'{float(sys.argv[1]) * 1000 / int(sys.argv[2]):.1f}')" "$tool" "$runs")" 50

t0=$(now); for _ in $(seq "$runs"); do "$bin/bs-chrony" apply >/dev/null; done; t1=$(now)
for _ in $(seq "$runs"); do
    test -e "$root/dev/ptp_hyperv" || test -L "$root/dev/ptp_hyperv"
    grep -q '^refclock' "$root"/etc/chrony/conf.d/*.conf
    /usr/sbin/chronyd -p -f "$root/etc/chrony/chrony.conf" >/dev/null
    systemctl is-active systemd-timesyncd.service >/dev/null 2>&1 || true
done
t2=$(now)
tool=$(elapsed "$t0" "$t1"); base=$(elapsed "$t1" "$t2")
echo "2. no-op apply: bs-chrony ${tool}s, the checks by hand ${base}s"
verdict "no-op apply ratio" "$(ratio "$tool" "$base")" 1.2
exit "$status"
