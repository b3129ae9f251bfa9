#!/usr/bin/env bash
# bs-jobs as job-runner's agent, end to end on the real engine: the poller and the worker run as
# services would (in the background) against a fake job-runner controller on 127.0.0.1 in the
# container that reads every answer as the real controller does (a missing key in the results is
# a failure, a truthy `error` re-issues the task as <job>-00N, cancels come with the whole
# definition, and it can be down for a while). The study: a CSV writer, an action that exits 3, one
# that sleeps until cancelled, one whose image arrives late (an agent error, re-issued), a cancel of
# a job the backend never saw, and a job whose worker is SIGKILLed mid-run (it finishes once, in
# its original container).
set -euo pipefail
# shellcheck source=tests/system/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

st_require_bins bs-jobs bs-users bs-perms
"$ST_REPO/tests/images/build-busybox" >/dev/null

vol=$(st_volume jobs-ctl-root)
mp=$(docker volume inspect -f '{{.Mountpoint}}' "$vol")
st_start jobs-ctl -v /var/run/docker.sock:/var/run/docker.sock -v "$vol:$mp"
ws="st-ctl-$ST_RUN"
late_image="bs-st-late-$ST_RUN:latest"
port=8088

st_step "a sandbox root with the service account and the privacy trees, pointed at the controller"
st_exec /opt/bs/bin/sandbox-root "$mp/root"
mp="$mp/root"
st_tool bs-users --root "$mp" --repo /opt/bs --backend test apply
assert_eq 0 "$ST_RC" "bs-users apply"
st_tool bs-perms --root "$mp" --repo /opt/bs --backend test apply
assert_eq 0 "$ST_RC" "bs-perms apply"
st_sh 'mkdir -p "$1/etc/bs" "$1/var/run" && ln -s /var/run/docker.sock "$1/var/run/docker.sock" &&
    printf "[jobs]\ncontroller = \"http://127.0.0.1:%s\"\nhttp_attempts = 2\nhttp_backoff_ms = 100\n\n[http]\ntimeout_secs = 3\nconnect_timeout_secs = 2\n" "$2" >"$1/etc/bs/local.toml" &&
    (umask 077 && echo JOB_SERVER_TOKEN=st-token >"$1/etc/bs/secrets.env")' "$mp" "$port"

st_step "the fake job-runner controller"
st_sh 'cat >/usr/local/bin/fake-controller' <<'EOF'
#!/usr/bin/python3
# job-runner's controller as the agent meets it: task_views (tasks, update), task_api and the
# loop's handle_running_job / save_results / cancel_job. /admin/* drives it from the scenario.
import http.server, json, sys, threading, time, urllib.parse

PORT, TOKEN = int(sys.argv[1]), sys.argv[2]
STAGES = {"preparing", "prepared", "executing", "executed", "finalizing", "finalized", "unknown", "error"}
FROM_DICT = ["exit_code", "docker_image_id", "status_message", "hint", "timestamp_ns",
             "action_version", "action_revision", "action_created", "base_revision",
             "base_created", "has_unmatched_patterns", "has_level4_excluded_files"]
REDACTED = ["outputs", "unmatched_outputs", "unmatched_patterns", "level4_excluded_files"]
lock = threading.Lock()
tasks, order, jobs, failures = {}, [], {}, []
down_until = [0.0]

def new_task(job, kind, tid):
    d = dict(jobs[job]["definition"]); d["task_id"] = tid
    tasks[tid] = {"id": tid, "type": kind, "job": job, "definition": d, "active": True,
                  "stage": "", "results": None, "complete": False}
    order.append(tid)

def issue(job):
    jobs[job]["tasks"] += 1
    new_task(job, "runjob", "%s-%03d" % (job, jobs[job]["tasks"]))

def current(job):
    for tid in reversed(order):
        if tasks[tid]["job"] == job and tasks[tid]["type"] == "runjob":
            return tasks[tid]

def completed_runjob(t):
    job = jobs[t["job"]]
    if job["state"] != "running" or current(t["job"]) is not t:
        return
    r = t["results"] or {}
    if "error" not in r:
        failures.append("%s: KeyError 'error' in %s" % (t["id"], r)); return
    if r["error"]:
        issue(t["job"]); return
    missing = [k for k in FROM_DICT if k not in r]
    if missing:
        failures.append("%s: from_dict KeyError %s" % (t["id"], missing)); return
    leaked = [k for k in REDACTED if k in r]
    if leaked:
        failures.append("%s: not redacted: %s" % (t["id"], leaked))
    try:
        code = int(r["exit_code"])
    except (TypeError, ValueError):
        code = None
    if code != 0:
        job.update(state="failed", code="nonzero_exit")
    elif r["has_unmatched_patterns"]:
        job.update(state="failed", code="unmatched_patterns")
    else:
        job.update(state="succeeded", code="succeeded")

