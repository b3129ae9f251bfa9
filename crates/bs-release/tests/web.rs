//! `bs-release serve`: every route over the real Unix socket, the caller
//! known from the kernel. The clients are real processes (curl) run as the
//! sandbox's people's uids (the tests run as root), so SO_PEERCRED reports
//! what it would for their SSH sessions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::{Sandbox, PEOPLE};

fn uid(name: &str) -> u32 {
    PEOPLE.iter().find(|p| p.0 == name).map(|p| p.1).unwrap()
}

struct Web {
    sb: Sandbox,
    _sock_dir: tempfile::TempDir,
    socket: PathBuf,
    child: Option<Child>,
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn form_encode(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let enc = |s: &str| {
                s.bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() || b"-._".contains(&b) {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect::<String>()
            };
            format!("{}={}", enc(k), enc(v))
        })
        .collect::<Vec<_>>()
        .join("&")
}

impl Web {
    fn start() -> Web {
        let sb = Sandbox::new();
        sb.outputs(
            "ws1",
            &[
                ("output/table.csv", b"group,n\nA,3\nB,120\n"),
                ("output/big.csv", b"group,n\nA,100\nB,120\n"),
                ("output/fig.png", b"\x89PNG\r\n\x1a\nfake"),
                (
                    "output/report.html",
                    b"<html><script>fetch('https://example.invalid')</script><p>report</p></html>",
                ),
                ("output/notes.txt", b"<b>not markup</b>\n"),
            ],
        );
        // A listed output that is a symlink to a file outside the workspace.
        std::os::unix::fs::symlink(
            sb.root.join("etc/passwd"),
            sb.ws("ws1").join("output/link.csv"),
        )
        .unwrap();
        let mut m = sb.manifest("ws1");
        m["outputs"]["output/link.csv"] = m["outputs"]["output/table.csv"].clone();
        sb.write_manifest("ws1", &m);
        let sock_dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(sock_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let socket = sock_dir.path().join("web.sock");
        let mut w = Web {
            sb,
            _sock_dir: sock_dir,
            socket,
            child: None,
        };
        w.spawn();
        w
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.status_path());
        let child = self
            .sb
            .cmd()
            .args(["serve", "--socket"])
            .arg(&self.socket)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let start = Instant::now();
        while !self.status_path().exists() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "serve did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn status_path(&self) -> PathBuf {
        PathBuf::from(format!("{}.status", self.socket.display()))
    }

    /// curl as `uid`, with extra arguments.
    fn curl(&self, uid: u32, path: &str, extra: &[&str]) -> Resp {
        let out = Command::new("curl")
            .args([
                "-s",
                "-i",
                "--path-as-is",
                "--max-time",
                "20",
                "--unix-socket",
            ])
            .arg(&self.socket)
            .args(extra)
            .arg(format!("http://localhost{path}"))
            .uid(uid)
            .gid(uid)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no response from curl as {uid}: {out:?}"));
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Resp {
            status,
            headers,
            body: body.to_string(),
        }
    }

    fn get(&self, who: &str, path: &str) -> Resp {
        self.curl(uid(who), path, &[])
    }

    /// `who`'s token, from a page of theirs with a form on it.
    fn csrf_from(&self, who: &str, page: &str) -> String {
        let page = self.get(who, page).body;
        let i = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
        page[i..i + 64].to_string()
    }

    fn csrf(&self, who: &str) -> String {
        self.csrf_from(who, "/")
    }

    fn post_raw(&self, uid: u32, path: &str, body: &str, extra: &[&str]) -> Resp {
        let mut args = vec![
            "-X",
            "POST",
            "-H",
            "Content-Type: application/x-www-form-urlencoded",
            "--data-raw",
            body,
        ];
        args.extend_from_slice(extra);
        self.curl(uid, path, &args)
    }

    /// A form post with `who`'s CSRF token.
    fn post(&self, who: &str, path: &str, fields: &[(&str, &str)]) -> Resp {
        // The page the form is on: the request's, or the front page.
        let page = match path.split('/').collect::<Vec<_>>().as_slice() {
            ["", "requests", id, _] => format!("/requests/{id}"),
            _ => "/".to_string(),
        };
        let token = self.csrf_from(who, &page);
        let mut all = vec![("csrf", token.as_str())];
        all.extend_from_slice(fields);
        self.post_raw(uid(who), path, &form_encode(&all), &[])
    }

