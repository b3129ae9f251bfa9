#!/usr/bin/env bash
# bs-release as real people through real sudo: users made by `bs-users apply` of the test backend,
# the request store set up by `bs-release apply`, a sudoers rule that lets the groups run
# bs-release as the service account, and a fake release server (python3) on 127.0.0.1:8787 in
# the container. test-researcher authors; test-reviewer and test-developer (developers are
# reviewers too) review independently (blinded), return it with comments, review the
# resubmission in a second turn and approve; publish is killed mid-upload and resumed; the
# audit log names everyone and verifies.
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

st_require_bins bs-users bs-release
st_start release
# sudo looks its host name up; --network none leaves it out of /etc/hosts.
st_sh 'echo "127.0.0.1 $(hostname)" >>/etc/hosts'

# as USER ARGS...: run bs-release as USER through sudo, the way people do; keeps JSON and status.
as() {
    local user=$1
    shift
    st_step "as $user: bs-release $*"
    ST_RC=0
    docker exec -i -u "$user" -w /tmp "$ST_C" sudo -n -u opensafely /usr/local/bin/bs-release "$@" \
        >"$ST_LAST_JSON" 2>"$ST_LOG_DIR/last.stderr" || ST_RC=$?
    ST_JSON=$(<"$ST_LAST_JSON")
    { printf '### as %s: bs-release %s (exit %s)\n' "$user" "$*" "$ST_RC"; cat "$ST_LAST_JSON"; } \
        >>"$ST_LOG_DIR/tools.log"
    cat "$ST_LOG_DIR/last.stderr" >&2
}
state() { st_sh "jq -r .state /srv/medium_privacy/requests/$1/request.json"; }
# count FILTER: how many records of the last output match a jq select() expression.
count() { jq -s "[.[] | select($1)] | length" <<<"$ST_JSON"; }

st_step "people from the test backend (bs-users apply)"
st_tool bs-users --repo /opt/bs --backend test apply
assert_eq 0 "$ST_RC" "bs-users apply"
assert_contains " $(st_exec id -nG test-researcher) " " researchers " "test-researcher's groups"
assert_contains " $(st_exec id -nG test-reviewer) " " reviewers " "test-reviewer's groups"
assert_contains " $(st_exec id -nG test-developer) " " reviewers " "developers review too"
assert_eq 10000 "$(st_exec id -u opensafely)" "the service account"
# New accounts have an empty, expired password that people set at their first login; sudo
# refuses an expired account even with NOPASSWD. Here they have "logged in" and set one.
st_sh 'for u in test-researcher test-reviewer test-developer; do echo "$u:pw-$u-1" | chpasswd; done'

st_step "bs-release apply (root): store, audit directory, token file, host pin"
st_tool bs-release --repo /opt/bs --backend test apply
assert_eq 0 "$ST_RC" "bs-release apply"
assert_eq "opensafely 750" "$(st_exec stat -c '%U %a' /srv/medium_privacy/requests)" "request store"
assert_eq "opensafely 750" "$(st_exec stat -c '%U %a' /var/lib/bs/release)" "audit directory"
assert_eq "root 644" "$(st_exec stat -c '%U %a' /etc/bs/release.toml)" "host pin"
assert_contains "$(st_exec cat /etc/bs/release.toml)" 'backend = "test"' "pinned backend"
st_tool bs-release --repo /opt/bs --backend test plan
assert_json_eq 'select(.type=="summary") | .changed' 0 "$ST_JSON" "a second plan has nothing to do"
st_tool bs-release --repo /opt/bs --backend test check
assert_eq 0 "$ST_RC" "check without paths finds no drift after apply"
# The token, in the service account's own 0600 file (apply made it; we fill it in).
st_sh 'echo RELEASE_TOKEN=systest-release-token >/etc/bs/release.env'
assert_eq "opensafely 600" "$(st_exec stat -c '%U %a' /etc/bs/release.env)" "token file"

st_step "the sudoers rule (bs-perms' job on a real host; written here, checked with visudo -cf)"
st_sh 'echo "%researchers,%reviewers,%developers ALL=(opensafely) NOPASSWD: /usr/local/bin/bs-release" \
        >/tmp/bs-release.sudoers &&
    visudo -cf /tmp/bs-release.sudoers &&
    install -m 0440 -o root -g root /tmp/bs-release.sudoers /etc/sudoers.d/bs-release'

