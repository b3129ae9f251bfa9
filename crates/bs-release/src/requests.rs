//! Requests as the author shapes them and as they change state: create,
//! add (copy, hash and check at once), remove, groups, comments, and the
//! state changes (submit, submit a review, withdraw, return, approve, reject).

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use crate::checks::{self, Finding};
use crate::content::Content;
use crate::error::{Error, Result};
use crate::hash;
use crate::manifest::Manifest;
use crate::request::{FileEntry, Request, State};
use crate::session::{summary, Ctx};
use crate::store::{self, Store};
use crate::timefmt;

impl Ctx<'_> {
    pub(crate) fn create(&mut self, ws: &str) -> Result<Map<String, Value>> {
        self.require_author_role()?;
        store::valid_workspace(ws)?;
        let ws_dir = self.store.workspace(ws)?;
        self.store.manifest(&ws_dir)?;
        let _lock = self.store.lock()?;
        // Airlock's rule: one current request per author and workspace.
        for id in self.store.ids()? {
            if let Ok(r) = self.store.load(&id) {
                if r.workspace == ws
                    && r.author == self.caller.user
                    && crate::request::ACTIVE.contains(&r.state)
                {
                    return Err(Error::Denied(format!(
                        "{} already has request {} ({}) for workspace {ws}: add to it, or withdraw it first",
                        self.caller.user,
                        r.id,
                        r.state.as_str()
                    )));
                }
            }
        }
        let mut req = self
            .store
            .allocate(ws, &self.caller.user, &timefmt::now())?;
        req.author_github = Some(self.caller.github.clone());
        let e = self.entry(
            "create",
            Some(&req.id),
            None,
            None,
            json!({"workspace": ws, "to": "pending"}),
        );
        self.log(&[e])?;
        self.store.save(&req)?;
        self.out.item(
            "request",
            true,
            &json!({"action": "create", "target": req.id, "id": req.id, "workspace": ws, "state": req.state}),
        );
        Ok(summary(&[("id", Value::from(req.id))]))
    }

    pub(crate) fn add(
        &mut self,
        id: &str,
        paths: &[String],
        group: Option<&str>,
        supporting: bool,
    ) -> Result<Map<String, Value>> {
        if let Some(g) = group {
            crate::store::valid_group(g)?;
        }
        let _lock = self.store.lock()?;
        let mut req = self.store.load(id)?;
        req.check_edit(&self.caller, "add files to")?;
        let ws_dir = self.store.workspace(&req.workspace)?;
        let manifest = self.store.manifest(&ws_dir)?;
        let files_dir = self.store.files_dir(id)?;
        // Temp files of a run that was killed: ours, since we hold the lock.
        for (name, _) in files_dir.entries()? {
            if bs_core::safefs::is_temp_name(&name) {
                files_dir.remove_if_exists(&name)?;
            }
        }
        let unique: Vec<(usize, &String)> = {
            let mut seen = BTreeSet::new();
            paths
                .iter()
                .filter(|p| seen.insert(p.as_str()))
                .enumerate()
                .collect()
        };
        let released = self.store.released(&req.workspace)?;
        let pool = self.copy_threads();
        let target = AddTarget {
            store: &self.store,
            ws_dir: &ws_dir,
            files_dir: &files_dir,
            manifest: &manifest,
            cfg: &self.config.release,
            released: &released,
        };
        let results = hash::par_map(pool.as_ref(), &unique, |(i, path)| {
            prepare(&target, path, *i)
        });
        let written: Vec<String> = {
            let mut v: Vec<String> = results
                .iter()
                .filter_map(|r| r.as_ref().ok().map(|p| p.sha256.clone()))
                .collect();
            v.sort();
            v.dedup();
            v
        };
        self.store.sync_blobs(&files_dir, &written, pool.as_ref())?;
        let now = timefmt::now();
        let mut entries = Vec::new();
        let mut added = Vec::new();
        for ((_, path), result) in unique.iter().zip(results) {
            match result {
                Ok(p) => {
                    let replaced = req.files.get(path.as_str()).map(|f| f.sha256 != p.sha256);
                    let old_group = req.files.get(path.as_str()).map(|f| f.group.clone());
                    let mut entry = FileEntry {
                        group: group
                            .map(str::to_string)
                            .or(old_group)
                            .unwrap_or_else(|| crate::request::DEFAULT_GROUP.to_string()),
                        filetype: if supporting {
                            crate::request::FileType::Supporting
                        } else {
                            crate::request::FileType::Output
                        },
                        sha256: p.sha256.clone(),
                        size: p.size,
                        added_by: self.caller.user.clone(),
                        added_at: now.clone(),
                        manifest: p.meta,
                        findings: p.findings,
                        reviews: Vec::new(),
                        upload: None,
                    };
                    if let Some(old) = req.files.get(path.as_str()) {
                        // Votes stay for the record; they count only for the content they were for.
                        entry.reviews = old.reviews.clone();
                    }
                    entries.push(self.entry(
                        "add",
                        Some(id),
                        Some(path),
                        Some(&p.sha256),
                        json!({"size": p.size, "findings": entry.findings.len(), "replaced": replaced.unwrap_or(false),
                               "group": entry.group, "filetype": entry.filetype}),
                    ));
                    added.push(json!({
                        "action": "add", "target": format!("{id}:{path}"), "request": id, "path": path,
                        "sha256": p.sha256, "size": p.size, "findings": entry.findings,
                    }));
                    req.files.insert(path.to_string(), entry);
                }
                Err(e) => {
                    use bs_core::cli::Report;
                    entries.push(self.entry(
                        "add_refused",
                        Some(id),
                        Some(path),
                        None,
                        json!({"error": e.to_string()}),
                    ));
                    self.out.error(e.kind(), path, &e.to_string());
                }
            }
        }
        // The entries first: a change is saved only once its record is on disk.
        self.log(&entries)?;
        if !added.is_empty() {
            req.updated_at = now;
            self.store.save(&req)?;
        }
        for a in &added {
            self.out.item("file", true, a);
        }
        Ok(summary(&[("added", Value::from(added.len()))]))
    }

    pub(crate) fn remove(&mut self, id: &str, paths: &[String]) -> Result<Map<String, Value>> {
        let _lock = self.store.lock()?;
        let mut req = self.store.load(id)?;
        req.check_edit(&self.caller, "remove files from")?;
        for p in paths {
            if !req.files.contains_key(p) {
                return Err(Error::NotFound {
                    what: format!("{p} in request {id}"),
                });
            }
        }
        let mut entries = Vec::new();
        for p in paths {
            if let Some(f) = req.files.remove(p) {
                entries.push(self.entry("remove", Some(id), Some(p), Some(&f.sha256), json!({})));
            }
        }
        req.updated_at = timefmt::now();
        self.log(&entries)?;
        self.store.save(&req)?;
        for p in paths {
            self.out.item("file", true, &json!({"action": "remove", "target": format!("{id}:{p}"), "request": id, "path": p}));
        }
        Ok(Map::new())
    }

    /// The author describes a group's context and disclosure controls.
    pub(crate) fn group(
        &mut self,
        id: &str,
        name: &str,
        context: Option<&str>,
        controls: Option<&str>,
    ) -> Result<Map<String, Value>> {
        let _lock = self.store.lock()?;
        let mut req = self.store.load(id)?;
        req.set_group(&self.caller, name, context, controls, &timefmt::now())?;
        let g = req.groups.get(name).cloned().unwrap_or_default();
        let e = self.entry(
            "group_edit",
            Some(id),
            None,
            None,
            json!({"group": name, "context": g.context, "controls": g.controls}),
        );
        self.log(&[e])?;
        self.store.save(&req)?;
        self.out.item(
            "group",
            true,
            &json!({"action": "group_edit", "target": format!("{id}:{name}"), "request": id,
                    "group": name, "context": g.context, "controls": g.controls}),
        );
        Ok(Map::new())
    }

    /// A comment on a group (its visibility decided here: the author's are
    /// public, a checker's are for checkers unless `public`).
    pub(crate) fn comment(
        &mut self,
        id: &str,
        group: &str,
        text: &str,
        public: bool,
    ) -> Result<Map<String, Value>> {
        let _lock = self.store.lock()?;
        let mut req = self.store.load(id)?;
        let visibility = if public || self.caller.user == req.author {
            crate::request::Visibility::Public
        } else {
            crate::request::Visibility::Private
        };
        req.comment(&self.caller, group, text, visibility, &timefmt::now())?;
        let e = self.entry(
            "comment",
            Some(id),
            None,
            None,
            json!({"group": group, "comment": text.trim(), "visibility": visibility, "turn": req.turn}),
        );
        self.log(&[e])?;
        self.store.save(&req)?;
        self.out.item(
            "comment",
            true,
            &json!({"action": "comment", "target": format!("{id}:{group}"), "request": id,
                    "group": group, "visibility": visibility, "turn": req.turn}),
        );
        Ok(Map::new())
    }

    /// A state change of the whole request.
    pub(crate) fn change(
        &mut self,
        id: &str,
        action: &str,
        comment: Option<&str>,
    ) -> Result<Map<String, Value>> {
        let _lock = self.store.lock()?;
        let mut req = self.store.load(id)?;
        let now = timefmt::now();
        let needed = self.config.release.reviews_needed;
        let turn = req.turn;
        let early = action == "return" && req.is_early_return();
        // An approved request whose job ran again can go back to its author.
        let files_changed =
            action == "return" && req.state == State::Approved && self.stale_file(&req).is_some();
        let from = match action {
            "submit" => req.submit(&self.caller, needed, &now)?,
            "submit_review" => req.submit_review(&self.caller, &now)?,
            "withdraw" => req.withdraw(&self.caller, &now)?,
            "return" => req.return_to_author(&self.caller, comment, files_changed, &now)?,
            "approve" => req.approve(&self.caller, needed, &now)?,
            _ => req.reject(&self.caller, comment, &now)?,
        };
        if action == "submit" {
            self.verify_copies(&req)?;
        }
        let mut entries = Vec::new();
        if early {
            entries.push(self.entry(
                "early_return",
                Some(id),
                None,
                None,
                json!({"turn": turn, "submitted_reviews": from_reviews(&req, turn)}),
            ));
        }
        entries.push(self.entry(
            action,
            Some(id),
            None,
            None,
            json!({"from": from, "to": req.state, "turn": turn, "files_changed": files_changed}),
        ));
        if let Some(c) = comment.map(str::trim).filter(|c| !c.is_empty()) {
            entries.push(self.entry(
                "comment",
                Some(id),
                None,
                None,
                json!({"comment": c, "on": action}),
            ));
        }
        self.log(&entries)?;
        self.store.save(&req)?;
        self.out.item(
            "request",
            true,
            &json!({"action": action, "target": id, "id": id, "from": from, "to": req.state}),
        );
        crate::events::notify(self, &req, from.as_str());
        Ok(Map::new())
    }
}

