//! The commands people run: each establishes the caller, checks roles and
//! state, does its work, writes the audit log and prints records.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use bs_core::accounts::AccountDb;
use bs_core::config::Config;
use bs_core::{Output, Root};
use serde_json::{json, Map, Value};

use crate::audit::{self, Audit, Entry};
use crate::checks::{self, Finding};
use crate::cli::{Cli, Command, RequestCommand};
use crate::content::Content;
use crate::error::{Error, Result};
use crate::hash;
use crate::identity::{self, Caller, SudoEnv};
use crate::manifest::Manifest;
use crate::request::{FileEntry, Request, State, Vote};
use crate::store::{self, Store};
use crate::timefmt;

pub(crate) struct Ctx<'a> {
    pub root: Root,
    pub config: Config,
    pub store: Store,
    pub audit: Audit,
    pub caller: Caller,
    pub out: &'a mut Output,
}

pub(crate) fn run(
    cli: Cli,
    root: Root,
    config: Config,
    ruid: u32,
    out: &mut Output,
) -> Result<Map<String, Value>> {
    let store = Store::open(&root, &config, Duration::from_secs(cli.global.lock_timeout))?;
    let mut audit = Audit::open(&root, &config)?;
    let sudo = SudoEnv::from_env();
    let system_user = if ruid == 0 {
        "root".to_string()
    } else {
        config.service_account.name.clone()
    };
    let resolved = match (&cli.command, &sudo.user, &cli.as_user) {
        // The level-4 push is a system job: root or the service account's own cron.
        (Command::SyncLevel4 { .. }, None, None) => Ok(Caller {
            user: system_user.clone(),
            github: system_user,
            groups: Vec::new(),
            via: "system",
            author: false,
            checker: true,
        }),
        _ => AccountDb::load_public(&root)
            .map_err(Error::from)
            .and_then(|db| {
                identity::resolve(&db, &config.release, ruid, cli.as_user.as_deref(), &sudo)
            }),
    };
    let caller = match resolved {
        Ok(c) => c,
        Err(e) => {
            // Who it claimed to be, for the record: a forged SUDO_USER is worth knowing about.
            let claimed = cli
                .as_user
                .clone()
                .or_else(|| sudo.user.clone())
                .unwrap_or_else(|| format!("uid {ruid}"));
            let entry = refusal(&claimed, None, &e);
            let _ = audit.append(&[entry]);
            return Err(e);
        }
    };
    let request_id = match &cli.command {
        Command::Review { id, .. } | Command::Publish { id } | Command::Show { id } => {
            Some(id.clone())
        }
        Command::Request(rc) => match rc {
            RequestCommand::Create { .. } => None,
            RequestCommand::Add { id, .. }
            | RequestCommand::Group { id, .. }
            | RequestCommand::Comment { id, .. }
            | RequestCommand::Remove { id, .. }
            | RequestCommand::Submit { id }
            | RequestCommand::SubmitReview { id }
            | RequestCommand::Withdraw { id }
            | RequestCommand::Return { id, .. }
            | RequestCommand::Approve { id }
            | RequestCommand::Reject { id, .. } => Some(id.clone()),
        },
        _ => None,
    };
    let mut ctx = Ctx {
        root,
        config,
        store,
        audit,
        caller,
        out,
    };
    let result = ctx.dispatch(cli.command);
    if let Err(e) = &result {
        // Every refusal is part of the record (issue 12): a self-review
        // attempt or an unsafe path is worth knowing about. A failure to
        // write this entry must not hide the refusal itself.
        let mut entry = refusal(&ctx.caller.user, request_id.as_deref(), e);
        if ctx.caller.via != "sudo" {
            if let Value::Object(m) = &mut entry.detail {
                m.insert("via".into(), Value::from(ctx.caller.via));
            }
        }
        let _ = ctx.audit.append(&[entry]);
    }
    result
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

/// The audit entry of a refused command.
fn refusal(user: &str, request: Option<&str>, e: &Error) -> Entry {
    use bs_core::cli::Report;
    Entry {
        time: timefmt::now(),
        user: user.to_string(),
        action: "refused".into(),
        request: request.map(str::to_string),
        file: None,
        sha256: None,
        detail: json!({"kind": e.kind(), "error": e.to_string()}),
        seq: None,
        prev: None,
    }
}

fn summary(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

impl Ctx<'_> {
    fn dispatch(&mut self, command: Command) -> Result<Map<String, Value>> {
        match command {
            Command::Files { workspace } => self.files(&workspace),
            Command::Request(rc) => match rc {
                RequestCommand::Create { workspace } => self.create(&workspace),
                RequestCommand::Add {
                    id,
                    paths,
                    group,
                    supporting,
                } => self.add(&id, &paths, group.as_deref(), supporting),
                RequestCommand::Group {
                    id,
                    name,
                    context,
                    controls,
                } => self.group(&id, &name, context.as_deref(), controls.as_deref()),
                RequestCommand::Comment {
                    id,
                    group,
                    text,
                    public,
                } => self.comment(&id, &group, &text, public),
                RequestCommand::Remove { id, paths } => self.remove(&id, &paths),
                RequestCommand::Submit { id } => self.change(&id, "submit", None),
                RequestCommand::SubmitReview { id } => self.change(&id, "submit_review", None),
                RequestCommand::Withdraw { id } => self.change(&id, "withdraw", None),
                RequestCommand::Return { id, comment } => {
                    self.change(&id, "return", comment.as_deref())
                }
                RequestCommand::Approve { id } => self.change(&id, "approve", None),
                RequestCommand::Reject { id, comment } => {
                    self.change(&id, "reject", comment.as_deref())
                }
            },
            Command::Review {
                id,
                path,
                approve,
                request_changes: _,
                reset,
                comment,
            } => {
                let vote = if reset {
                    None
                } else if approve {
                    Some(Vote::Approved)
                } else {
                    Some(Vote::ChangesRequested)
                };
                self.review(&id, &path, vote, comment.as_deref())
            }
            Command::Publish { id } => crate::publish::publish(self, &id),
            Command::Ls { state } => self.ls(state.as_deref()),
            Command::Show { id } => self.show(&id),
            Command::Audit { since } => self.audit_log(since.as_deref()),
            Command::Disclosure { paths } => self.check(&paths),
            Command::SyncLevel4 { to, delete } => crate::sync::sync(self, &to, delete),
            Command::Plan | Command::Apply | Command::Check => {
                Err(Error::Usage("handled before".into()))
            }
        }
    }

    pub(crate) fn entry(
        &self,
        action: &str,
        request: Option<&str>,
        file: Option<&str>,
        sha256: Option<&str>,
        mut detail: Value,
    ) -> Entry {
        if self.caller.via != "sudo" {
            if let Value::Object(m) = &mut detail {
                m.insert("via".into(), Value::from(self.caller.via));
            }
        }
        Entry {
            time: timefmt::now(),
            user: self.caller.user.clone(),
            action: action.into(),
            request: request.map(str::to_string),
            file: file.map(str::to_string),
            sha256: sha256.map(str::to_string),
            detail,
            seq: None,
            prev: None,
        }
    }

    pub(crate) fn log(&mut self, entries: &[Entry]) -> Result<()> {
        self.audit.append(entries)
    }

    fn require_author_role(&self) -> Result<()> {
        if self.caller.author {
            Ok(())
        } else {
            Err(Error::Denied(format!(
                "{} is in none of the author groups ({}): only authors create requests",
                self.caller.user,
                self.config.release.author_groups.join(", ")
            )))
        }
    }

    fn require_any_role(&self) -> Result<()> {
        if self.caller.author || self.caller.checker {
            Ok(())
        } else {
            Err(Error::Denied(format!(
                "{} has no release role",
                self.caller.user
            )))
        }
    }

    fn threads(&self) -> Option<rayon::ThreadPool> {
        hash::pool(self.config.release.hash_threads)
    }

    /// The pool of `request add` unless configured: 16 threads, or two a
    /// CPU where that is more. The copies wait for the disk, so the count is
    /// about the disk's queue more than the CPUs (measured on a 2-CPU VM:
    /// 2 threads 1.0 s for 2,000 files of 256 KiB, 8 threads 0.7 s, 16
    /// threads 0.55 s, 32 no better; BENCHMARKS.md). Each thread holds one
    /// output in memory, at most `max_file_bytes` (16 MiB): 256 MiB at most
    /// with 16 threads.
    fn copy_threads(&self) -> Option<rayon::ThreadPool> {
        let n = match self.config.release.copy_threads {
            0 => 16.max(2 * std::thread::available_parallelism().map_or(1, usize::from)),
            n => n,
        };
        hash::pool(n)
    }

    // ------------------------------------------------------------------ files

    fn files(&mut self, ws: &str) -> Result<Map<String, Value>> {
        self.require_any_role()?;
        let ws_dir = self.store.workspace(ws)?;
        let manifest = self.store.manifest(&ws_dir)?;
        let outputs: Vec<(&String, &crate::manifest::OutputMeta)> =
            manifest.outputs.iter().collect();
        let pool = self.threads();
        let max = self.config.release.max_file_bytes;
        let allowed = self.config.release.allowed_extensions.clone();
        let released = self.store.released(ws)?;
        let hashed =
            hash::par_map(pool.as_ref(), &outputs, |(path, meta)| {
                if meta.not_releasable().is_some() {
                    return None;
                }
                Some(store::open_file_beneath(&ws_dir, path).and_then(|(f, _)| {
                    hash::sha256_reader(f).map_err(|e| Error::io(path.as_str(), e))
                }))
            });
        let mut listed = 0u64;
        for ((path, meta), result) in outputs.iter().zip(hashed) {
            let Some(result) = result else { continue };
            match result {
                Ok((sha, size)) => {
                    let mut reasons: Vec<String> = crate::manifest::type_refusal(path, &allowed)
                        .into_iter()
                        .collect();
                    if released.contains(&(path.to_string(), sha.clone())) {
                        reasons.push("already released with this content".into());
                    }
                    if sha != meta.sha256() {
                        reasons.push("content differs from the job manifest".to_string());
                    }
                    if size > max {
                        reasons.push(format!("over the {max} byte limit"));
                    }
                    listed += 1;
                    self.out.emit(
                        "file",
                        &json!({
                            "workspace": ws, "path": path, "size": size, "sha256": sha,
                            "matches_manifest": sha == meta.sha256(),
                            "releasable": reasons.is_empty(),
                            "reasons": reasons,
                            "manifest": meta,
                        }),
                    );
                }
                Err(Error::NotReleasable { message, .. }) => {
                    listed += 1;
                    self.out.emit(
                        "file",
                        &json!({
                            "workspace": ws, "path": path, "releasable": false,
                            "reasons": [message], "manifest": meta,
                        }),
                    );
                }
                Err(Error::NotFound { .. }) => {
                    // In the manifest, not on disk: say so rather than hide it.
                    listed += 1;
                    self.out.emit(
                        "file",
                        &json!({
                            "workspace": ws, "path": path, "releasable": false,
                            "reasons": ["missing from the workspace"], "manifest": meta,
                        }),
                    );
                }
                Err(e) => {
                    use bs_core::cli::Report;
                    self.out.error(e.kind(), path, &e.to_string());
                }
            }
        }
        let e = self.entry(
            "view_files",
            None,
            None,
            None,
            json!({"workspace": ws, "files": listed}),
        );
        self.log(&[e])?;
        Ok(summary(&[("files", Value::from(listed))]))
    }

    // --------------------------------------------------------------- requests

    fn create(&mut self, ws: &str) -> Result<Map<String, Value>> {
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

    fn add(
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

    fn remove(&mut self, id: &str, paths: &[String]) -> Result<Map<String, Value>> {
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
    fn group(
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
    fn comment(
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
    fn change(
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

    /// The first file whose copy or job output no longer is what was added.
    fn stale_file(&self, req: &Request) -> Option<String> {
        let manifest = self
            .store
            .workspace(&req.workspace)
            .and_then(|d| self.store.manifest(&d));
        for (path, f) in &req.files {
            let ok = self.verify_copy(req, path, f).is_ok()
                && manifest
                    .as_ref()
                    .is_ok_and(|m| self.verify_manifest(req, m, path, f).is_ok());
            if !ok {
                return Some(path.clone());
            }
        }
        None
    }

    /// Every copy in the request still hashes to what was recorded.
    fn verify_copies(&self, req: &Request) -> Result<()> {
        for (path, f) in &req.files {
            self.verify_copy(req, path, f)?;
        }
        Ok(())
    }

    pub(crate) fn verify_copy(&self, req: &Request, path: &str, f: &FileEntry) -> Result<Vec<u8>> {
        let bytes = self
            .store
            .read_blob(&req.id, &f.sha256, self.config.release.max_file_bytes)?;
        let actual = hash::sha256_bytes(&bytes);
        if actual != f.sha256 {
            return Err(Error::Changed {
                path: format!("{}:{path} (the request's copy)", req.id),
                expected: f.sha256.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// The job manifest still records the content that is in the request.
    pub(crate) fn verify_manifest(
        &self,
        req: &Request,
        manifest: &Manifest,
        path: &str,
        f: &FileEntry,
    ) -> Result<()> {
        match manifest.outputs.get(path) {
            Some(meta) if meta.sha256() == f.sha256 && meta.not_releasable().is_none() => Ok(()),
            Some(meta) => Err(Error::Changed {
                path: format!(
                    "{}:{path} (the workspace output was replaced since it was added)",
                    req.id
                ),
                expected: f.sha256.clone(),
                actual: meta.sha256().to_string(),
            }),
            None => Err(Error::Changed {
                path: format!("{}:{path} (no longer in the job manifest)", req.id),
                expected: f.sha256.clone(),
                actual: String::new(),
            }),
        }
    }

    /// A vote on one file (`None`: take the caller's vote back).
    fn review(
        &mut self,
        id: &str,
        path: &str,
        vote: Option<Vote>,
        comment: Option<&str>,
    ) -> Result<Map<String, Value>> {
        let _lock = self.store.lock()?;
        let req = self.store.load(id)?;
        let now = timefmt::now();
        let mut next = req.clone();
        match vote {
            Some(v) => next.vote(&self.caller, path, v, comment, &now)?,
            None => next.reset_vote(&self.caller, path, &now)?,
        }
        // The vote is for what is in the request, and that must still be the job's output.
        let f = req.files.get(path).ok_or_else(|| Error::NotFound {
            what: format!("{path} in request {id}"),
        })?;
        if vote.is_some() {
            self.verify_copy(&req, path, f)?;
            let ws_dir = self.store.workspace(&req.workspace)?;
            let manifest = self.store.manifest(&ws_dir)?;
            self.verify_manifest(&req, &manifest, path, f)?;
        }
        let (action, vote_name) = match vote {
            Some(v) => ("vote", v.as_str()),
            None => ("reset_vote", "reset"),
        };
        let entries = vec![self.entry(
            action,
            Some(id),
            Some(path),
            Some(&f.sha256),
            json!({"vote": vote_name, "comment": comment, "turn": req.turn}),
        )];
        self.log(&entries)?;
        self.store.save(&next)?;
        self.out.item(
            "review",
            true,
            &json!({"action": action, "target": format!("{id}:{path}"), "request": id, "path": path,
                    "vote": vote_name, "state": next.state, "turn": next.turn}),
        );
        Ok(Map::new())
    }

    // ------------------------------------------------------------------ views

    fn ls(&mut self, state: Option<&str>) -> Result<Map<String, Value>> {
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

    fn show(&mut self, id: &str) -> Result<Map<String, Value>> {
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

    fn audit_log(&mut self, since: Option<&str>) -> Result<Map<String, Value>> {
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
    fn blinded_requests(&self) -> Result<std::collections::BTreeMap<String, u32>> {
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

    // ----------------------------------------------------------------- checks

    fn check(&mut self, paths: &[PathBuf]) -> Result<Map<String, Value>> {
        self.require_any_role()?;
        let base = self.store.medium_path().join(store::WORKSPACES_DIR);
        let workspaces = self.store.workspaces()?;
        let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
        let mut total = 0u64;
        let mut entries = Vec::new();
        for p in paths {
            let abs = if p.is_absolute() {
                self.root.join(p)
            } else {
                lexical(&cwd.join(p))
            };
            let result = abs
                .strip_prefix(&base)
                .ok()
                .and_then(|r| r.to_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "{}: check looks only at outputs under {}",
                        p.display(),
                        self.root.display_path(&base)
                    ))
                })
                .and_then(|rel| {
                    store::valid_output_path(&rel)?;
                    let (file, size) = store::open_file_beneath(&workspaces, &rel)?;
                    let max = self.config.release.max_file_bytes;
                    let content = if size <= max {
                        Some(store::read_all(file, size, max, &rel)?)
                    } else {
                        None
                    };
                    Ok((
                        rel,
                        size,
                        checks::check(
                            &p.to_string_lossy(),
                            size,
                            content.as_deref(),
                            &self.config.release,
                        ),
                    ))
                });
            match result {
                Ok((rel, size, findings)) => {
                    total += findings.len() as u64;
                    self.emit_findings(&p.to_string_lossy(), size, &findings);
                    entries.push(self.entry(
                        "check",
                        None,
                        Some(&rel),
                        None,
                        json!({"findings": findings.len()}),
                    ));
                }
                Err(e) => {
                    use bs_core::cli::Report;
                    self.out
                        .error(e.kind(), &p.to_string_lossy(), &e.to_string());
                }
            }
        }
        self.log(&entries)?;
        Ok(summary(&[("findings", Value::from(total))]))
    }

    fn emit_findings(&mut self, path: &str, size: u64, findings: &[Finding]) {
        for f in findings {
            let mut v = serde_json::to_value(f).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("path".into(), Value::from(path));
            }
            self.out.emit("finding", &v);
        }
        self.out.emit(
            "checked",
            &json!({"path": path, "size": size, "findings": findings.len()}),
        );
    }
}

/// `..` and `.` resolved without touching the file system.
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(x) => out.push(x),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
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
