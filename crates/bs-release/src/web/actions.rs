//! The POST routes: each form becomes the CLI command it stands for and
//! runs through `dispatch::run_as`, so it is decided, written and audited
//! exactly as on the command line (the entry and the request are on disk
//! before the answer is sent). Success goes back to the request page.

use serde_json::Value;

use super::http::{encode, Response};
use super::routes::{error_page, session, with_ctx};
use super::Server;
use crate::cli::{Command, RequestCommand};
use crate::error::Error;
use crate::identity::Caller;

type Form = [(String, String)];

fn field<'a>(form: &'a Form, name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.trim().is_empty())
}

fn required(form: &Form, name: &str) -> Result<String, Error> {
    field(form, name)
        .map(str::to_string)
        .ok_or_else(|| Error::Usage(format!("the form needs a {name}")))
}

/// The command a form posted to `segs` stands for.
fn command(segs: &[&str], form: &Form) -> Result<Option<Command>, Error> {
    let id = |s: &str| s.to_string();
    let rc = match segs {
        ["requests"] => RequestCommand::Create {
            workspace: required(form, "workspace")?,
        },
        ["requests", rid, action] => {
            let rid = id(rid);
            match *action {
                "add" => RequestCommand::Add {
                    id: rid,
                    paths: required(form, "paths")?
                        .lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(str::to_string)
                        .collect(),
                    group: field(form, "group").map(str::to_string),
                    supporting: field(form, "supporting").is_some(),
                },
                "group" => RequestCommand::Group {
                    id: rid,
                    name: required(form, "name")?,
                    context: field(form, "context").map(str::to_string),
                    controls: field(form, "controls").map(str::to_string),
                },
                "comment" => RequestCommand::Comment {
                    id: rid,
                    group: required(form, "group")?,
                    text: required(form, "text")?,
                    public: field(form, "public").is_some(),
                },
                "remove" => RequestCommand::Remove {
                    id: rid,
                    paths: vec![required(form, "path")?],
                },
                "submit" => RequestCommand::Submit { id: rid },
                "submit-review" => RequestCommand::SubmitReview { id: rid },
                "withdraw" => RequestCommand::Withdraw { id: rid },
                "approve" => RequestCommand::Approve { id: rid },
                "return" => RequestCommand::Return {
                    id: rid,
                    comment: field(form, "comment").map(str::to_string),
                },
                "reject" => RequestCommand::Reject {
                    id: rid,
                    comment: field(form, "comment").map(str::to_string),
                },
                "vote" => {
                    let vote = required(form, "vote")?;
                    if !["approve", "request_changes", "reset"].contains(&vote.as_str()) {
                        return Err(Error::Usage(format!(
                            "vote {vote:?}: approve, request_changes or reset"
                        )));
                    }
                    return Ok(Some(Command::Review {
                        id: rid,
                        path: required(form, "path")?,
                        approve: vote == "approve",
                        request_changes: vote == "request_changes",
                        reset: vote == "reset",
                        comment: field(form, "comment").map(str::to_string),
                    }));
                }
                "publish" => return Ok(Some(Command::Publish { id: rid })),
                _ => return Ok(None),
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(Command::Request(rc)))
}

pub(crate) fn post(server: &Server, caller: &Caller, segs: &[&str], form: &Form) -> Response {
    let request = match segs {
        ["requests", rid, ..] => Some(rid.to_string()),
        _ => None,
    };
    let cmd = match command(segs, form) {
        Ok(Some(c)) => c,
        Ok(None) => return Response::text(404, "no such action"),
        Err(e) => {
            let (_, _) = session(
                server,
                caller,
                request.as_deref(),
                |_| -> crate::Result<()> { Err(e) },
            );
            return Response::text(400, "the form is incomplete");
        }
    };
    // run_as audits a refusal itself, as for the CLI.
    let (result, records) = with_ctx(server, caller, |ctx| crate::dispatch::run_as(ctx, cmd));
    match result {
        Ok(summary) => {
            let id = request.or_else(|| {
                summary
                    .get("id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
            // `request add` reports refused files as error records and goes on.
            let errors: Vec<&Value> = records.iter().filter(|r| r["type"] == "error").collect();
            if !errors.is_empty() {
                let msgs: Vec<String> = errors
                    .iter()
                    .map(|e| {
                        format!(
                            "{}: {}",
                            e["target"].as_str().unwrap_or(""),
                            e["message"].as_str().unwrap_or("")
                        )
                    })
                    .collect();
                let e = Error::Usage(msgs.join("; "));
                return error_page(caller, &e);
            }
            match id {
                Some(id) => Response::redirect(&format!("/requests/{}", encode(&id))),
                None => Response::redirect("/"),
            }
        }
        Err(e) => error_page(caller, &e),
    }
}