pub(crate) struct Prepared {
    pub sha256: String,
    pub size: u64,
    pub meta: crate::manifest::OutputMeta,
    pub findings: Vec<Finding>,
}

/// Where `request add` reads outputs from and puts their copies, and the rules it applies.
struct AddTarget<'a> {
    store: &'a Store,
    ws_dir: &'a bs_core::safefs::DirFd,
    files_dir: &'a bs_core::safefs::DirFd,
    manifest: &'a Manifest,
    cfg: &'a bs_core::config::ReleaseConfig,
    /// (path, sha256) of the workspace's released files.
    released: &'a BTreeSet<(String, String)>,
}

/// Read one output, check it against the manifest, run the disclosure
/// checks and put its copy in the request's store.
fn prepare(t: &AddTarget, path: &str, index: usize) -> Result<Prepared> {
    let AddTarget {
        store,
        ws_dir,
        files_dir,
        manifest,
        cfg,
        released,
    } = *t;
    store::valid_output_path(path)?;
    let refuse = |message: String| Error::NotReleasable {
        path: path.into(),
        message,
    };
    if let Some(why) = crate::manifest::type_refusal(path, &cfg.allowed_extensions) {
        return Err(refuse(why));
    }
    if let Some(why) = crate::manifest::add_refusal(manifest, path) {
        return Err(refuse(why));
    }
    let meta = manifest
        .outputs
        .get(path)
        .ok_or_else(|| refuse("not in the job manifest".into()))?;
    if released.contains(&(path.to_string(), meta.sha256().to_string())) {
        return Err(refuse(
            "already released with this content: released files cannot be requested again as outputs"
                .into(),
        ));
    }
    let (file, size) = store::open_file_beneath(ws_dir, path)?;
    let content = Content::read(file, size, cfg.max_file_bytes, path)?;
    // The copy waits for the disk while the hash and the checks use the CPU,
    // so the three run at once. The copy is written before its hash is
    // known; it keeps a temp name until the hash matches the manifest.
    let (copy, (sha256, findings)) = rayon::join(
        || store.write_copy(files_dir, index, &content),
        || {
            rayon::join(
                || hash::sha256_bytes(content.bytes()),
                || checks::check(path, size, Some(content.bytes()), cfg),
            )
        },
    );
    let copy = copy?;
    if sha256 != meta.sha256() {
        store.discard_copy(files_dir, copy)?;
        return Err(Error::Changed {
            path: format!("{path} (differs from the job manifest)"),
            expected: meta.sha256().to_string(),
            actual: sha256,
        });
    }
    store.keep_copy(files_dir, copy, &sha256)?;
    Ok(Prepared {
        sha256,
        size,
        meta: meta.clone(),
        findings,
    })
}

/// Who had submitted a review in `turn` (for the record of an early return).
fn from_reviews(req: &Request, _turn: u32) -> Vec<String> {
    req.history
        .iter()
        .rev()
        .take_while(|e| e.action != "submit")
        .filter(|e| e.action == "review")
        .map(|e| e.user.clone())
        .collect()
}
