//! The request page: its groups with context and controls, the files with
//! the votes the caller may see (`show`, blinded as on the CLI), the
//! comments they may see, and the forms their role and the state allow.

use serde_json::Value;

use super::html::{esc, form, page as frame, path_link};
use super::http::{encode, Response};
use super::pages::{records_of, s};
use super::routes::{error_page, session};
use super::Server;
use crate::identity::Caller;
use crate::request::{EDITABLE, INDEPENDENT, UNDER_REVIEW};

pub(crate) fn page(server: &Server, caller: &Caller, id: &str, csrf: &str) -> Response {
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
    Response::html(200, frame(&format!("Request {id}"), &caller.user, &b))
}
