//! Publication to the release server:
//!
//! 1. `POST {server}/releases/workspace/{ws}` with `Authorization: <token>`,
//!    `OS-User: <checker>` and the list of files; the server answers 201 and a
//!    `Release-Id` header.
//! 2. For each file, `POST {server}/releases/release/{id}` with the raw bytes
//!    and `Content-Disposition: attachment; filename="<path>"`. An answer that
//!    the file is already uploaded counts as done.
//!
//! Timeouts, refused connections and 5xx answers are retried with a growing
//! pause. The release id and every finished upload are saved in the request
//! as they happen, so a publish that fails part-way resumes where it stopped.
//! Every copy is hashed again right before it is sent, and the job manifest
//! must still record that content: a file changed after approval is refused.

use std::time::Duration;

use bs_core::http::{Http, HttpError, Response};
use bs_core::secrets::Secrets;
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::hash;
use crate::request::Upload;
use crate::session::Ctx;
use crate::timefmt;

pub(crate) fn publish(ctx: &mut Ctx, id: &str) -> Result<Map<String, Value>> {
    let _lock = ctx.store.lock()?;
    let mut req = ctx.store.load(id)?;
    req.check_publish(&ctx.caller)?;
    let cfg = ctx.config.release.clone();
    if cfg.server.is_empty() {
        return Err(Error::Usage(
            "[release] server is not set: nowhere to publish to".into(),
        ));
    }
    let secrets = Secrets::load_file_owned(
        &ctx.root.join(&cfg.secrets_file),
        Some(ctx.config.service_account.uid),
    )?;
    let token = secrets.require("RELEASE_TOKEN")?.clone();
    let (log, breaks) = ctx.audit.verify()?;
    crate::approval::confirm(&req, &log, &breaks, cfg.reviews_needed)?;
    let ws_dir = ctx.store.workspace(&req.workspace)?;
    let manifest = ctx.store.manifest(&ws_dir)?;
    // Everything is checked before anything is sent: the file-type rule
    // again (the config may have changed since the files were added).
    for (path, f) in req.outputs() {
        if let Some(why) = crate::manifest::type_refusal(path, &cfg.allowed_extensions) {
            return Err(Error::NotReleasable {
                path: path.clone(),
                message: format!("{why}: not released"),
            });
        }
        ctx.verify_copy(&req, path, f)?;
        ctx.verify_manifest(&req, &manifest, path, f)?;
    }
    let mut settings = ctx.config.http.clone();
    settings.timeout_secs = cfg.upload_timeout_secs;
    let http = Http::new(&settings).map_err(|e| Error::Publish(e.to_string()))?;
    let server = cfg.server.trim_end_matches('/').to_string();
    let user = ctx.caller.user.clone();
    let client = Client {
        http,
        token: token.expose().to_string(),
        // job-server looks the checker up by GitHub username, case-sensitively.
        user: ctx.caller.github.clone(),
        attempts: cfg.upload_attempts,
        delay: Duration::from_millis(cfg.retry_delay_ms),
    };

    // The release's id is fixed before the first create is sent, so a create
    // retried after a timeout or a crash names the same release.
    let airlock_id = match req.airlock_id.clone() {
        Some(a) => a,
        None => {
            let a = crate::ulid::new();
            let e = ctx.entry(
                "assign_release_id",
                Some(id),
                None,
                None,
                json!({"airlock_id": a}),
            );
            ctx.log(&[e])?;
            req.airlock_id = Some(a.clone());
            ctx.store.save(&req)?;
            a
        }
    };
    let release_id = match req.release.release_id.clone() {
        Some(rid) => rid,
        None => {
            let body = release_body(&req, &airlock_id);
            let url = format!("{server}/releases/workspace/{}", req.workspace);
            let payload = serde_json::to_vec(&body).map_err(|e| Error::Publish(e.to_string()))?;
            let e = ctx.entry(
                "release_create",
                Some(id),
                None,
                None,
                json!({"airlock_id": airlock_id, "server": server, "files": req.outputs().count()}),
            );
            ctx.log(&[e])?;
            let resp = client.post(&url, &[("Content-Type", "application/json")], &payload)?;
            let rid = match (resp.status, resp.header("Release-Id")) {
                (201, Some(rid)) if valid_release_id(rid) => rid.to_string(),
                (201, _) => {
                    return Err(Error::Publish(format!(
                        "{url}: 201 without a usable Release-Id header"
                    )))
                }
                (status, _) => {
                    return Err(Error::Publish(format!(
                        "{url}: creating the release failed: HTTP {status}: {}",
                        snippet(&resp)
                    )))
                }
            };
            req.release.release_id = Some(rid.clone());
            req.release.published_by = Some(user.clone());
            req.release.started_at = Some(timefmt::now());
            let e = ctx.entry(
                "release_created",
                Some(id),
                None,
                None,
                json!({"release_id": rid, "server": server}),
            );
            ctx.log(&[e])?;
            ctx.store.save(&req)?;
            rid
        }
    };

    let url = format!("{server}/releases/release/{release_id}");
    // Supporting files were reviewed as context: they never leave.
    let paths: Vec<String> = req.outputs().map(|(p, _)| p.clone()).collect();
    let mut failed = 0usize;
    let mut uploaded = 0usize;
    for path in paths {
        let Some(f) = req.files.get(&path).cloned() else {
            continue;
        };
        if f.upload.is_some() {
            continue;
        }
        // Right before sending: the bytes we send are the bytes that were approved.
        let bytes = ctx.verify_copy(&req, &path, &f)?;
        if bytes.len() as u64 > cfg.max_file_bytes || hash::sha256_bytes(&bytes) != f.sha256 {
            return Err(Error::Changed {
                path,
                expected: f.sha256,
                actual: "changed while reading".into(),
            });
        }
        let disposition = format!("attachment; filename=\"{path}\"");
        let result = client.post(
            &url,
            &[
                ("Content-Type", "application/octet-stream"),
                ("Content-Disposition", &disposition),
            ],
            &bytes,
        );
        let status = match result {
            Ok(resp) if resp.is_success() => Ok("uploaded"),
            Ok(resp) if resp.status == 400 && says_already_uploaded(&resp, &path) => {
                Ok("already_uploaded")
            }
            Ok(resp) => Err(format!("HTTP {}: {}", resp.status, snippet(&resp))),
            Err(e) => Err(e.to_string()),
        };
        match status {
            Ok(status) => {
                let now = timefmt::now();
                if let Some(entry) = req.files.get_mut(&path) {
                    entry.upload = Some(Upload {
                        status: status.into(),
                        at: now.clone(),
                    });
                }
                req.updated_at = now;
                let e = ctx.entry(
                    "upload",
                    Some(id),
                    Some(&path),
                    Some(&f.sha256),
                    json!({"release_id": release_id, "status": status, "size": f.size}),
                );
                ctx.log(&[e])?;
                ctx.store.save(&req)?;
                uploaded += 1;
                ctx.out.item(
                    "upload",
                    true,
                    &json!({"action": "upload", "target": format!("{id}:{path}"), "request": id, "path": path,
                            "sha256": f.sha256, "status": status, "release_id": release_id}),
                );
            }
            Err(message) => {
                failed += 1;
                let e = ctx.entry(
                    "upload_failed",
                    Some(id),
                    Some(&path),
                    Some(&f.sha256),
                    json!({"release_id": release_id, "error": message}),
                );
                ctx.log(&[e])?;
                ctx.out.error(
                    "upload_failed",
                    &path,
                    &format!("{url}: {message} (run publish again to resume)"),
                );
            }
        }
    }
    if failed == 0 && req.outputs().all(|(_, f)| f.upload.is_some()) {
        let from = req.state;
        req.mark_released(&ctx.caller, &timefmt::now());
        let e = ctx.entry(
            "publish",
            Some(id),
            None,
            None,
            json!({"from": from, "to": req.state, "release_id": release_id}),
        );
        ctx.log(&[e])?;
        ctx.store.save(&req)?;
        ctx.out.item(
            "request",
            true,
            &json!({"action": "publish", "target": id, "id": id, "from": from, "to": req.state, "release_id": release_id}),
        );
        crate::events::notify(ctx, &req, from.as_str());
    }
    let mut extra = Map::new();
    extra.insert("uploaded".into(), Value::from(uploaded));
    extra.insert("release_id".into(), Value::from(release_id));
    Ok(extra)
}

