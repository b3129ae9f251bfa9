//! `[[perms.tree]]` -> a resolved [`Policy`] -> a walk -> records.
//!
//! Names resolve to ids through the account files under the root
//! ([`AccountDb`]), never through the host's getpwnam. A name that does not
//! exist is an error record for that tree, which is then left alone.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use bs_core::accounts::AccountDb;
use bs_core::config::{parse_mode, split_acl_entry, TreeConfig};
use bs_core::safefs::{self, DirFd, FileSpec};
use bs_core::{CoreError, Output};

use crate::acl::{Acl, NamedSpec, Tag};
use crate::walk::{self, EntryKind, Event, Policy, State, Stats, Want};
use crate::{PermsChange, RunCtx, Selection};

/// uid/gid -> name, for records.
pub struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    pub fn from_db(db: &AccountDb) -> Names {
        Names {
            users: db.users().map(|u| (u.uid, u.name.clone())).collect(),
            groups: db.groups().map(|g| (g.gid, g.name.clone())).collect(),
        }
    }

    pub fn user(&self, uid: u32) -> String {
        self.users
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }

    pub fn group(&self, gid: u32) -> String {
        self.groups
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| gid.to_string())
    }

    fn entry_name(&self, tag: Tag, id: u32) -> String {
        match tag {
            Tag::User => self.user(id),
            _ => self.group(id),
        }
    }
}

/// Resolve a tree's config against the account files of the root.
pub fn resolve(tree: &TreeConfig, db: &AccountDb) -> Result<Policy, String> {
    let uid = match &tree.owner {
        Some(n) => Some(
            db.user(n)
                .map(|u| u.uid)
                .ok_or_else(|| format!("owner {n:?} does not exist"))?,
        ),
        None => None,
    };
    let gid = match &tree.group {
        Some(n) => Some(
            db.group(n)
                .map(|g| g.gid)
                .ok_or_else(|| format!("group {n:?} does not exist"))?,
        ),
        None => None,
    };
    let named = |list: &Option<Vec<String>>| -> Result<Option<Vec<NamedSpec>>, String> {
        let Some(list) = list else { return Ok(None) };
        let mut out: Vec<NamedSpec> = Vec::new();
        for entry in list {
            let (is_user, name, perms) =
                split_acl_entry(entry).ok_or_else(|| format!("{entry:?}: bad ACL entry"))?;
            let (tag, id) = if is_user {
                (
                    Tag::User,
                    db.user(name).map(|u| u.uid).ok_or_else(|| {
                        format!("ACL entry {entry:?}: user {name:?} does not exist")
                    })?,
                )
            } else {
                (
                    Tag::Group,
                    db.group(name).map(|g| g.gid).ok_or_else(|| {
                        format!("ACL entry {entry:?}: group {name:?} does not exist")
                    })?,
                )
            };
            let (perm, cond_x) = NamedSpec::perms_from_text(perms);
            if out.iter().any(|s| s.tag == tag && s.id == id) {
                return Err(format!("ACL entry {entry:?}: {name} is named twice"));
            }
            out.push(NamedSpec {
                tag,
                id,
                perm,
                cond_x,
            });
        }
        Ok(Some(out))
    };
    Ok(Policy {
        uid,
        gid,
        dir_mode: tree.dir_mode.as_deref().and_then(parse_mode),
        file_mode: tree.file_mode.as_deref().and_then(parse_mode),
        setgid: tree.setgid,
        acl: named(&tree.acl)?,
        default_acl: named(&tree.default_acl)?,
    })
}

fn threads(ctx: &RunCtx<'_>) -> usize {
    ctx.walk
        .threads
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        })
        .clamp(1, 8)
}

/// Many directories held open at once on a deep, wide tree: allow it.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
}

pub fn run(
    ctx: &RunCtx<'_>,
    out: &mut Output,
    sel: &mut Selection,
    extra: &mut Map<String, Value>,
) {
    if ctx.config.perms.tree.is_empty() {
        return;
    }
    raise_fd_limit();
    let db = match AccountDb::load(ctx.root) {
        Ok(db) => db,
        Err(e) => {
            out.core_error(&e);
            return;
        }
    };
    let names = Names::from_db(&db);
    let mut totals = [0u64; 3];
    for tree in &ctx.config.perms.tree {
        let target = tree.path.display().to_string();
        let policy = match resolve(tree, &db) {
            Ok(p) => p,
            Err(message) => {
                out.error("unknown_name", &target, &message);
                continue;
            }
        };
        if ctx.applying() && !sel.allows_walk(&target) {
            continue;
        }
        let counts = one_tree(ctx, out, tree, &policy, &names);
        for (t, c) in totals.iter_mut().zip(counts) {
            *t += c;
        }
    }
    extra.insert("paths_walked".into(), Value::from(totals[0]));
    extra.insert("paths_differing".into(), Value::from(totals[1]));
    extra.insert("symlinks_skipped".into(), Value::from(totals[2]));
}