st_step "a workspace with outputs and job-runner's manifest (what bs-jobs leaves)"
st_sh 'set -e
    ws=/srv/medium_privacy/workspaces/ws1
    mkdir -p $ws/output $ws/metadata
    printf "group,count\nA,120\nB,45\n" >$ws/output/table.csv
    printf "group,count\nA,120\nB,3\n" >$ws/output/small.csv
    entry() { printf "\"%s\":{\"level\":\"moderately_sensitive\",\"job_id\":\"j1\",\"job_request\":\"r1\",\"action\":\"a\",\"user\":\"test-researcher\",\"repo\":\"https://github.com/opensafely/s\",\"commit\":\"c0ffee\",\"size\":%s,\"timestamp\":%s,\"content_hash\":\"%s\",\"excluded\":false,\"message\":null,\"row_count\":2,\"col_count\":2}" \
        "$1" "$(stat -c %s $ws/$1)" "$(stat -c %Y $ws/$1).5" "$(sha256sum $ws/$1 | cut -d" " -f1)"; }
    printf "{\"workspace\":\"ws1\",\"repo\":null,\"outputs\":{%s,%s}}\n" "$(entry output/table.csv)" "$(entry output/small.csv)" \
        >$ws/metadata/manifest.json
    chown -R opensafely:opensafely /srv/medium_privacy/workspaces'

