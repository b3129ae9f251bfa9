//! One request: the Host check, the caller from the peer's uid, the route,
//! the CSRF check on every POST; and the session every route runs in (the
//! CLI's `Ctx`, refusals audited as the CLI audits them).

use bs_core::accounts::AccountDb;
use bs_core::Output;
use serde_json::Value;

use super::http::{segments, Request, Response};
use super::{actions, html, pages, Server};
use crate::audit::Audit;
use crate::error::{Error, Result};
use crate::identity::{self, Caller};
use crate::session::Ctx;
use crate::store::Store;

/// Answer `req` from the process running as `uid`; also who that was, for the log.
pub(crate) fn handle(server: &Server, req: &Request, uid: u32) -> (String, Response) {
    // A forwarded port is reached as localhost: any other Host is a page
    // that had a name of its own resolve to us (DNS rebinding).
    if !local_host(req.header("host")) {
        return (
            format!("uid {uid}"),
            Response::text(421, "this server answers only as localhost"),
        );
    }
    let caller = match AccountDb::load_public(&server.root)
        .map_err(Error::from)
        .and_then(|db| {
            identity::from_peer(
                &db,
                &server.config.release,
                uid,
                server.config.service_account.uid,
            )
        }) {
        Ok(c) => c,
        Err(e) => {
            refuse_unknown(server, uid, &e);
            return (
                format!("uid {uid}"),
                Response::text(403, &format!("who are you? {e}")),
            );
        }
    };
    let who = caller.user.clone();
    let segs = segments(&req.path);
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let resp = match req.method.as_str() {
        "GET" => pages::get(server, &caller, uid, &segs, req),
        "POST" => match csrf_ok(server, req, uid) {
            Ok(()) => actions::post(server, &caller, &segs, &req.form()),
            Err(why) => {
                let e = Error::Denied(format!("form refused: {why}"));
                let _ = session(server, &caller, None, |_| -> Result<()> { Err(e) });
                Response::text(403, &format!("form refused: {why}"))
            }
        },
        _ => Response::text(405, "GET and POST only"),
    };
    (who, resp)
}

fn local_host(host: Option<&str>) -> bool {
    let Some(h) = host else { return false };
    let name = if let Some(rest) = h.strip_prefix('[') {
        rest.split_once(']').map(|(n, _)| n).unwrap_or("")
    } else {
        h.split(':').next().unwrap_or("")
    };
    matches!(name, "localhost" | "127.0.0.1" | "::1")
}

/// The form carries this person's token, and no browser says it came from another site.
fn csrf_ok(server: &Server, req: &Request, uid: u32) -> std::result::Result<(), &'static str> {
    if req
        .header("sec-fetch-site")
        .is_some_and(|v| v == "cross-site")
    {
        return Err("posted from another site");
    }
    if let (Some(origin), Some(host)) = (req.header("origin"), req.header("host")) {
        let o = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or("");
        if o != host {
            return Err("posted from another origin");
        }
    }
    let expected = server.csrf_token(uid);
    let given = req
        .form()
        .into_iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v)
        .unwrap_or_default();
    let same = given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err("the CSRF token is missing or wrong (reload the page)")
    }
}

/// A connection from someone with no release identity, recorded as the
/// CLI records a caller it cannot establish.
fn refuse_unknown(server: &Server, uid: u32, e: &Error) {
    if let Ok(mut audit) = Audit::open(&server.root, &server.config) {
        let mut entry = crate::dispatch::refusal(&format!("uid {uid}"), None, e);
        if let Value::Object(m) = &mut entry.detail {
            m.insert("via".into(), Value::from("web"));
        }
        let _ = audit.append(&[entry]);
    }
}

/// Run `f` in a session for `caller`, as one CLI run: the store and the
/// audit log opened afresh, the output captured, a refusal audited.
pub(crate) fn session<T>(
    server: &Server,
    caller: &Caller,
    request: Option<&str>,
    f: impl FnOnce(&mut Ctx<'_>) -> Result<T>,
) -> (Result<T>, Vec<Value>) {
    with_ctx(server, caller, |ctx| {
        let result = f(ctx);
        if let Err(e) = &result {
            crate::dispatch::audit_refusal(ctx, request, e);
        }
        result
    })
}

/// Run `f` with the session of one CLI run (no refusal audited here).
pub(crate) fn with_ctx<T>(
    server: &Server,
    caller: &Caller,
    f: impl FnOnce(&mut Ctx<'_>) -> Result<T>,
) -> (Result<T>, Vec<Value>) {
    let store = match Store::open(&server.root, &server.config, server.lock_timeout) {
        Ok(s) => s,
        Err(e) => return (Err(e), Vec::new()),
    };
    let audit = match Audit::open(&server.root, &server.config) {
        Ok(a) => a,
        Err(e) => return (Err(e), Vec::new()),
    };
    let (mut out, captured) = Output::capture("bs-release");
    let mut ctx = Ctx {
        root: server.root.clone(),
        config: server.config.clone(),
        store,
        audit,
        caller: caller.clone(),
        out: &mut out,
    };
    let result = f(&mut ctx);
    (result, captured.records())
}

/// The page for a refused or failed action: the CLI's message, with the
/// status its kind maps to.
pub(crate) fn error_page(caller: &Caller, e: &Error) -> Response {
    use bs_core::cli::Report;
    let status = match e.kind() {
        "not_permitted" | "identity" => 403,
        "wrong_state" => 409,
        "not_found" => 404,
        "usage" | "not_releasable" | "unsafe_path" => 400,
        _ => 500,
    };
    let body = format!(
        "<p class=\"err\" data-kind=\"{}\">{}</p>",
        html::esc(e.kind()),
        html::esc(&e.to_string())
    );
    Response::html(status, html::page("Refused", &caller.user, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_localhost_names_are_answered() {
        for ok in ["localhost", "localhost:8000", "127.0.0.1:80", "[::1]:8000"] {
            assert!(local_host(Some(ok)), "{ok}");
        }
        for bad in ["evil.example", "localhost.evil.example:8000", "", "[::2]"] {
            assert!(!local_host(Some(bad)), "{bad}");
        }
        assert!(!local_host(None));
    }
}