def update(payload):
    info = json.loads(payload)
    try:
        tid, stage, complete = info["task_id"], info["stage"], info["complete"]
        info["timestamp_ns"]
    except KeyError as e:
        failures.append("update KeyError %s in %s" % (e, info)); raise
    t = tasks[tid]
    simple = t["type"] in ("dbstatus", "dbdatacheck")
    if (simple and stage != "") or (not simple and stage not in STAGES):
        failures.append("%s: stage %r" % (tid, stage))
    t.update(stage=stage, results=info.get("results", {}), complete=complete)
    if complete:
        t["active"] = False
        if t["type"] == "runjob":
            completed_runjob(t)

class Handler(http.server.BaseHTTPRequestHandler):
    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        return self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()

    def do_GET(self):
        with lock:
            if self.path == "/admin/state":
                return self.reply(200, {"jobs": jobs, "tasks": tasks, "order": order, "failures": failures})
            if time.time() < down_until[0]:
                return self.reply(503, {"error": "down"})
            if self.headers.get("Authorization") != TOKEN:
                return self.reply(401, {"error": "token"})
            if self.path == "/test/tasks/":
                active = [{"id": t, "backend": "test", "type": tasks[t]["type"],
                           "definition": tasks[t]["definition"], "attributes": {},
                           "created_at": 1764633600} for t in order if tasks[t]["active"]]
                return self.reply(200, {"tasks": active})
            self.reply(404, {})

    def do_POST(self):
        url = urllib.parse.urlparse(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        body = self.body()
        with lock:
            if url.path == "/admin/job":
                d = json.loads(body)
                jobs[d["id"]] = {"definition": d, "tasks": 0, "state": "running", "code": "initiated"}
                issue(d["id"]); return self.reply(200, {})
            if url.path == "/admin/cancel":
                run = current(q["job"]); run["active"] = False
                new_task(q["job"], "canceljob", run["id"] + "-cancel")
                jobs[q["job"]].update(state="failed", code="cancelled_by_user")
                return self.reply(200, {})
            if url.path == "/admin/cancel_unseen":
                d = json.loads(body)
                jobs[d["id"]] = {"definition": d, "tasks": 1, "state": "failed", "code": "cancelled_by_user"}
                new_task(d["id"], "canceljob", d["id"] + "-001-cancel"); return self.reply(200, {})
            if url.path == "/admin/down":
                down_until[0] = time.time() + float(q["secs"]); return self.reply(200, {})
            if time.time() < down_until[0]:
                return self.reply(503, {"error": "down"})
            if self.headers.get("Authorization") != TOKEN:
                return self.reply(401, {"error": "token"})
            if url.path == "/test/task/update/":
                form = dict(urllib.parse.parse_qsl(body))
                try:
                    update(form["payload"])
                except Exception:
                    return self.reply(500, {"error": "Error updating task"})
                return self.reply(200, {"response": "Update successful"})
            self.reply(404, {})

    def log_message(self, fmt, *args):
        with open("/var/log/fake-controller.log", "a") as log:
            log.write("%s %s\n" % (self.command, self.path))

http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
EOF
st_exec chmod 755 /usr/local/bin/fake-controller
st_exec_bg /usr/local/bin/fake-controller "$port" st-token
st_wait_port "$port"
admin() { st_exec curl -sf -X POST --data-binary @- "http://127.0.0.1:$port/admin/$1"; }
state() { st_exec curl -sf "http://127.0.0.1:$port/admin/state"; }
# define SHORT IMAGE SCRIPT OUTPUT_SPEC: a whole JobDefinition as job_to_job_definition makes it.
define() {
    jq -n --arg id "$ws-$1" --arg ws "$ws" --arg action "$1" --arg image "$2" --arg s "$3" \
        --argjson spec "$4" '{id: $id, rap_id: "rap-st", task_id: "", repo_url: "https://github.com/opensafely/st",
        commit: "0123456789abcdef0123456789abcdef01234567",
        study: {git_repo_url: "https://github.com/opensafely/st", commit: "0123456789abcdef0123456789abcdef01234567", branch: "main"},
        workspace: $ws, action: $action, created_at: 1764633600, image: $image, image_sha: null,
        args: ["sh", "-c", $s], env: {OPENSAFELY_BACKEND: "test"}, inputs: [], input_job_ids: [],
        output_spec: $spec, allow_database_access: false, level4_max_csv_rows: 5000,
        level4_max_filesize: 16777216, user: "alice", database_name: null, cpu_count: "0.5",
        memory_limit: "128M", level4_file_types: [".csv"], analysis_scope: {}}'
}
bb=bs-busybox:latest
define table $bb 'mkdir -p output && printf "group,n\na,10\nb,12\n" > output/table.csv' \
    '{"output/table.csv": "moderately_sensitive"}' | admin job
define exit3 $bb 'exit 3' '{}' | admin job
define sleeper $bb 'sleep 600' '{}' | admin job
define survivor $bb 'echo start >> starts; sleep 10; mkdir -p output; hostname > output/host.txt; cat starts >> output/host.txt' \
    '{"output/host.txt": "highly_sensitive"}' | admin job
define late "$late_image" 'true' '{}' | admin job
define ghost $bb 'true' '{}' | admin cancel_unseen

