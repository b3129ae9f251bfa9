//! The GET routes: what each page shows comes from the same commands the
//! CLI runs (`ls`, `files`, `show`, `audit`), so it is exactly what the
//! caller may see there: blinded votes and comments stay blinded.

use serde_json::Value;

use super::html::{esc, form, page, path_link};
use super::http::{encode, Request, Response};
use super::routes::{error_page, session};
use super::{render, Server};
use crate::identity::Caller;
use crate::request::{EDITABLE, INDEPENDENT, UNDER_REVIEW};

pub(crate) fn get(
    server: &Server,
    caller: &Caller,
    uid: u32,
    segs: &[&str],
    req: &Request,
) -> Response {
    let csrf = server.csrf_token(uid);
    let download = req.query_value("download").is_some();
    let sort = req
        .query_value("sort")
        .and_then(|s| s.parse::<usize>().ok())
        .map(|c| (c, req.query_value("desc").is_some()));
    match segs {
        [] => home(server, caller, &csrf),
        ["workspaces", ws] => workspace(server, caller, ws),
        ["workspaces", ws, how @ ("files" | "raw"), rest @ ..] if !rest.is_empty() => {
            let path = rest.join("/");
            let (r, _) = session(server, caller, None, |ctx| ctx.output_bytes(ws, &path));
            let raw_url = format!("/workspaces/{}/raw/{}", encode(ws), path_link(&path));
            file_page(
                server,
                caller,
                &path,
                r,
                *how == "raw",
                download,
                &raw_url,
                sort,
            )
        }
        ["requests", id] => request_page(server, caller, id, &csrf),
        ["requests", id, how @ ("files" | "raw"), rest @ ..] if !rest.is_empty() => {
            let path = rest.join("/");
            let (r, _) = session(server, caller, Some(id), |ctx| {
                ctx.request_file_bytes(id, &path)
            });
            let raw_url = format!("/requests/{}/raw/{}", encode(id), path_link(&path));
            file_page(
                server,
                caller,
                &path,
                r,
                *how == "raw",
                download,
                &raw_url,
                sort,
            )
        }
        ["audit"] => audit_page(server, caller),
        _ => Response::html(404, page("Not found", &caller.user, "<p>No such page.</p>")),
    }
}

#[allow(clippy::too_many_arguments)]
fn file_page(
    server: &Server,
    caller: &Caller,
    path: &str,
    bytes: crate::Result<Vec<u8>>,
    raw: bool,
    download: bool,
    raw_url: &str,
    sort: Option<(usize, bool)>,
) -> Response {
    match bytes {
        Err(e) => error_page(caller, &e),
        Ok(b) if raw => render::raw(path, b, download),
        Ok(b) => {
            let body = render::view(path, &b, &server.config.release, raw_url, sort);
            Response::html(200, page(path, &caller.user, &body))
        }
    }
}

fn records_of<'a>(records: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    records.iter().filter(move |r| r["type"] == kind)
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn home(server: &Server, caller: &Caller, csrf: &str) -> Response {
    let (listed, records) = session(server, caller, None, |ctx| ctx.ls(None));
    if let Err(e) = listed {
        return error_page(caller, &e);
    }
    let (names, _) = session(server, caller, None, |ctx| ctx.workspace_names());
    let mut b = format!(
        "<p>{} · roles: {}{}</p><h2>Requests</h2><table><tr><th>id</th><th>workspace</th><th>author</th><th>state</th><th>files</th><th>updated</th></tr>",
        esc(&caller.github),
        if caller.author { "author " } else { "" },
        if caller.checker { "output checker" } else { "" },
    );
    for r in records_of(&records, "request") {
        b.push_str(&format!(
            "<tr><td><a href=\"/requests/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            encode(s(r, "id")), esc(s(r, "id")), esc(s(r, "workspace")), esc(s(r, "author")),
            esc(s(r, "state")), r["files"], esc(s(r, "updated_at"))
        ));
    }
    b.push_str("</table><h2>Workspaces</h2><ul>");
    for n in names.unwrap_or_default() {
        b.push_str(&format!(
            "<li><a href=\"/workspaces/{}\">{}</a></li>",
            encode(&n),
            esc(&n)
        ));
    }
    b.push_str("</ul>");
    if caller.author {
        b.push_str("<h2>New request</h2>");
        b.push_str(&form(
            "/requests",
            csrf,
            &[],
            "<label>workspace <input name=\"workspace\" required></label> ",
            "Create request",
        ));
    }
    Response::html(200, page("Release requests", &caller.user, &b))
}

