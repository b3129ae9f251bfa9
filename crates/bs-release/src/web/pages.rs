//! The GET routes: what each page shows comes from the same commands the
//! CLI runs (`ls`, `files`, `show`, `audit`), so it is exactly what the
//! caller may see there: blinded votes and comments stay blinded.

use serde_json::Value;

use super::html::{esc, form, page, path_link};
use super::http::{encode, Request, Response};
use super::routes::{error_page, session};
use super::{render, Server};
use crate::identity::Caller;

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
        ["requests", id] => super::request_page::page(server, caller, id, &csrf),
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

pub(crate) fn records_of<'a>(
    records: &'a [Value],
    kind: &'a str,
) -> impl Iterator<Item = &'a Value> + 'a {
    records.iter().filter(move |r| r["type"] == kind)
}

pub(crate) fn s<'a>(v: &'a Value, k: &str) -> &'a str {
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