/// job-server's answer for a file it has (jobserver/releases.py,
/// ReleaseFileAlreadyExists, as a 400 `{"detail": ...}`): the phrase Airlock
/// looks for, for this file.
fn says_already_uploaded(resp: &Response, path: &str) -> bool {
    let detail = serde_json::from_slice::<Value>(resp.body.as_slice())
        .ok()
        .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default();
    detail.contains(&format!(
        "This version of '{path}' has already been uploaded"
    ))
}

/// The release-creation body as Airlock sends it (old_api.create_filelist)
/// and job-server's ReleaseSerializer requires it: per file `name`, `url`,
/// `size`, `sha256`, `date`, `metadata` (`tool`, `airlock_id`) and `review`
/// (null: the reviews stay on the backend), and at the top `metadata` and
/// `review`.
fn release_body(req: &crate::request::Request, airlock_id: &str) -> Value {
    let metadata = json!({"tool": TOOL, "airlock_id": airlock_id});
    let files: Vec<Value> = req
        .outputs()
        .map(|(path, f)| {
            json!({
                "name": path,
                "url": path,
                "size": f.size,
                "sha256": f.sha256,
                "date": f.manifest.date().unwrap_or_else(|| f.added_at.clone()),
                "metadata": metadata,
                "review": null,
            })
        })
        .collect();
    json!({"files": files, "metadata": metadata, "review": null})
}