    /// A request by alice, made in the browser, submitted; its id.
    fn submitted(&self) -> String {
        let r = self.post("alice", "/requests", &[("workspace", "ws1")]);
        assert_eq!(r.status, 303, "{}", r.body);
        let id = r
            .header("location")
            .unwrap()
            .trim_start_matches("/requests/")
            .to_string();
        let r = self.post(
            "alice",
            &format!("/requests/{id}/add"),
            &[
                ("paths", "output/table.csv\noutput/fig.png"),
                ("group", "tables"),
            ],
        );
        assert_eq!(r.status, 303, "{}", r.body);
        let r = self.post(
            "alice",
            &format!("/requests/{id}/group"),
            &[
                ("name", "tables"),
                ("context", "counts by group"),
                ("controls", "rounded to 5"),
            ],
        );
        assert_eq!(r.status, 303, "{}", r.body);
        let r = self.post("alice", &format!("/requests/{id}/submit"), &[]);
        assert_eq!(r.status, 303, "{}", r.body);
        id
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn the_caller_is_who_the_kernel_says_and_nobody_else_gets_in() {
    let w = Web::start();
    let r = w.get("alice", "/");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("Signed in as <b>alice</b>"), "{}", r.body);
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert!(r
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'none'"));
    // The GitHub login as bs-users listed it, capitals and all.
    let r = w.get("testcapitals", "/");
    assert!(r.body.contains("TestCapitals"), "{}", r.body);
    // A uid with no passwd entry, root, and someone with no release role.
    for who in [4242u32, 0] {
        let r = w.curl(who, "/", &[]);
        assert_eq!(r.status, 403, "uid {who}: {}", r.body);
    }
    let r = w.get("eve", "/");
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("no release role"), "{}", r.body);
    let audit = w.sb.audit();
    assert!(
        audit
            .iter()
            .any(|e| e["user"] == "uid 4242" && e["action"] == "refused"),
        "{audit:#?}"
    );
    assert!(
        audit
            .iter()
            .any(|e| e["user"] == "eve" && e["action"] == "refused" && e["detail"]["via"] == "web"),
        "{audit:#?}"
    );
    // A name that is not localhost: a rebound DNS name reaching the forwarded port.
    let r = w.curl(uid("alice"), "/", &["-H", "Host: evil.example:8000"]);
    assert_eq!(r.status, 421);
    // No cookie is ever set: identity is per connection.
    assert!(r.header("set-cookie").is_none());
}

#[test]
fn forms_need_the_token_of_the_person_posting_and_our_origin() {
    let w = Web::start();
    let before = std::fs::read_dir(w.sb.medium().join("requests"))
        .map(|d| d.count())
        .unwrap_or(0);
    let alice = uid("alice");
    // No token; another person's token; a token from another origin.
    let r = w.post_raw(alice, "/requests", "workspace=ws1", &[]);
    assert_eq!(r.status, 403, "{}", r.body);
    let rita_token = w.csrf("dev");
    let r = w.post_raw(
        alice,
        "/requests",
        &form_encode(&[("csrf", &rita_token), ("workspace", "ws1")]),
        &[],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let token = w.csrf("alice");
    let body = form_encode(&[("csrf", &token), ("workspace", "ws1")]);
    let r = w.post_raw(
        alice,
        "/requests",
        &body,
        &["-H", "Origin: http://evil.example"],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = w.post_raw(
        alice,
        "/requests",
        &body,
        &["-H", "Sec-Fetch-Site: cross-site"],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let after = std::fs::read_dir(w.sb.medium().join("requests"))
        .map(|d| {
            d.filter(|e| e.as_ref().unwrap().file_type().unwrap().is_dir())
                .count()
        })
        .unwrap_or(0);
    assert!(after <= before, "a refused form made a request");
    assert!(w.sb.audit().iter().any(
        |e| e["action"] == "refused" && e["detail"]["error"].as_str().unwrap().contains("CSRF")
    ));
    // The right token from our own page works.
    let r = w.post_raw(
        alice,
        "/requests",
        &body,
        &["-H", "Origin: http://localhost"],
    );
    assert_eq!(r.status, 303, "{}", r.body);
}

#[test]
fn a_review_in_the_browser_is_blinded_and_finishes_on_the_cli() {
    let w = Web::start();
    let id = w.submitted();
    let page = |who: &str| w.get(who, &format!("/requests/{id}"));
    // The author may not vote; a checker may not submit the author's request.
    let r = w.post(
        "alice",
        &format!("/requests/{id}/vote"),
        &[("path", "output/table.csv"), ("vote", "approve")],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = w.post("rita", &format!("/requests/{id}/approve"), &[]);
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("wrong_state"), "{}", r.body);
    // Rita votes, with a note, in the browser.
    for p in ["output/table.csv", "output/fig.png"] {
        let r = w.post(
            "rita",
            &format!("/requests/{id}/vote"),
            &[
                ("path", p),
                ("vote", "request_changes"),
                ("comment", "ritas-secret-note"),
            ],
        );
        assert_eq!(r.status, 303, "{}", r.body);
    }
    let r = w.post(
        "rita",
        &format!("/requests/{id}/comment"),
        &[("group", "tables"), ("text", "ritas-private-comment")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let mine = page("rita").body;
    assert!(mine.contains("rita: changes_requested"), "{mine}");
    assert!(mine.contains("ritas-private-comment"));
    // Victor sees neither her votes nor her note nor her comment; nor does the author.
    for who in ["victor", "alice"] {
        let other = page(who).body;
        assert!(
            other.contains("state <b class=\"state\">submitted"),
            "{other}"
        );
        for hidden in [
            "rita: ",
            "ritas-secret-note",
            "ritas-private-comment",
            "changes_requested",
        ] {
            assert!(!other.contains(hidden), "{who} sees {hidden}: {other}");
        }
    }
    let audit = w.get("victor", "/audit").body;
    assert!(!audit.contains("ritas-secret-note") && !audit.contains("ritas-private-comment"));
    assert!(
        audit.contains("view_file") || audit.contains("submit"),
        "{audit}"
    );
    // The audit log is for checkers only.
    assert_eq!(w.get("alice", "/audit").status, 403);
    // Finished on the CLI: the same request, the same rules.
    w.sb.run("rita", &["request", "submit-review", &id]).ok();
    assert!(page("victor").body.contains("partially_reviewed"));
    for p in ["output/table.csv", "output/fig.png"] {
        w.sb.run("victor", &["review", &id, p, "--approve"]).ok();
    }
    let r = w.post("victor", &format!("/requests/{id}/submit-review"), &[]);
    assert_eq!(r.status, 303, "{}", r.body);
    // Both reviews in: now each sees the other's votes.
    let after = page("victor").body;
    assert!(after.contains("rita: changes_requested"), "{after}");
    assert_eq!(w.sb.request_json(&id)["state"], "reviewed");
    // A return needs the comment Airlock requires: refused as on the CLI,
    // then done once the public comment is there.
    let r = w.post(
        "rita",
        &format!("/requests/{id}/return"),
        &[("comment", "please round")],
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body.contains("tell the author what to change"),
        "{}",
        r.body
    );
    let r = w.post(
        "rita",
        &format!("/requests/{id}/comment"),
        &[
            ("group", "tables"),
            ("text", "round-to-five-please"),
            ("public", "1"),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let r = w.post(
        "rita",
        &format!("/requests/{id}/return"),
        &[("comment", "please round")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let authors = page("alice").body;
    assert!(authors.contains("returned"), "{authors}");
    assert!(authors.contains("round-to-five-please"), "{authors}");
    assert!(!authors.contains("ritas-private-comment"), "{authors}");
    assert!(!authors.contains("ritas-secret-note"), "{authors}");
    let audit = w.sb.audit();
    assert!(
        audit
            .iter()
            .any(|e| e["action"] == "vote" && e["user"] == "rita" && e["detail"]["via"] == "web"),
        "{audit:#?}"
    );
}

#[test]
fn outputs_are_shown_safely_and_never_from_outside_the_workspace() {
    let w = Web::start();
    // A CSV as a table with the low count marked in place.
    let r = w.get("rita", "/workspaces/ws1/files/output/table.csv");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body
            .contains("<td class=\"flag\" title=\"low count\">3</td>"),
        "{}",
        r.body
    );
    assert!(r.body.contains("data-check=\"low_count\""));
    let r = w.get(
        "rita",
        "/workspaces/ws1/files/output/table.csv?sort=1&desc=1",
    );
    let (hi, lo) = (r.body.find(">120<").unwrap(), r.body.find(">3<").unwrap());
    assert!(hi < lo, "sorted descending");
    // An image inline; an HTML report in a sandboxed frame, its bytes under a no-script policy.
    let r = w.get("rita", "/workspaces/ws1/files/output/fig.png");
    assert!(
        r.body
            .contains("<img src=\"/workspaces/ws1/raw/output/fig.png\""),
        "{}",
        r.body
    );
    let r = w.get("rita", "/workspaces/ws1/raw/output/fig.png");
    assert_eq!(r.header("content-type"), Some("image/png"));
    let r = w.get("rita", "/workspaces/ws1/files/output/report.html");
    assert!(r.body.contains("<iframe sandbox=\"\""), "{}", r.body);
    assert!(!r.body.contains("<script>"));
    let r = w.get("rita", "/workspaces/ws1/raw/output/report.html");
    let csp = r.header("content-security-policy").unwrap();
    assert!(
        csp.starts_with("sandbox;") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(!csp.contains("script-src"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    let r = w.get("rita", "/workspaces/ws1/raw/output/report.html?download=1");
    assert!(r
        .header("content-disposition")
        .unwrap()
        .starts_with("attachment"));
    // Text is text, escaped.
    let r = w.get("rita", "/workspaces/ws1/files/output/notes.txt");
    assert!(r.body.contains("&lt;b&gt;not markup"), "{}", r.body);
    // Traversal, encoded or not, and a symlinked output: refused, nothing of the target shown.
    for path in [
        "/workspaces/ws1/files/../../../etc/passwd",
        "/workspaces/ws1/raw/output/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/workspaces/..%2F..%2Fetc/raw/passwd",
        "/workspaces/ws1/raw/output/link.csv",
        "/workspaces/ws1/files/output/link.csv",
        "/workspaces/ws1/raw/metadata/manifest.json",
    ] {
        let r = w.get("rita", path);
        assert!(
            matches!(r.status, 400 | 404),
            "{path}: {} {}",
            r.status,
            r.body
        );
        assert!(!r.body.contains("root:x:0:0"), "{path}");
    }
    // Someone with no role sees no output.
    assert_eq!(
        w.get("eve", "/workspaces/ws1/raw/output/table.csv").status,
        403
    );
    // The workspace page lists the manifest's outputs.
    let r = w.get("alice", "/workspaces/ws1");
    assert!(r.body.contains("output/big.csv"), "{}", r.body);
    // A request's files are its verified copies, for its author and checkers only.
    let id = w.submitted();
    let r = w.get("victor", &format!("/requests/{id}/raw/output/table.csv"));
    assert_eq!((r.status, r.body.as_str()), (200, "group,n\nA,3\nB,120\n"));
    assert_eq!(
        w.get("victor", &format!("/requests/{id}/raw/output/big.csv"))
            .status,
        404
    );
    assert_eq!(w.get("eve", &format!("/requests/{id}")).status, 403);
}

#[test]
fn status_says_who_is_connected_and_a_restart_loses_no_vote() {
    let mut w = Web::start();
    let id = w.submitted();
    let r = w.post(
        "rita",
        &format!("/requests/{id}/vote"),
        &[("path", "output/table.csv"), ("vote", "approve")],
    );
    assert_eq!(r.status, 303);
    let st =
        w.sb.cmd()
            .args(["serve", "--status", "--socket"])
            .arg(&w.socket)
            .output()
            .unwrap();
    let text = String::from_utf8_lossy(&st.stdout);
    assert!(st.status.success(), "{text}");
    assert!(text.contains("\"running\":true"), "{text}");
    assert!(
        text.contains("\"user\":\"rita\"") && text.contains("\"user\":\"alice\""),
        "{text}"
    );
    // Killed and started again: the vote acknowledged before is there, and
    // an old page's token no longer works.
    let old = w.csrf_from("rita", &format!("/requests/{id}"));
    w.stop();
    w.spawn();
    let votes = &w.sb.request_json(&id)["files"]["output/table.csv"]["reviews"];
    assert_eq!(votes[0]["reviewer"], "rita", "{votes}");
    assert!(w
        .get("rita", &format!("/requests/{id}"))
        .body
        .contains("rita: approved"));
    let r = w.post_raw(
        uid("rita"),
        &format!("/requests/{id}/vote"),
        &form_encode(&[
            ("csrf", &old),
            ("path", "output/fig.png"),
            ("vote", "approve"),
        ]),
        &[],
    );
    assert_eq!(r.status, 403);
}

#[test]
fn the_other_forms_do_what_the_cli_does() {
    let w = Web::start();
    let r = w.post("alice", "/requests", &[("workspace", "ws1")]);
    let id = r
        .header("location")
        .unwrap()
        .trim_start_matches("/requests/")
        .to_string();
    let add = |paths: &str, supporting: bool| {
        let mut f = vec![("paths", paths)];
        if supporting {
            f.push(("supporting", "1"));
        }
        w.post("alice", &format!("/requests/{id}/add"), &f)
    };
    assert_eq!(add("output/table.csv", false).status, 303);
    assert_eq!(add("output/notes.txt", true).status, 303);
    // A file the manifest refuses is refused with the CLI's reason.
    let r = add("output/link.csv", false);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("symlink"), "{}", r.body);
    let req = w.sb.request_json(&id);
    assert_eq!(req["files"]["output/notes.txt"]["filetype"], "supporting");
    assert!(req["files"].get("output/link.csv").is_none());
    let r = w.post(
        "alice",
        &format!("/requests/{id}/remove"),
        &[("path", "output/notes.txt")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(w.sb.request_json(&id)["files"]
        .get("output/notes.txt")
        .is_none());
    // A checker may not withdraw the author's request; the author may.
    assert_eq!(
        w.post("rita", &format!("/requests/{id}/withdraw"), &[])
            .status,
        403
    );
    let r = w.post("alice", &format!("/requests/{id}/withdraw"), &[]);
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(w.sb.request_json(&id)["state"], "withdrawn");
    // Reviewed on the CLI; published only when approved; rejected with a reason.
    let id = w.submitted();
    for who in ["rita", "victor"] {
        w.sb.review_all(
            who,
            &id,
            &["output/table.csv", "output/fig.png"],
            "--approve",
        );
    }
    let r = w.post("rita", &format!("/requests/{id}/publish"), &[]);
    assert_eq!(r.status, 409, "{}", r.body);
    let r = w.post("rita", &format!("/requests/{id}/reject"), &[]);
    assert!(matches!(r.status, 400 | 403), "{}", r.body);
    assert_eq!(w.sb.request_json(&id)["state"], "reviewed");
    let r = w.post(
        "rita",
        &format!("/requests/{id}/reject"),
        &[("comment", "not for release")],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(w.sb.request_json(&id)["state"], "rejected");
    // No such action; no such request.
    assert_eq!(
        w.post("rita", &format!("/requests/{id}/explode"), &[])
            .status,
        404
    );
    assert_eq!(w.get("rita", "/requests/999").status, 404);
    // The server is not something a person starts through sudo.
    let r =
        w.sb.run("alice", &["serve", "--socket", "/tmp/not-here.sock"]);
    assert_ne!(r.code, 0);
    assert_eq!(
        r.error_kinds(),
        vec!["not_permitted".to_string()],
        "{:?}",
        r.records
    );
}

#[test]
fn two_checkers_voting_at_once_both_count() {
    let w = Web::start();
    let id = w.submitted();
    let paths = ["output/table.csv", "output/fig.png"];
    std::thread::scope(|s| {
        for who in ["rita", "victor"] {
            let (w, id) = (&w, &id);
            s.spawn(move || {
                for p in paths {
                    let r = w.post(
                        who,
                        &format!("/requests/{id}/vote"),
                        &[("path", p), ("vote", "approve")],
                    );
                    assert_eq!(r.status, 303, "{who} {p}: {}", r.body);
                }
            });
        }
    });
    let req = w.sb.request_json(&id);
    for p in paths {
        let mut who: Vec<&str> = req["files"][p]["reviews"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["reviewer"].as_str().unwrap())
            .collect();
        who.sort();
        assert_eq!(who, vec!["rita", "victor"], "{p}");
    }
}