fn workspace(server: &Server, caller: &Caller, ws: &str) -> Response {
    let ws_owned = ws.to_string();
    let (r, records) = session(server, caller, None, |ctx| ctx.files(&ws_owned));
    if let Err(e) = r {
        return error_page(caller, &e);
    }
    let mut b = String::from(
        "<table><tr><th>output</th><th>size</th><th>releasable</th><th>why not</th></tr>",
    );
    for f in records_of(&records, "file") {
        let path = s(f, "path");
        let reasons: Vec<&str> = f["reasons"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        b.push_str(&format!(
            "<tr><td><a href=\"/workspaces/{}/files/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            encode(ws), path_link(path), esc(path), f["size"],
            if f["releasable"] == true { "yes" } else { "no" },
            esc(&reasons.join("; "))
        ));
    }
    b.push_str("</table>");
    Response::html(200, page(&format!("Workspace {ws}"), &caller.user, &b))
}

fn audit_page(server: &Server, caller: &Caller) -> Response {
    let (r, records) = session(server, caller, None, |ctx| ctx.audit_log(None));
    let mut b = String::new();
    if let Err(e) = r {
        if !matches!(e, crate::Error::AuditBroken(_)) {
            return error_page(caller, &e);
        }
        b.push_str(&format!("<p class=\"err\">{}</p>", esc(&e.to_string())));
    }
    b.push_str("<table><tr><th>time</th><th>who</th><th>action</th><th>request</th><th>file</th><th>detail</th></tr>");
    for e in records_of(&records, "audit") {
        b.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            esc(s(e, "time")), esc(s(e, "user")), esc(s(e, "action")), esc(s(e, "request")),
            esc(s(e, "file")), esc(&e["detail"].to_string())
        ));
    }
    b.push_str("</table>");
    Response::html(200, page("Audit log", &caller.user, &b))
}

