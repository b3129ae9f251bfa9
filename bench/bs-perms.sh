#!/usr/bin/env bash
# bs-perms benchmarks: bs-perms and the baseline an operator would otherwise
# run, side by side in one run, on the same generated tree; prints ratios.
#   1. no-op `check` vs `getfacl -R` (target: ratio <= 0.35)
#   2. `apply` when every entry needs owner, mode and ACL fixed vs
#      chown -R; find -type d -exec chmod; find -type f -exec chmod;
#      setfacl -R -m; setfacl -R -d -m   (target: ratio <= 0.5)
#   3. peak memory (max RSS) of check at 50,000 and at 200,000 files
#      (target: < 64 MiB, and the same at both sizes)
# BENCH_FILES (200000) and BENCH_DIRS (2000) set the size; BENCH_DIR where.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BS_BIN_DIR:-$PWD/target/release}
files=${BENCH_FILES:-200000}
dirs=${BENCH_DIRS:-2000}
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/bs-bench-perms.XXXXXX")
trap 'rm -rf --one-file-system "$work"' EXIT

now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }
ratio() { python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}')" "$1" "$2"; }
status=0
verdict() { # NAME VALUE OP LIMIT
    if python3 -c "import sys; v,l=float(sys.argv[1]),float(sys.argv[3]); sys.exit(0 if (v<=l if sys.argv[2]=='<=' else v<l) else 1)" "$2" "$3" "$4"; then
        echo "   $1: $2 $3 $4  PASS"
    else
        echo "   $1: $2 $3 $4  FAIL"; status=1
    fi
}

# A sandbox root whose only bs-perms business is one tree, /srv/bench. The
# tree uses names that exist on the host too (daemon, sudo), so the baseline
# tools resolve them as they would on a server (a failed lookup per entry
# would make them slower than they really are).
make_root() { # DIR
    bin/sandbox-root "$1" 2>/dev/null
    mkdir -p "$1/etc/bs"
    cat > "$1/etc/bs/local.toml" <<'TOML'
[perms]
sudoers = []
[perms.sudo]
defaults = []
service_group = ""
[perms.login]
enabled = false
[[perms.tree]]
path = "/srv/bench"
owner = "daemon"
group = "daemon"
dir_mode = "0750"
file_mode = "0640"
acl = ["group:sudo:r-X"]
default_acl = ["group:sudo:r-X"]
TOML
}

# NDIRS directories (a two-level fan-out), NFILES files spread over them.
generate() { # TREE NDIRS NFILES
    python3 - "$@" <<'PY'
import os, sys
top, ndirs, nfiles = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fan = max(1, int(ndirs ** 0.5))
paths = []
for i in range(ndirs):
    p = os.path.join(top, f"d{i % fan:03d}", f"s{i:05d}") if i >= fan else os.path.join(top, f"d{i:03d}")
    paths.append(p)
for p in paths:
    os.makedirs(p, exist_ok=True)
for j in range(nfiles):
    fd = os.open(os.path.join(paths[j % ndirs], f"f{j:07d}.csv"), os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)
PY
}

# Every entry wrong: root-owned, 0700/0600, no ACLs.
scramble() { # TREE
    chown -R root:root "$1"
    setfacl -R -b "$1"
    find "$1" -type d -exec chmod 0700 {} +
    find "$1" -type f -exec chmod 0600 {} +
}

run_bs() { BS_ROOT=$1 BS_REPO=$PWD BS_BACKEND=test "$bin/bs-perms" "${@:2}"; }

# CPU seconds (user + sys) of commands, summed into $work/cpu.<TAG>: the
# machines are shared, and CPU time shows what wall time hides under load.
cpu() { # TAG CMD...
    local tag=$1
    shift
    /usr/bin/time -f '%U %S' -a -o "$work/cpu.$tag" "$@"
}
cpu_total() { awk '{ t += $1 + $2 } END { printf "%.2f", t }' "$work/cpu.$1"; }

echo "## bs-perms ($files files in $dirs dirs, $(nproc) CPUs)"
root=$work/big
make_root "$root"
tree=$root/srv/bench
generate "$tree" "$dirs" "$files"
find "$tree" >/dev/null # warm the caches for both sides alike

