//! The poller against a fake job server on 127.0.0.1 that errors, stalls
//! and sends garbage: tasks are queued exactly once, and every status
//! update arrives in the end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::VecDeque;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug)]
enum Reply {
    Error500,
    Stall,
    Garbage,
    Ok,
}

#[derive(Default)]
struct Script {
    tasks: VecDeque<Reply>,
    updates: VecDeque<Reply>,
    task_list: Value,
    received: Vec<Value>,
    auth: Vec<String>,
}

struct FakeController {
    url: String,
    state: Arc<Mutex<Script>>,
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h =
                    u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap(), 16).unwrap();
                out.push(h);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

impl FakeController {
    fn start(script: Script) -> FakeController {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
        let url = format!("http://{}", server.server_addr().to_ip().unwrap());
        let state = Arc::new(Mutex::new(script));
        let st = state.clone();
        std::thread::spawn(move || {
            for mut req in server.incoming_requests() {
                let st = st.clone();
                // A thread a request, so a stalled answer does not hold up the retry.
                std::thread::spawn(move || {
                    let auth = req
                        .headers()
                        .iter()
                        .find(|h| h.field.equiv("Authorization"))
                        .map(|h| h.value.to_string())
                        .unwrap_or_default();
                    let mut body = String::new();
                    let _ = req.as_reader().read_to_string(&mut body);
                    let path = req.url().to_string();
                    let reply = {
                        let mut s = st.lock().unwrap();
                        s.auth.push(auth);
                        if path == "/test/tasks/" {
                            s.tasks.pop_front().unwrap_or(Reply::Ok)
                        } else if path == "/test/task/update/" {
                            s.updates.pop_front().unwrap_or(Reply::Ok)
                        } else {
                            Reply::Error500
                        }
                    };
                    let respond = |code: u16, text: String| {
                        let _ = req
                            .respond(tiny_http::Response::from_string(text).with_status_code(code));
                    };
                    match reply {
                        Reply::Error500 => respond(500, "oops".into()),
                        Reply::Stall => {
                            std::thread::sleep(Duration::from_secs(3));
                            respond(200, "{\"tasks\": []}".into());
                        }
                        Reply::Garbage => respond(200, "<html>proxy error</html>".into()),
                        Reply::Ok if path == "/test/tasks/" => {
                            let list = st.lock().unwrap().task_list.clone();
                            respond(200, list.to_string());
                        }
                        Reply::Ok => {
                            let payload = body
                                .strip_prefix("payload=")
                                .map(url_decode)
                                .unwrap_or_default();
                            st.lock().unwrap().received.push(
                                serde_json::from_str(&payload).unwrap_or(Value::String(payload)),
                            );
                            respond(200, "{}".into());
                        }
                    }
                });
            }
        });
        FakeController { url, state }
    }
}

fn sandbox_for(ctl: &FakeController, test: &str) -> Sandbox {
    let sb = Sandbox::new(test, &format!("controller = \"{}\"\nhttp_attempts = 2\n\n[http]\ntimeout_secs = 1\nconnect_timeout_secs = 1\n", ctl.url));
    let secrets = sb.root().join("etc/bs/secrets.env");
    std::fs::write(&secrets, "JOB_SERVER_TOKEN=tok-123\n").unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o600)).unwrap();
    sb
}

fn runjob(sb: &Sandbox, task: &str, id: &str) -> Value {
    json!({"id": task, "backend": "test", "type": "runjob", "created_at": "2026-01-01T00:00:00Z", "attributes": {},
           "definition": {"id": sb.id(id), "workspace": sb.ws, "action": id, "image": IMAGE,
                          "args": ["true"], "output_spec": {}}})
}