/// Make sure the tree's top and its subdirectories exist (apply) or say
/// they are missing (plan/check). Returns the top's parent, open.
fn prepare(
    ctx: &RunCtx<'_>,
    out: &mut Output,
    tree: &TreeConfig,
    policy: &Policy,
) -> Result<Option<DirFd>, CoreError> {
    let host = ctx.root.join(&tree.path);
    let (parent, name) = safefs::split(&host)?;
    let rel_parent = parent
        .strip_prefix(ctx.root.path())
        .unwrap_or(Path::new(""));
    let root_dir = DirFd::open(ctx.root.path())?;
    let create_mode = rustix::fs::Mode::from_raw_mode(0o700);
    let record_create = |out: &mut Output, path: &Path| {
        out.emit(
            "path",
            &json!({"action": "create", "target": ctx.root.display_path(path), "tree": tree.path, "kind": "dir",
                    "changed": true, "mode": ctx.mode.as_str()}),
        );
    };
    if !parent.is_dir() {
        if !ctx.applying() {
            record_create(out, &host);
            return Ok(None);
        }
        // System directories above a tree (/srv): root-owned, like mkdir -p.
        safefs::ensure_dir_all(parent, &FileSpec::root(0o755))?;
    }
    let parent_fd = root_dir.open_beneath(rel_parent)?;
    let top_exists = parent_fd.stat_at(name)?.is_some();
    if !top_exists {
        record_create(out, &host);
        if !ctx.applying() {
            for sub in &tree.subdirs {
                record_create(out, &host.join(sub));
            }
            return Ok(None);
        }
        mkdir(&parent_fd, name, create_mode)?;
    }
    let top = parent_fd.open_subdir(name)?;
    for sub in &tree.subdirs {
        if top.stat_at(sub.as_ref())?.is_none() {
            record_create(out, &host.join(sub));
            if ctx.applying() {
                mkdir(&top, sub.as_ref(), create_mode)?;
            }
        }
    }
    let _ = policy;
    Ok(Some(parent_fd))
}

fn mkdir(dir: &DirFd, name: &std::ffi::OsStr, mode: rustix::fs::Mode) -> Result<(), CoreError> {
    match rustix::fs::mkdirat(dir.fd(), name, mode) {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(CoreError::io(dir.path().join(name), e.into())),
    }
}

/// Walk one tree; returns (entries, differing, symlinks).
fn one_tree(
    ctx: &RunCtx<'_>,
    out: &mut Output,
    tree: &TreeConfig,
    policy: &Policy,
    names: &Names,
) -> [u64; 3] {
    let target = tree.path.display().to_string();
    let started = Instant::now();
    let parent = match prepare(ctx, out, tree, policy) {
        Ok(Some(p)) => p,
        Ok(None) => {
            out.item(
                "tree",
                true,
                &json!({"action": "walk", "target": target, "exists": false}),
            );
            return [0; 3];
        }
        Err(e) => {
            out.error(e.kind(), &target, &e.to_string());
            return [0; 3];
        }
    };
    let parent_fd: OwnedFd = match parent.fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => {
            out.error("io", &target, &e.to_string());
            return [0; 3];
        }
    };
    let host = ctx.root.join(&tree.path);
    let name = host
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let stats = Stats::default();
    let (tx, rx) = std::sync::mpsc::sync_channel::<Event>(1024);
    let fix = ctx.applying();
    let report_paths = !ctx.walk.summary;
    let progress = std::io::stderr().is_terminal();
    let mut failed_paths = 0u64;
    std::thread::scope(|s| {
        let stats = &stats;
        let host = &host;
        s.spawn(move || {
            let opts = walk::Options {
                fix,
                report_paths,
                threads: threads(ctx),
            };
            walk::walk(Arc::new(parent_fd), &name, host, policy, opts, stats, tx);
        });
        let mut last = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(250)) {
                Ok(event) => {
                    if matches!(event, Event::Error { .. }) {
                        failed_paths += 1;
                    }
                    write_event(ctx, out, tree, names, event);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if progress && last.elapsed() > Duration::from_millis(500) {
                last = Instant::now();
                let _ = write!(
                    std::io::stderr(),
                    "\rbs-perms: {target}: {} dirs, {} files, {} differing ",
                    Stats::get(&stats.dirs),
                    Stats::get(&stats.files),
                    Stats::get(&stats.differing)
                );
            }
        }
        if progress {
            let _ = writeln!(std::io::stderr());
        }
    });
    let differing = Stats::get(&stats.differing);
    let body = json!({
        "action": "walk",
        "target": target,
        "dirs": Stats::get(&stats.dirs),
        "files": Stats::get(&stats.files),
        "differing": differing,
        "fixed": Stats::get(&stats.fixed),
        "symlinks": Stats::get(&stats.symlinks),
        "other_file_system": Stats::get(&stats.other_fs),
        "special_files": Stats::get(&stats.special),
        "hard_linked": Stats::get(&stats.hard_linked),
        "errors": Stats::get(&stats.errors),
        "duration_ms": started.elapsed().as_millis() as u64,
    });
    // With --summary the path errors were counted, not printed: one record.
    if !report_paths && failed_paths > 0 {
        out.error(
            "paths_failed",
            &target,
            &format!("{failed_paths} paths could not be checked or fixed"),
        );
    }
    out.item("tree", differing > 0, &body);
    [
        Stats::get(&stats.dirs) + Stats::get(&stats.files),
        differing,
        Stats::get(&stats.symlinks),
    ]
}

