#!/usr/bin/env bash
# bs-jobs end to end: `submit` -> `work --once` -> outputs in both privacy trees, in the system-test
# container, running the job on the host's Docker engine (the container has none of its own).
#
# How the paths line up: the engine resolves bind-mount sources on the host, so the sandbox root
# bs-jobs uses is a Docker volume mounted in the container at the very path where the host keeps
# it (its Mountpoint). A job volume <root>/srv/high_privacy/volumes/<id> then means the same
# directory to bs-jobs inside the container and to the engine outside.
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

st_require_bins bs-jobs bs-users bs-perms
"$ST_REPO/tests/images/build-busybox" >/dev/null

vol=$(st_volume jobs-root)
mp=$(docker volume inspect -f '{{.Mountpoint}}' "$vol")
st_start jobs -v /var/run/docker.sock:/var/run/docker.sock -v "$vol:$mp"
ws="st-ws-$ST_RUN"
id="st-job-$ST_RUN"
bsj() { st_tool bs-jobs --root "$mp" --repo /opt/bs --backend test "$@"; }

st_step "a sandbox root with the service account, the groups and the privacy trees"
st_exec /opt/bs/bin/sandbox-root "$mp/root"
mp="$mp/root"
st_tool bs-users --root "$mp" --repo /opt/bs --backend test apply
assert_eq 0 "$ST_RC" "bs-users apply"
st_tool bs-perms --root "$mp" --repo /opt/bs --backend test apply
assert_eq 0 "$ST_RC" "bs-perms apply"
st_exec mkdir -p "$mp/etc/bs" "$mp/var/run"
# bs-jobs reaches the engine at [docker] socket under its root, as bs-docker does.
st_exec ln -s /var/run/docker.sock "$mp/var/run/docker.sock"

st_step "submit validates: a bad job exits 2 naming the field"
st_exec sh -c 'cat >/tmp/bad.json' <<JSON
{"id": "$id", "workspace": "$ws", "action": "analyse", "image": "bs-busybox:latest", "command": "sh -c true"}
JSON
bsj submit /tmp/bad.json
assert_eq 2 "$ST_RC" "exit status of an invalid submit"
assert_json_eq 'select(.type == "error") | .target' command "$ST_JSON" "the bad field is named"

st_step "submit a job and run it"
script='mkdir -p output && printf "group,n\na,10\nb,12\n" > output/table.csv && printf "patient_id,x\n1,2\n" > output/rows.csv && echo ran as $(id -u)'
jq -n --arg id "$id" --arg ws "$ws" --arg s "$script" '{id: $id, workspace: $ws, action: "analyse",
    image: "bs-busybox:latest", command: ["sh", "-c", $s], memory: "128m", cpu: 0.5,
    outputs: {moderately_sensitive: ["output/table.csv", "output/rows.csv"]}}' |
    st_exec sh -c 'cat >/tmp/job.json'
bsj submit /tmp/job.json
assert_eq 0 "$ST_RC" "submit"
bsj ls
assert_json_eq 'select(.type == "job") | .state' queued "$ST_JSON" "the job is queued"
bsj work --once
assert_eq 0 "$ST_RC" "work --once"
assert_json_eq 'select(.type == "job") | .status' succeeded "$ST_JSON" "the job succeeded"

st_step "outputs are in both trees, owned by the service account, with a right manifest"
high="$mp/srv/high_privacy/workspaces/$ws"
medium="$mp/srv/medium_privacy/workspaces/$ws"
assert_eq "10000:10000 640" "$(st_exec stat -c '%u:%g %a' "$high/output/table.csv")" "owner and mode in high"
assert_eq "$(st_exec cat "$high/output/table.csv")" "$(st_exec cat "$medium/output/table.csv")" "the table is in medium too"
assert_failure "a CSV with patient_id is not in medium" st_exec test -e "$medium/output/rows.csv"
assert_contains "$(st_exec cat "$medium/output/rows.csv.txt")" "patient_id" "the note says why"
sum=$(st_exec sha256sum "$high/output/table.csv" | cut -d' ' -f1)
manifest=$(st_exec cat "$high/metadata/manifest.json")
assert_json_eq '.outputs["output/table.csv"].content_hash' "\"$sum\"" "$manifest" "manifest content_hash"
assert_json_eq '.outputs["output/table.csv"].row_count' 2 "$manifest" "manifest row count"
assert_contains "$(st_exec cat "$medium/metadata/analyse.log")" "ran as 10000" "the log is in medium"

st_step "reviewers (gid 10010, through the medium tree's ACL) read medium outputs, not high ones"
as_reviewer() { st_exec setpriv --reuid 20001 --regid 10010 --clear-groups "$@"; }
assert_success "a reviewer reads the medium table" as_reviewer cat "$medium/output/table.csv"
assert_failure "a reviewer cannot read the high table" as_reviewer cat "$high/output/table.csv"

st_step "bs-perms check: owners, groups and modes of everything bs-jobs wrote are as bs-perms wants"
st_tool bs-perms --root "$mp" --repo /opt/bs --backend test check
# Files created under the medium tree's default ACL inherit group:reviewers:r-x masked to r--
# by their 0640 mode: the effective rights are the configured ones, so that is not drift.
bad=$(jq -s '[.[] | select(.type == "path" and .changed)] | length' <<<"$ST_JSON")
assert_eq 0 "$bad" "paths bs-perms check reports as drift"
assert_json_eq 'select(.type == "summary") | .failed' 0 "$ST_JSON" "bs-perms check failed nothing"

st_step "nothing is left behind"
assert_eq "" "$(docker ps -aq --filter "label=bs.job.workspace=$ws")" "no job container"
assert_failure "the job volume is gone" st_exec test -e "$mp/srv/high_privacy/volumes/$id"
bsj show "$id"
assert_json_eq 'select(.type == "job") | .state' "done" "$ST_JSON" "show says done"