fn request_page(server: &Server, caller: &Caller, id: &str, csrf: &str) -> Response {
    let (r, records) = session(server, caller, Some(id), |ctx| ctx.show(id));
    if let Err(e) = r {
        return error_page(caller, &e);
    }
    let Some(v) = records_of(&records, "request").next() else {
        return Response::text(500, "show gave no request");
    };
    let state =
        crate::request::State::parse(s(v, "state")).unwrap_or(crate::request::State::Withdrawn);
    let is_author = s(v, "author") == caller.user;
    let reviewer = caller.checker && !is_author;
    let base = format!("/requests/{}", encode(id));
    let act = |a: &str| format!("{base}/{a}");
    let mut b = format!(
        "<p>Workspace <a href=\"/workspaces/{ws_l}\">{ws}</a> · author <b>{a}</b> · state <b class=\"state\">{st}</b> · turn {t} · reviews submitted {n}</p>",
        ws_l = encode(s(v, "workspace")),
        ws = esc(s(v, "workspace")),
        a = esc(s(v, "author")),
        st = esc(s(v, "state")),
        t = v["turn"],
        n = v.get("reviews_submitted").cloned().unwrap_or_else(|| Value::from(v["submitted_reviews"].as_object().map_or(0, |m| m.len()))),
    );
    // Groups: those described and those files are in.
    let mut groups: Vec<String> = v["groups"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    if let Some(files) = v["files"].as_object() {
        for f in files.values() {
            let g = s(f, "group").to_string();
            if !groups.contains(&g) {
                groups.push(g);
            }
        }
    }
    groups.sort();
    for g in &groups {
        let gv = &v["groups"][g.as_str()];
        b.push_str(&format!(
            "<section class=\"group\"><h2>Group {}</h2>",
            esc(g)
        ));
        b.push_str(&format!(
            "<p><b>Context:</b> {}</p><p><b>Disclosure controls:</b> {}</p>",
            esc(s(gv, "context")),
            esc(s(gv, "controls"))
        ));
        if is_author && EDITABLE.contains(&state) {
            b.push_str(&form(
                &act("group"),
                csrf,
                &[("name", g)],
                &format!(
                    "<label>context <input name=\"context\" value=\"{}\"></label> <label>controls <input name=\"controls\" value=\"{}\"></label> ",
                    esc(s(gv, "context")),
                    esc(s(gv, "controls"))
                ),
                "Save group",
            ));
        }
        b.push_str("<table><tr><th>file</th><th>type</th><th>size</th><th>findings</th><th>votes you may see</th><th>decision</th><th></th></tr>");
        if let Some(files) = v["files"].as_object() {
            for (path, f) in files.iter().filter(|(_, f)| s(f, "group") == g) {
                let votes: Vec<String> = f["reviews"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|r| {
                                let note = s(r, "comment");
                                format!(
                                    "<span class=\"vote\">{}: {}{}</span>",
                                    esc(s(r, "reviewer")),
                                    esc(s(r, "vote")),
                                    if note.is_empty() {
                                        String::new()
                                    } else {
                                        format!(" ({})", esc(note))
                                    }
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let mut controls = String::new();
                if reviewer && UNDER_REVIEW.contains(&state) && s(f, "filetype") != "supporting" {
                    for (vote, label) in [
                        ("approve", "Approve"),
                        ("request_changes", "Request changes"),
                        ("reset", "Reset vote"),
                    ] {
                        controls.push_str(&form(
                            &act("vote"),
                            csrf,
                            &[("path", path), ("vote", vote)],
                            if vote == "reset" { "" } else { "<input name=\"comment\" placeholder=\"note (optional)\" size=\"12\"> " },
                            label,
                        ));
                    }
                }
                if is_author && EDITABLE.contains(&state) {
                    controls.push_str(&form(&act("remove"), csrf, &[("path", path)], "", "Remove"));
                }
                b.push_str(&format!(
                    "<tr class=\"file\"><td><a href=\"{base}/files/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    path_link(path), esc(path), esc(s(f, "filetype")), f["size"],
                    f["findings"].as_array().map_or(0, |a| a.len()),
                    votes.join("<br>"), esc(s(f, "decision")), controls
                ));
            }
        }
        b.push_str("</table><h3>Comments</h3><ul>");
        if let Some(cs) = gv["comments"].as_array() {
            for c in cs {
                b.push_str(&format!(
                    "<li class=\"comment {}\"><b>{}</b> (turn {}, {}): {}</li>",
                    esc(s(c, "visibility")),
                    esc(s(c, "author")),
                    c["turn"],
                    esc(s(c, "visibility")),
                    esc(s(c, "text"))
                ));
            }
        }
        b.push_str("</ul>");
        if is_author || caller.checker {
            let public = if reviewer {
                "<label><input type=\"checkbox\" name=\"public\" value=\"1\"> visible to the author</label> "
            } else {
                ""
            };
            b.push_str(&form(
                &act("comment"),
                csrf,
                &[("group", g)],
                &format!(
                    "<textarea name=\"text\" rows=\"2\" cols=\"60\" required></textarea> {public}"
                ),
                "Comment",
            ));
        }
        b.push_str("</section>");
    }
    b.push_str("<h2>Actions</h2>");
    if is_author && EDITABLE.contains(&state) {
        b.push_str(&form(
            &act("add"),
            csrf,
            &[],
            "<fieldset><legend>Add outputs</legend><label>paths (one per line)<br><textarea name=\"paths\" rows=\"3\" cols=\"60\" required></textarea></label><br><label>group <input name=\"group\" value=\"default\"></label> <label><input type=\"checkbox\" name=\"supporting\" value=\"1\"> supporting files</label></fieldset>",
            "Add",
        ));
        b.push_str(&form(&act("submit"), csrf, &[], "", "Submit for review"));
        b.push_str(&form(&act("withdraw"), csrf, &[], "", "Withdraw"));
    }
    if reviewer {
        if INDEPENDENT.contains(&state) {
            b.push_str(&form(
                &act("submit-review"),
                csrf,
                &[],
                "",
                "Submit my review",
            ));
        }
        if state == crate::request::State::Reviewed {
            b.push_str(&form(&act("approve"), csrf, &[], "", "Approve request"));
            b.push_str(&form(
                &act("reject"),
                csrf,
                &[],
                "<input name=\"comment\" placeholder=\"why (required)\"> ",
                "Reject",
            ));
        }
        if UNDER_REVIEW.contains(&state) || state == crate::request::State::Approved {
            b.push_str(&form(
                &act("return"),
                csrf,
                &[],
                "<input name=\"comment\" placeholder=\"comment\"> ",
                "Return to author",
            ));
        }
        if state == crate::request::State::Approved {
            b.push_str(&form(&act("publish"), csrf, &[], "", "Publish"));
        }
    }
    Response::html(200, page(&format!("Request {id}"), &caller.user, &b))
}