fn state_json(names: &Names, s: &State, acl_relevant: bool, default_relevant: bool) -> Value {
    let name_of = |t: Tag, id: u32| names.entry_name(t, id);
    let mut v = json!({
        "owner": names.user(s.uid),
        "group": names.group(s.gid),
        "mode": format!("{:04o}", s.mode),
    });
    if acl_relevant {
        v["acl"] = Value::from(s.access.to_text_entries(&name_of));
        v["effective"] = Value::from(effective(&s.access, names));
    }
    if default_relevant {
        v["default_acl"] = match &s.default {
            Some(d) => Value::from(d.to_text_entries(&name_of)),
            None => Value::Array(Vec::new()),
        };
    }
    v
}

/// What each group-class entry really grants, after the mask.
fn effective(acl: &Acl, names: &Names) -> Vec<String> {
    let name_of = |t: Tag, id: u32| names.entry_name(t, id);
    acl.entries()
        .iter()
        .filter(|e| matches!(e.tag, Tag::User | Tag::GroupObj | Tag::Group))
        .map(|e| {
            let mut masked = *e;
            masked.perm = acl.effective(e);
            crate::acl::entry_text(&masked, &name_of)
        })
        .collect()
}

fn want_json(names: &Names, w: &Want) -> Value {
    let name_of = |t: Tag, id: u32| names.entry_name(t, id);
    let mut v = Map::new();
    if let Some(uid) = w.uid {
        v.insert("owner".into(), Value::from(names.user(uid)));
    }
    if let Some(gid) = w.gid {
        v.insert("group".into(), Value::from(names.group(gid)));
    }
    if let Some(mode) = w.mode {
        v.insert("mode".into(), Value::from(format!("{mode:04o}")));
    }
    if let Some(acl) = &w.access {
        v.insert("acl".into(), Value::from(acl.to_text_entries(&name_of)));
        v.insert("effective".into(), Value::from(effective(acl, names)));
    }
    if let Some(d) = &w.default {
        let entries = d
            .as_ref()
            .map(|d| d.to_text_entries(&name_of))
            .unwrap_or_default();
        v.insert("default_acl".into(), Value::from(entries));
    }
    Value::Object(v)
}

fn write_event(ctx: &RunCtx<'_>, out: &mut Output, tree: &TreeConfig, names: &Names, event: Event) {
    let shown = |p: &PathBuf| ctx.root.display_path(p);
    match event {
        Event::Differs {
            path,
            kind,
            differs,
            have,
            want,
            fixed,
        } => {
            let change = PermsChange::Fix {
                target: shown(&path),
            };
            let mut body = serde_json::to_value(&change).unwrap_or_default();
            body["tree"] = json!(tree.path);
            body["kind"] = json!(kind.as_str());
            body["differs"] = json!(differs.names());
            body["have"] = state_json(
                names,
                &have,
                want.access.is_some(),
                kind == EntryKind::Dir && want.default.is_some(),
            );
            body["want"] = want_json(names, &want);
            body["fixed"] = json!(fixed);
            body["changed"] = json!(true);
            body["mode"] = json!(ctx.mode.as_str());
            out.emit("path", &body);
        }
        Event::Created { path } => {
            out.emit("path", &json!({"action": "create", "target": shown(&path), "tree": tree.path, "changed": true}));
        }
        Event::Skipped { path, reason } => {
            out.emit(
                "skipped",
                &json!({"target": shown(&path), "tree": tree.path, "reason": reason}),
            );
        }
        Event::Error {
            path,
            kind,
            message,
        } => out.error(kind, &shown(&path), &message),
    }
}