#[test]
fn errors_stalls_and_garbage_lose_no_task_and_run_none_twice() {
    let ctl = FakeController::start(Script::default());
    let sb = sandbox_for(&ctl, "controller");
    let mut bad = runjob(&sb, "task-bad", "bad");
    bad["definition"]["image"] = json!("NOT AN IMAGE");
    let t1 = runjob(&sb, "task-1", "one");
    let t2 = runjob(&sb, "task-2", "two");
    {
        let mut s = ctl.state.lock().unwrap();
        // Round 1: a 500 then a stall (both retried), then garbage: nothing queued.
        s.tasks = VecDeque::from([Reply::Error500, Reply::Stall]);
        s.task_list = json!({"tasks": [t1, t2, t1, bad]});
    }
    let (code, recs, _) = sb.run(&["poll", "--once"]);
    assert_eq!(code, 1, "{recs:?}");
    assert!(
        of_type(&recs, "error")[0]["message"]
            .as_str()
            .unwrap()
            .contains("gave up after 2"),
        "{recs:?}"
    );
    assert!(sb.entries("queue").is_empty());

    ctl.state.lock().unwrap().tasks = VecDeque::from([Reply::Garbage]);
    let (code, recs, _) = sb.run(&["poll", "--once"]);
    assert_eq!(code, 1);
    assert!(
        of_type(&recs, "error")[0]["message"]
            .as_str()
            .unwrap()
            .contains("not a task list"),
        "{recs:?}"
    );
    assert!(sb.entries("queue").is_empty());

    // Now it answers, sending task-1 twice and an invalid one; updates fail for a while.
    ctl.state.lock().unwrap().updates = VecDeque::from([Reply::Error500, Reply::Error500]);
    let (_, recs, _) = sb.run(&["poll", "--once"]);
    let queued: Vec<_> = of_type(&recs, "task")
        .iter()
        .map(|t| t["target"].clone())
        .collect();
    assert_eq!(queued, vec![json!("task-1"), json!("task-2")], "{recs:?}");
    assert_eq!(sb.entries("queue").len(), 2);
    assert!(of_type(&recs, "error")
        .iter()
        .any(|e| e["kind"] == "invalid_job" && e["target"] == "task-bad"));
    assert!(
        !sb.entries("outbox").is_empty(),
        "updates that failed are kept"
    );

    // The same tasks again: nothing new is queued.
    let (_, recs, _) = sb.run(&["poll", "--once"]);
    assert!(of_type(&recs, "task").is_empty(), "{recs:?}");

    let (code, _, err) = sb.run(&["work", "--once", "--executor", "noop"]);
    assert_eq!(code, 0, "{err}");
    let (code, recs, _) = sb.run(&["poll", "--once"]);
    assert_eq!(code, 0, "{recs:?}");
    assert!(
        sb.entries("outbox").is_empty(),
        "the outbox was not emptied"
    );
    assert_eq!(sb.entries("done").len(), 2);

    let s = ctl.state.lock().unwrap();
    assert!(s.auth.iter().all(|a| a == "tok-123"), "{:?}", s.auth);
    for task in ["task-1", "task-2"] {
        let finals: Vec<_> = s
            .received
            .iter()
            .filter(|u| u["task_id"] == task && u["complete"] == true)
            .collect();
        assert_eq!(finals.len(), 1, "{task}: {:?}", s.received);
        assert_eq!(finals[0]["results"]["status"], "succeeded");
        assert_eq!(finals[0]["stage"], "finalized");
        // Stages arrive in order.
        let stages: Vec<_> = s
            .received
            .iter()
            .filter(|u| u["task_id"] == task)
            .map(|u| u["stage"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            stages.first().map(String::as_str),
            Some("pending"),
            "{stages:?}"
        );
        assert_eq!(stages.last().map(String::as_str), Some("finalized"));
    }
    let bad: Vec<_> = s
        .received
        .iter()
        .filter(|u| u["task_id"] == "task-bad")
        .collect();
    assert_eq!(bad.len(), 1);
    assert!(bad[0]["results"]["error"]
        .as_str()
        .unwrap()
        .contains("image"));
}

#[test]
fn a_canceljob_task_cancels_a_queued_job_and_is_acknowledged() {
    let ctl = FakeController::start(Script::default());
    let sb = sandbox_for(&ctl, "canceltask");
    let t1 = runjob(&sb, "task-run", "victim");
    ctl.state.lock().unwrap().task_list = json!({"tasks": [t1]});
    assert_eq!(sb.run(&["poll", "--once"]).0, 0);
    let cancel = json!({"id": "task-cancel", "backend": "test", "type": "canceljob", "definition": {"id": sb.id("victim")}});
    ctl.state.lock().unwrap().task_list = json!({"tasks": [t1, cancel]});
    let (code, recs, _) = sb.run(&["poll", "--once"]);
    assert_eq!(code, 0, "{recs:?}");
    let (state, e) = sb.finished("victim");
    assert_eq!(
        (state.as_str(), e["outcome"]["code"].as_str()),
        ("failed", Some("cancelled_by_user"))
    );
    let s = ctl.state.lock().unwrap();
    assert!(s
        .received
        .iter()
        .any(|u| u["task_id"] == "task-cancel" && u["complete"] == true));
    assert!(s
        .received
        .iter()
        .any(|u| u["task_id"] == "task-run" && u["results"]["code"] == "cancelled_by_user"));
}
