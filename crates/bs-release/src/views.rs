//! What people look at: `ls`, `show` (as the caller may see it) and
//! `audit` (verified, blinded for the independent phase).

use serde_json::{json, Map, Value};

use crate::audit::{self};
use crate::error::{Error, Result};
use crate::request::State;
use crate::session::{summary, Ctx};
use crate::timefmt;

impl Ctx<'_> {
    pub(crate) fn ls(&mut self, state: Option<&str>) -> Result<Map<String, Value>> {
        self.require_any_role()?;
        let wanted = match state {
            Some(s) => Some(State::parse(s).ok_or_else(|| {
                Error::Usage(format!(
                    "--state {s}: one of {}",
                    crate::request::ALL
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?),
            None => None,
        };
        let mut n = 0u64;
        for id in self.store.ids()? {
            let req = match self.store.load(&id) {
                Ok(r) => r,
                // A directory left by a `create` killed before its first write.
                Err(Error::NotFound { .. }) => continue,
                Err(e) => {
                    use bs_core::cli::Report;
                    self.out.error(e.kind(), &id, &e.to_string());
                    continue;
                }
            };
            if wanted.is_some_and(|w| w != req.state) || req.check_view(&self.caller).is_err() {
                continue;
            }
            n += 1;
            self.out.emit(
                "request",
                &json!({"id": req.id, "workspace": req.workspace, "author": req.author, "state": req.state,
                        "files": req.files.len(), "created_at": req.created_at, "updated_at": req.updated_at}),
            );
        }
        let e = self.entry(
            "view_list",
            None,
            None,
            None,
            json!({"state": state, "requests": n}),
        );
        self.log(&[e])?;
        Ok(summary(&[("requests", Value::from(n))]))
    }

    pub(crate) fn show(&mut self, id: &str) -> Result<Map<String, Value>> {
        let req = self.store.load(id)?;
        req.check_view(&self.caller)?;
        let view = crate::visibility::view(&req, &self.caller, self.config.release.reviews_needed);
        let mut body = serde_json::to_value(&view).map_err(|e| Error::Usage(e.to_string()))?;
        if let Some(files) = body.get_mut("files").and_then(Value::as_object_mut) {
            for (path, f) in files.iter_mut() {
                if let (Some(obj), Some(entry)) = (f.as_object_mut(), req.files.get(path)) {
                    let copy = self.store.blob_path(id, &entry.sha256);
                    obj.insert("copy".into(), Value::from(self.root.display_path(&copy)));
                }
            }
        }
        self.out.emit("request", &body);
        let e = self.entry("view", Some(id), None, None, json!({"state": req.state}));
        self.log(&[e])?;
        Ok(Map::new())
    }

    pub(crate) fn audit_log(&mut self, since: Option<&str>) -> Result<Map<String, Value>> {
        if !self.caller.checker {
            return Err(Error::Denied(format!(
                "{} is not an output checker: only output checkers read the audit log",
                self.caller.user
            )));
        }
        if let Some(s) = since {
            if !timefmt::valid_since(s) {
                return Err(Error::Usage(format!(
                    "--since {s}: give a UTC time like 2026-11-22 or 2026-11-22T06:30"
                )));
            }
        }
        let since = since.map(|s| s.trim_end_matches('Z').to_string());
        let mut n = 0u64;
        let (entries, breaks) = self.audit.verify()?;
        let blinded = self.blinded_requests()?;
        for e in entries {
            if since.as_deref().is_some_and(|s| e.time.as_str() < s) {
                continue;
            }
            if crate::visibility::hidden_entry(&e, &self.caller.user, &blinded) {
                continue;
            }
            n += 1;
            self.out.emit("audit", &e);
        }
        for b in &breaks {
            let target = if b.line == 0 {
                audit::AUDIT_FILE.to_string()
            } else {
                format!("{}:{}", audit::AUDIT_FILE, b.line)
            };
            self.out.error("audit_tampered", &target, &b.reason);
        }
        let e = self.entry(
            "view_audit",
            None,
            None,
            None,
            json!({"since": since, "entries": n}),
        );
        self.log(&[e])?;
        if !breaks.is_empty() {
            return Err(Error::AuditBroken(breaks.len()));
        }
        Ok(summary(&[("entries", Value::from(n))]))
    }

    /// Requests in their independent phase, with their turn: there, one
    /// checker's votes and notes are hidden from the other.
    pub(crate) fn blinded_requests(&self) -> Result<std::collections::BTreeMap<String, u32>> {
        let mut out = std::collections::BTreeMap::new();
        for id in self.store.ids()? {
            if let Ok(r) = self.store.load(&id) {
                if r.is_independent_phase() {
                    out.insert(r.id.clone(), r.turn);
                }
            }
        }
        Ok(out)
    }
}