/// `metadata.tool` of what we send.
const TOOL: &str = "bs-release";

/// A release id goes into a URL: keep it to a safe alphabet.
fn valid_release_id(rid: &str) -> bool {
    !rid.is_empty()
        && rid.len() <= 128
        && rid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
}

/// The start of an answer body, printable, for an error message.
fn snippet(resp: &Response) -> String {
    let text: String = resp
        .text()
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    if text.is_empty() {
        "(empty body)".into()
    } else {
        text
    }
}

struct Client {
    http: Http,
    token: String,
    user: String,
    attempts: u32,
    delay: Duration,
}

impl Client {
    /// POST with the credentials; a timeout, a refused connection or a 5xx
    /// is tried again after a pause that doubles each time.
    fn post(&self, url: &str, extra: &[(&str, &str)], body: &[u8]) -> Result<Response> {
        let mut headers: Vec<(&str, &str)> =
            vec![("Authorization", &self.token), ("OS-User", &self.user)];
        headers.extend_from_slice(extra);
        let mut delay = self.delay;
        let mut last = String::new();
        for attempt in 1..=self.attempts {
            match self.http.post(url, &headers, body) {
                Ok(resp) if resp.status >= 500 => {
                    last = format!("HTTP {}: {}", resp.status, snippet(&resp))
                }
                Ok(resp) => return Ok(resp),
                Err(e @ (HttpError::Timeout(_) | HttpError::Connect(_))) => last = e.to_string(),
                Err(e) => return Err(Error::Publish(format!("{url}: {e}"))),
            }
            if attempt < self.attempts {
                std::thread::sleep(delay);
                delay *= 2;
            }
        }
        Err(Error::Publish(format!(
            "{url}: {last} (after {} attempts)",
            self.attempts
        )))
    }
}