st_step "the poller and the worker run in the background"
# On a failure, what the services said goes to the scenario's output.
trap 'st_exec sh -c "tail -n 40 /tmp/poller.log /tmp/worker.log" >&2 || true' ERR
bsj_bg() { st_exec_bg bash -c 'echo $$ >"/tmp/$1.pid"; exec bs-jobs --root "$2" --repo /opt/bs --backend test "${@:3}" >>"/tmp/$1.log" 2>&1' bg "$@"; }
bsj_bg poller "$mp" poll --every 1
bsj_bg worker "$mp" work --forever --max-workers 4
containers() { docker ps -q --filter "label=bs.job.workspace=$ws" --filter "label=action=$1"; }
for ((i = 0; i < 300; i++)); do
    [[ -n $(containers survivor) && -n $(containers sleeper) ]] && break
    sleep 0.1
done
survivor=$(containers survivor)
[[ -n $survivor && -n $(containers sleeper) ]] || st_fail "the survivor and the sleeper never ran: $(state)"
assert_eq 1 "$(docker ps -q --filter label=job-runner --filter "label=workspace=$ws" --filter label=action=survivor | wc -l)" \
    "the job's container carries job-runner's labels"

st_step "the worker is SIGKILLed mid-job; the sleeper is cancelled while its worker is gone"
st_sh 'kill -KILL "$(cat /tmp/worker.pid)"'
admin "cancel?job=$ws-sleeper" </dev/null
for ((i = 0; i < 200; i++)); do [[ -z $(containers sleeper) ]] && break; sleep 0.1; done
assert_eq "" "$(containers sleeper)" "the cancel stopped the sleeper's container"
assert_eq "$survivor" "$(containers survivor)" "the survivor's container still runs"

st_step "the late image arrives; the worker starts again; the controller is down for a while"
docker tag "$bb" "$late_image"
admin "down?secs=6" </dev/null
bsj_bg worker "$mp" work --forever --max-workers 4
all_final() {
    state | jq -e --arg ws "$ws" '[.tasks[] | select(.job | startswith($ws)) | select(.active)] | length == 0' >/dev/null
}
for ((i = 0; i < 900; i++)); do all_final && break; sleep 0.1; done
s=$(state)
docker rmi "$late_image" >/dev/null
all_final || st_fail "tasks still active after 90 s: $s"

st_step "the controller recorded every job as job-runner's agent would have it"
assert_json_eq '.failures' '[]' "$s" "the controller's reading of every answer"
for want in table:succeeded exit3:nonzero_exit sleeper:cancelled_by_user survivor:succeeded \
    late:succeeded ghost:cancelled_by_user; do
    assert_json_eq ".jobs[\"$ws-${want%%:*}\"].code" "${want#*:}" "$s" "${want%%:*}"
done
# Until the image arrives each task of it is an agent error, re-issued as <job>-00N.
assert_json_eq "[.order[] | select(startswith(\"$ws-late-\"))] | length >= 2" true "$s" \
    "the agent error was re-issued as <job>-002"
assert_json_eq ".tasks[\"$ws-late-001\"].results.error | type" object "$s" "the first task of late: an agent error"
for t in "$ws-sleeper-001-cancel" "$ws-ghost-001-cancel"; do
    assert_json_eq ".tasks[\"$t\"] | [.complete, .stage, .results.error]" '[true,"finalized",false]' "$s" "$t answered"
done
assert_json_eq ".tasks[\"$ws-table-001\"].results | [.exit_code, .has_level4_excluded_files, (.docker_image_id | startswith(\"sha256:\"))]" \
    '[0,false,true]' "$s" "the table's results"

st_step "the survivor finished once, in its original container; outputs and manifest as job-runner's"
high="$mp/srv/high_privacy/workspaces/$ws"
medium="$mp/srv/medium_privacy/workspaces/$ws"
assert_eq "${survivor:0:12}"$'\n'"start" "$(st_exec cat "$high/output/host.txt")" "one start, in the original container"
assert_eq "$(st_exec cat "$high/output/table.csv")" "$(st_exec cat "$medium/output/table.csv")" "the table is in medium"
sum=$(st_exec sha256sum "$high/output/table.csv" | cut -d' ' -f1)
manifest=$(st_exec cat "$medium/metadata/manifest.json")
assert_json_eq '.outputs["output/table.csv"] | [.content_hash, .repo, .job_request, .user, (.timestamp | type)]' \
    "[\"$sum\",\"https://github.com/opensafely/st\",\"rap-st\",\"alice\",\"number\"]" "$manifest" "manifest entry"
assert_json_eq '.repo' "https://github.com/opensafely/st" "$manifest" "manifest repo"

st_step "nothing is left behind"
st_sh 'kill "$(cat /tmp/worker.pid)" "$(cat /tmp/poller.pid)"'
assert_eq "" "$(docker ps -aq --filter "label=bs.job.workspace=$ws")" "no job container"
assert_eq "" "$(st_exec find "$mp/srv" -name '*.bs-tmp')" "no temp file"