st_step "the fake release server on 127.0.0.1:8787 (job-server's required fields, airlock_id, already uploaded)"
st_sh 'mkdir -p /tmp/uploads && nohup python3 -c "
import http.server, json, re, hashlib, time, os
releases = {}
class H(http.server.BaseHTTPRequestHandler):
    def answer(self, code, body=None, rid=None):
        self.send_response(code)
        if rid: self.send_header(\"Release-Id\", rid)
        self.end_headers()
        if body is not None: self.wfile.write(json.dumps(body).encode())
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get(\"Content-Length\", 0)))
        open(\"/tmp/fake-release.log\", \"a\").write(json.dumps([self.path, self.headers.get(\"OS-User\")]) + \"\n\")
        if self.headers.get(\"Authorization\") != \"systest-release-token\":
            return self.answer(403, {\"detail\": \"Invalid token\"})
        if self.path.startswith(\"/releases/workspace/\"):
            data = json.loads(body)
            missing = [k for k in (\"files\", \"metadata\", \"review\") if k not in data]
            missing += [k for f in data.get(\"files\", []) for k in (\"name\", \"url\", \"size\", \"sha256\", \"date\", \"metadata\", \"review\") if k not in f]
            if missing:
                return self.answer(400, {m: [\"This field is required.\"] for m in missing})
            rid = data[\"metadata\"][\"airlock_id\"]
            releases.setdefault(rid, {f[\"name\"]: f[\"sha256\"] for f in data[\"files\"]})
            return self.answer(201, {\"release_id\": rid}, rid)
        rid = self.path.rsplit(\"/\", 1)[1]
        name = re.search(r\"filename=\\\"(.*)\\\"\", self.headers.get(\"Content-Disposition\", \"\")).group(1)
        if rid not in releases or name not in releases[rid]:
            return self.answer(400, {\"detail\": \"File %s not requested in release %s\" % (name, rid)})
        path = \"/tmp/uploads/\" + name.replace(\"/\", \"__\")
        if os.path.exists(path):
            return self.answer(400, {\"detail\": \"This version of %r has already been uploaded from backend %r\" % (name, \"test\")})
        if hashlib.sha256(body).hexdigest() != releases[rid][name]:
            return self.answer(400, {\"detail\": \"Contents of uploaded file does not match\"})
        open(path, \"wb\").write(body)
        if os.path.exists(\"/tmp/stall-after-upload\"):
            os.remove(\"/tmp/stall-after-upload\")
            time.sleep(30)
        self.answer(201)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer((\"127.0.0.1\", 8787), H).serve_forever()
" >/tmp/fake-release.out 2>&1 &'
st__wait_port 8787

st_step "who may run it, and how"
rc=0
st_exec_as test-researcher /usr/local/bin/bs-release ls >/dev/null 2>&1 || rc=$?
assert_eq 2 "$rc" "run directly (not through sudo) it refuses: it runs as the service account"
as test-researcher --root /tmp ls
assert_eq 2 "$ST_RC" "through sudo, --root is refused"
assert_failure "sudo does not let a caller set SUDO_USER" \
    st_exec_as test-researcher sudo -n -u opensafely SUDO_USER=test-reviewer /usr/local/bin/bs-release ls

st_step "the author lists, creates, adds and submits"
as test-researcher files ws1
assert_eq 0 "$ST_RC" "files"
assert_eq 2 "$(count '.type=="file" and .releasable')" "two releasable outputs"
as test-researcher request create ws1
assert_eq 0 "$ST_RC" "request create"
id=$(jq -r 'select(.type=="summary") | .id' <<<"$ST_JSON")
as test-researcher request add "$id" output/table.csv output/small.csv
assert_eq 0 "$ST_RC" "request add"
assert_json_eq 'select(.path=="output/small.csv") | .findings[0].check' low_count "$ST_JSON" \
    "the small count is found and attached"
assert_eq "opensafely" "$(st_exec stat -c %U /srv/medium_privacy/requests/"$id"/request.json)" \
    "the request belongs to the service account"
as test-researcher request submit "$id"
assert_eq 1 "$ST_RC" "a group needs its context and controls before submitting"
as test-researcher request group "$id" default --context "Table 1: counts by group" \
    --controls "counts under 8 suppressed"
assert_eq 0 "$ST_RC" "the author describes the group"
as test-researcher request submit "$id"
assert_eq 0 "$ST_RC" "submit"
assert_eq submitted "$(state "$id")" "state after submit"

st_step "first turn: votes, blinded, then submitted reviews; a return with comments"
as test-researcher review "$id" output/table.csv --approve
assert_eq 1 "$ST_RC" "the author (also a reviewer) may not review their own request"
assert_json_eq 'select(.type=="error") | .kind' not_permitted "$ST_JSON" "self-review refused"
as test-researcher request withdraw "$id"
assert_eq 1 "$ST_RC" "the author cannot withdraw while the checkers own the request"
as test-reviewer review "$id" output/table.csv --approve
as test-reviewer review "$id" output/small.csv --request-changes
as test-reviewer request submit-review "$id"
assert_eq 1 "$ST_RC" "changes requested without a comment on the group"
as test-reviewer request comment "$id" default "B is 3"
as test-reviewer request submit-review "$id"
assert_eq 0 "$ST_RC" "test-reviewer submits a review"
assert_eq partially_reviewed "$(state "$id")" "one submitted review"
as test-developer show "$id"
assert_eq 0 "$(jq -s '[.[] | select(.type=="request") | .files[].reviews[]] | length' <<<"$ST_JSON")" \
    "the second checker sees none of the first one's votes"
assert_not_contains "$ST_JSON" "B is 3" "nor their notes"
as test-developer review "$id" output/table.csv --approve
as test-developer review "$id" output/small.csv --request-changes
as test-developer request comment "$id" default "small.csv: B is under 8"
as test-developer request submit-review "$id"
assert_eq reviewed "$(state "$id")" "two submitted reviews"
as test-researcher show "$id"
assert_eq 0 "$(jq -s '[.[] | select(.type=="request") | .files[] | select(has("decision") or has("reviews"))] | length' <<<"$ST_JSON")" \
    "the author sees no votes and no decision while the checkers work"
as test-developer request return "$id"
assert_eq 1 "$ST_RC" "returning with changes requested needs a public comment"
as test-developer request comment "$id" default "small.csv: suppress counts under 8" --public
as test-developer request return "$id"
assert_eq returned "$(state "$id")" "returned to the author"
as test-researcher show "$id"
assert_contains "$ST_JSON" "suppress counts under 8" "the author reads the public comment"
assert_not_contains "$ST_JSON" "B is 3" "but never a checker-only one"

st_step "second turn: the author fixes the file and resubmits; old votes wait for new reviews"
st_sh 'set -e
    ws=/srv/medium_privacy/workspaces/ws1
    printf "group,count\nA,120\nB,[REDACTED]\n" >$ws/output/small.csv
    sha=$(sha256sum $ws/output/small.csv | cut -d" " -f1)
    jq --arg sha "$sha" --argjson size "$(stat -c %s $ws/output/small.csv)" \
        ".outputs[\"output/small.csv\"].content_hash = \$sha | .outputs[\"output/small.csv\"].size = \$size" \
        $ws/metadata/manifest.json >/tmp/m.json && cat /tmp/m.json >$ws/metadata/manifest.json'
as test-researcher request add "$id" output/small.csv
assert_eq 0 "$ST_RC" "the fixed file replaces the old one"
as test-researcher request submit "$id"
assert_eq 1 "$ST_RC" "the author answers the checkers before resubmitting"
as test-researcher request comment "$id" default "B is redacted now"
as test-researcher request submit "$id"
assert_eq submitted "$(state "$id")" "a resubmission does not jump to reviewed on the old votes"
for reviewer in test-reviewer test-developer; do
    as "$reviewer" review "$id" output/small.csv --approve
    as "$reviewer" request submit-review "$id"
    assert_eq 0 "$ST_RC" "$reviewer reviews the second turn"
done
assert_eq reviewed "$(state "$id")" "reviewed again"
as test-developer request approve "$id"
assert_eq 0 "$ST_RC" "approve"
assert_eq approved "$(state "$id")" "approved"

st_step "publish, killed mid-upload, resumed without a second release"
as test-researcher publish "$id"
assert_eq 1 "$ST_RC" "the author may not publish"
st_sh 'touch /tmp/stall-after-upload'
rc=0
# sudo passes timeout's SIGTERM on to bs-release, which has no handler: it dies mid-upload.
docker exec -u test-reviewer "$ST_C" timeout 5 sudo -n -u opensafely /usr/local/bin/bs-release publish "$id" \
    >/dev/null 2>&1 || rc=$?
assert_eq 124 "$rc" "publish killed while the server holds the first upload's answer"
assert_eq approved "$(state "$id")" "still approved after the crash"
as test-reviewer publish "$id"
assert_eq 0 "$ST_RC" "publish again resumes"
assert_eq 1 "$(count '.type=="upload" and .status=="already_uploaded"')" \
    "the file the server got before the crash counts as done"
assert_eq released "$(state "$id")" "released"
assert_eq "$(st_exec sha256sum </srv/medium_privacy/workspaces/ws1/output/table.csv)" \
    "$(st_exec sha256sum </tmp/uploads/output__table.csv)" "the server got the approved bytes"
assert_eq "$(st_exec sha256sum </srv/medium_privacy/workspaces/ws1/output/small.csv)" \
    "$(st_exec sha256sum </tmp/uploads/output__small.csv)" "and the fixed file"
assert_eq 1 "$(st_sh 'grep -c "/releases/workspace/ws1" /tmp/fake-release.log')" \
    "one release: its id was saved before the first upload"
assert_contains "$(st_exec cat /tmp/fake-release.log)" '["/releases/workspace/ws1", "test-reviewer"]' \
    "the release was created with the checker as OS-User"
assert_not_contains "$(cat "$ST_LOG_DIR/tools.log")" "systest-release-token" "the token is never printed"

st_step "sync-level4 pushes the released files one way (root, as TPP's cron would)"
st_exec mkdir -p /srv/level4
st_tool bs-release --repo /opt/bs --backend test sync-level4 --to /srv/level4
assert_eq 0 "$ST_RC" "sync-level4"
assert_eq "$(st_exec sha256sum </srv/medium_privacy/workspaces/ws1/output/small.csv)" \
    "$(st_exec sha256sum </srv/level4/ws1/output/small.csv)" "the level-4 copy"

st_step "the audit log holds every step, with the sudo user"
as test-reviewer audit
assert_eq 0 "$ST_RC" "audit"
for pair in "test-researcher create" "test-researcher add" "test-researcher submit" \
    "test-researcher refused" "test-reviewer vote" "test-developer vote" "test-reviewer submit_review" \
    "test-developer return" "test-developer comment" "test-developer approve" "test-reviewer upload" \
    "test-reviewer publish"; do
    read -r who what <<<"$pair"
    n=$(count ".type==\"audit\" and .user==\"$who\" and .action==\"$what\"")
    [[ $n -gt 0 ]] || st_fail "audit: no $what by $who"
done
assert_eq "opensafely 640" "$(st_exec stat -c '%U %a' /var/lib/bs/release/audit.jsonl)" "audit file"
assert_eq 1 "$(count '.type=="audit" and .action=="refused" and .request=="'"$id"'" and .user=="test-researcher" and (.detail.error | test("review their own"))')" \
    "the self-review attempt is in the log with its request"

st_step "a rewritten audit log is reported"
line=$(st_sh 'grep -n "\"action\":\"create\"" /var/lib/bs/release/audit.jsonl | head -1 | cut -d: -f1')
st_sh "sed -i '${line}s/test-researcher/test-reviewer/' /var/lib/bs/release/audit.jsonl"
as test-reviewer audit
assert_eq 1 "$ST_RC" "audit exits 1 on a break"
assert_json_eq "select(.type==\"error\" and .target==\"audit.jsonl:$((line + 1))\") | .kind" audit_tampered \
    "$ST_JSON" "the break is at the line after the rewritten one"