# --- 2. apply, everything wrong ------------------------------------------------
scramble "$tree"
t0=$(now)
cpu apply_ours env BS_ROOT="$root" BS_REPO="$PWD" BS_BACKEND=test "$bin/bs-perms" apply --summary > "$work/apply.jsonl"
t1=$(now)
ours_apply=$(elapsed "$t0" "$t1")
tail -1 "$work/apply.jsonl" | grep -q '"ok":true' || { echo "bs-perms apply failed:"; tail -3 "$work/apply.jsonl"; exit 1; }
fixed=$(grep '"type":"tree"' "$work/apply.jsonl" | python3 -c "import json,sys; print(json.loads(sys.stdin.readline())['fixed'])")
[ "$fixed" -ge "$((files + dirs))" ] || { echo "bs-perms fixed only $fixed entries"; exit 1; }
getfacl -R -p -n "$tree" > "$work/ours.acl" 2>/dev/null

scramble "$tree"
t0=$(now)
cpu apply_base chown -R daemon:daemon "$tree"
cpu apply_base find "$tree" -type d -exec chmod 0750 {} +
cpu apply_base find "$tree" -type f -exec chmod 0640 {} +
cpu apply_base setfacl -R -m g:sudo:rX "$tree"
cpu apply_base setfacl -R -d -m g:sudo:rX "$tree" 2>/dev/null || true # files refuse default ACLs
t1=$(now)
base_apply=$(elapsed "$t0" "$t1")
getfacl -R -p -n "$tree" > "$work/base.acl" 2>/dev/null
cmp -s "$work/ours.acl" "$work/base.acl" || { echo "bs-perms and the baseline disagree on the result:"; diff "$work/ours.acl" "$work/base.acl" | head; status=1; }
echo "apply, every entry fixed: bs-perms ${ours_apply}s, baseline chain ${base_apply}s" \
    "(CPU: $(cpu_total apply_ours)s vs $(cpu_total apply_base)s)"
verdict "ratio" "$(ratio "$ours_apply" "$base_apply")" "<=" 0.5

# --- 1. no-op check --------------------------------------------------------------
# The issue's baseline is `getfacl -R` as an operator runs it (names
# resolved, one NSS lookup per entry). `getfacl -R -n` skips the lookups:
# the fastest the baseline can be, printed and judged as well.
t0=$(now)
cpu check_base getfacl -R -p "$tree" > /dev/null
t1=$(now)
base_check=$(elapsed "$t0" "$t1")
t0=$(now)
cpu check_base_n getfacl -R -p -n "$tree" > /dev/null
t1=$(now)
base_check_n=$(elapsed "$t0" "$t1")
t0=$(now)
cpu check_ours env BS_ROOT="$root" BS_REPO="$PWD" BS_BACKEND=test "$bin/bs-perms" check --summary > "$work/check.jsonl"
t1=$(now)
ours_check=$(elapsed "$t0" "$t1")
tail -1 "$work/check.jsonl" | grep -q '"exit":0' || { echo "no-op check found drift:"; tail -2 "$work/check.jsonl"; exit 1; }
echo "no-op check: bs-perms ${ours_check}s, getfacl -R ${base_check}s, getfacl -R -n ${base_check_n}s" \
    "(CPU: $(cpu_total check_ours)s vs $(cpu_total check_base)s and $(cpu_total check_base_n)s)"
echo "   load average when done: $(cut -d' ' -f1-3 /proc/loadavg)"
verdict "ratio to getfacl -R" "$(ratio "$ours_check" "$base_check")" "<=" 0.35
verdict "ratio to getfacl -R -n (stricter)" "$(ratio "$ours_check" "$base_check_n")" "<=" 0.35

# --- 3. memory -------------------------------------------------------------------
rss() { # ROOT -> max RSS in KiB of a check
    BS_ROOT=$1 BS_REPO=$PWD BS_BACKEND=test /usr/bin/time -v "$bin/bs-perms" check --summary 2>&1 >/dev/null |
        awk -F': ' '/Maximum resident set size/ { print $2 }'
}
small=$work/small
make_root "$small"
generate "$small/srv/bench" "$((dirs / 4))" "$((files / 4))"
run_bs "$small" apply --summary > /dev/null
rss_big=$(rss "$root")
rss_small=$(rss "$small")
echo "peak memory of check: $((rss_small / 1024)) MiB at $((files / 4)) files, $((rss_big / 1024)) MiB at $files files"
verdict "max RSS at $files files (MiB)" "$((rss_big / 1024))" "<" 64
verdict "RSS growth from $((files / 4)) to $files files (x)" "$(ratio "$rss_big" "$rss_small")" "<=" 1.15
exit "$status"
