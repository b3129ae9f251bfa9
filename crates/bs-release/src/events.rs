//! Status changes posted to job-server's Airlock events endpoint
//! (`POST {server}/airlock/events/`, job-server airlock/views.py), as Airlock
//! does (notifications.py), when `[release] events` is on: job-server turns
//! them into GitHub issue updates, emails and Slack messages. Best effort,
//! as in Airlock: a failed post is reported as a record and in the audit
//! log, and never undoes or fails the change it announces.

use bs_core::http::Http;
use bs_core::secrets::Secrets;
use serde_json::{json, Value};

use crate::request::Request;
use crate::session::Ctx;

/// Airlock's NotificationEventType values for a move to `to` (`from` tells a
/// resubmission from a first submission).
pub fn event_type(from: &str, to: &str) -> Option<&'static str> {
    Some(match to {
        "submitted" if from == "returned" => "request_resubmitted",
        "submitted" => "request_submitted",
        "withdrawn" => "request_withdrawn",
        "partially_reviewed" => "request_partially_reviewed",
        "reviewed" => "request_reviewed",
        "approved" => "request_approved",
        "released" => "request_released",
        "rejected" => "request_rejected",
        "returned" => "request_returned",
        _ => return None,
    })
}

/// Post the event of `req` having moved from `from` to its state, if configured.
pub(crate) fn notify(ctx: &mut Ctx, req: &Request, from: &str) {
    let cfg = &ctx.config.release;
    if !cfg.events || cfg.server.is_empty() {
        return;
    }
    let Some(event) = event_type(from, req.state.as_str()) else {
        return;
    };
    let body = json!({
        "event_type": event,
        "workspace": req.workspace,
        "request": req.airlock_id.as_deref().unwrap_or(&req.id),
        "request_author": req.author_github.as_deref().unwrap_or(&req.author),
        "user": ctx.caller.github,
        "updates": null,
    });
    let result = post(ctx, &body);
    let (sent, error) = match &result {
        Ok(()) => (true, None),
        Err(e) => (false, Some(e.clone())),
    };
    ctx.out.emit(
        "event",
        &json!({"request": req.id, "event_type": event, "sent": sent, "error": error}),
    );
    if let Some(e) = error {
        let entry = ctx.entry(
            "event_failed",
            Some(&req.id),
            None,
            None,
            json!({"event_type": event, "error": e}),
        );
        let _ = ctx.log(&[entry]);
    }
}

fn post(ctx: &Ctx, body: &Value) -> Result<(), String> {
    let cfg = &ctx.config.release;
    let secrets = Secrets::load_file_owned(
        &ctx.root.join(&cfg.secrets_file),
        Some(ctx.config.service_account.uid),
    )
    .map_err(|e| e.to_string())?;
    let token = secrets
        .require("RELEASE_TOKEN")
        .map_err(|e| e.to_string())?;
    let mut settings = ctx.config.http.clone();
    settings.timeout_secs = settings.timeout_secs.min(30);
    let http = Http::new(&settings).map_err(|e| e.to_string())?;
    let url = format!("{}/airlock/events/", cfg.server.trim_end_matches('/'));
    let payload = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let headers = [
        ("Authorization", token.expose()),
        ("OS-User", ctx.caller.github.as_str()),
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
    ];
    match http.post(&url, &headers, &payload) {
        Ok(resp) if resp.status == 201 => Ok(()),
        Ok(resp) => Err(format!("{url}: HTTP {}", resp.status)),
        Err(e) => Err(format!("{url}: {e}")),
    }
}
