#!/usr/bin/env bash
# bs-release: hashing during `files WS` and `request add`, against `sha256sum` over the same
# files, warm page cache, in one run. Prints throughput ratios (sha256sum time / bs-release time:
# above 1 means bs-release is faster). Targets: one large file >= 0.9x, many files >= 1.6x.
# Usage: bench/bs-release.sh [LARGE_MIB] [MANY_COUNT] [MANY_KIB]   (defaults 512 2000 256)
# The helpers are called through `seconds CMD...`, which the linter cannot follow:
# shellcheck disable=SC2317
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
bin=${BS_BIN_DIR:-$PWD/target/release}/bs-release
[[ -x $bin ]] || { echo "bench: $bin is missing: cargo build --release -p bs-release" >&2; exit 2; }
large_mib=${1:-512} many=${2:-2000} many_kib=${3:-256}
runs=${BENCH_RUNS:-3}

work=$(mktemp -d /tmp/bs-release-bench.XXXXXX)
trap 'rm -rf --one-file-system "$work"' EXIT
root=$work/root
bin/sandbox-root "$root" 2>/dev/null
echo "opensafely:x:10000:10000::/home/opensafely:/bin/bash" >>"$root/etc/passwd"
# One author a timed run: an author holds one active request per workspace (Airlock's rule).
authors=""
for ((i = 0; i < runs; i++)); do
    echo "alice$i:x:$((2001 + i)):$((2001 + i))::/home/alice$i:/bin/bash" >>"$root/etc/passwd"
    echo "alice$i:x:$((2001 + i)):" >>"$root/etc/group"
    authors+="${authors:+,}alice$i"
done
printf 'opensafely:x:10000:\nresearchers:x:10011:%s\nreviewers:x:10010:\ndevelopers:x:10012:\n' "$authors" \
    >>"$root/etc/group"
export BS_ROOT=$root BS_REPO=$PWD BS_BACKEND=test

# make_ws WS: job-runner's manifest for every file under WS's output/ (hashing them also warms
# the cache).
make_ws() {
    local ws=$root/srv/medium_privacy/workspaces/$1
    mkdir -p "$ws/metadata"
    (cd "$ws" && find output -type f -print0 | sort -z | xargs -0 sha256sum) |
        awk -v ws="$ws" 'BEGIN { printf "{\"outputs\":{" }
            { cmd = "stat -c %s " ws "/" $2; cmd | getline size; close(cmd)
              printf "%s\"%s\":{\"level\":\"moderately_sensitive\",\"size\":%s,\"content_hash\":\"%s\",\"excluded\":false}", (NR > 1 ? "," : ""), $2, size, $1 }
            END { print "}}" }' >"$ws/metadata/manifest.json"
}
mk() { mkdir -p "$root/srv/medium_privacy/workspaces/$1/output"; }

echo "bench: making files in $work" >&2
mk large; head -c "$((large_mib << 20))" /dev/urandom >"$root/srv/medium_privacy/workspaces/large/output/big.csv"
mk many
for ((i = 0; i < many; i++)); do
    head -c "$((many_kib << 10))" /dev/urandom >"$root/srv/medium_privacy/workspaces/many/output/f$i.csv"
done
mk add1; head -c 16000000 /dev/urandom >"$root/srv/medium_privacy/workspaces/add1/output/big.csv"
for ws in large many add1; do make_ws "$ws"; done

# seconds CMD...: best wall time of $runs runs, output discarded.
seconds() {
    local best="" i s e t
    for ((i = 0; i < runs; i++)); do
        s=$EPOCHREALTIME
        "$@" >/dev/null
        e=$EPOCHREALTIME
        t=$(awk -v a="$s" -v b="$e" 'BEGIN { printf "%.4f", b - a }')
        if [[ -z $best ]] || awk -v t="$t" -v b="$best" 'BEGIN { exit !(t < b) }'; then best=$t; fi
    done
    printf '%s\n' "$best"
}
files_of() { (cd "$root/srv/medium_privacy/workspaces/$1" && find output -type f | sort); }
sums() { (cd "$root/srv/medium_privacy/workspaces/$1" && files_of "$1" | xargs -d '\n' sha256sum); }
release() { "$bin" --as alice0 "$@"; }
# Requests made ahead, one per timed run (each by its own author), so copies are never reused
# and `create` is not timed.
fresh() { # WS: make $runs new requests for WS, "id author" lines into $work/ids-WS
    local i id
    for ((i = 0; i < runs; i++)); do
        id=$("$bin" --as "alice$i" request create "$1" | jq -r 'select(.type=="summary") | .id')
        echo "$id alice$i"
    done >"$work/ids-$1"
}
add_all() { # add every output of WS to the next fresh request
    local ws=$1 id author
    read -r id author <"$work/ids-$ws"
    sed -i 1d "$work/ids-$ws"
    # shellcheck disable=SC2046
    "$bin" --as "$author" request add "$id" $(files_of "$ws")
}

status=0
report() { # NAME BASE TOOL TARGET
    local ratio ok
    ratio=$(awk -v b="$2" -v t="$3" 'BEGIN { printf "%.2f", b / t }')
    ok=$(awk -v r="$ratio" -v g="$4" 'BEGIN { print (r >= g ? "ok" : "BELOW TARGET") }')
    [[ $ok == ok ]] || status=1
    printf '%-38s sha256sum %7.3fs  bs-release %7.3fs  ratio %5sx  (target >= %s) %s\n' "$1" "$2" "$3" "$ratio" "$4" "$ok"
}

release files large >/dev/null # audit dir, request store
report "files: 1 file of ${large_mib} MiB" "$(seconds sums large)" "$(seconds release files large)" 0.9
report "files: $many files of ${many_kib} KiB" "$(seconds sums many)" "$(seconds release files many)" 1.6
fresh add1
fresh many
report "request add: 1 file of 16 MB" "$(seconds sums add1)" "$(seconds add_all add1)" 0.9
report "request add: $many files of ${many_kib} KiB" "$(seconds sums many)" "$(seconds add_all many)" 1.6
# The floor for durable copies: writing the same bytes to this disk with fdatasync.
floor() { dd if=/dev/zero of="$work/floor" bs=1M count="$1" conv=fdatasync status=none; rm -f "$work/floor"; }
printf '%-38s %7.3fs for 16 MiB, %7.3fs for %s MiB (the copies are durable: the disk bounds add)\n' \
    "disk floor: dd conv=fdatasync" "$(seconds floor 16)" "$(seconds floor $((many * many_kib / 1024)))" \
    "$((many * many_kib / 1024))"
echo "bench: $(nproc) CPUs; sha_ni: $(grep -qw sha_ni /proc/cpuinfo && echo yes || echo no); best of $runs runs" >&2
exit "$status"
