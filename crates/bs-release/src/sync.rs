//! `sync-level4 --to DIR`: TPP's one-way push of released files to the
//! level-4 share. Each released file goes to `DIR/<workspace>/<path>`,
//! written atomically (temp file, fsync, rename) and read back and hashed
//! before it counts as copied; a file already there with the same content is
//! left alone. Nothing at the destination is deleted unless `--delete` is
//! given, and then only regular files and links inside the workspaces we
//! push to, never directories. No symlink at the destination is followed.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;

use bs_core::safefs::{DirFd, FileSpec, Kind};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::hash;
use crate::request::State;
use crate::session::Ctx;

pub(crate) fn sync(ctx: &mut Ctx, to: &Path, delete: bool) -> Result<Map<String, Value>> {
    if !ctx.caller.checker {
        return Err(Error::Denied(format!(
            "{} is not an output checker",
            ctx.caller.user
        )));
    }
    let dest = DirFd::open(to).map_err(|e| Error::Usage(format!("--to {}: {e}", to.display())))?;
    let me = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    let dir_spec = FileSpec {
        mode: 0o755,
        uid: me.0,
        gid: me.1,
    };
    let file_spec = FileSpec {
        mode: 0o644,
        uid: me.0,
        gid: me.1,
    };

    // (workspace, path) -> (request, sha256): a later release of a path wins.
    let mut released = Vec::new();
    for id in ctx.store.ids()? {
        let req = ctx.store.load(&id)?;
        if req.state == State::Released {
            released.push(req);
        }
    }
    released.sort_by(|a, b| a.release.finished_at.cmp(&b.release.finished_at));
    let mut wanted: BTreeMap<(String, String), (String, String)> = BTreeMap::new();
    for req in &released {
        // Released files only: supporting files never leave.
        for (path, f) in req.outputs() {
            wanted.insert(
                (req.workspace.clone(), path.clone()),
                (req.id.clone(), f.sha256.clone()),
            );
        }
    }

    let (mut copied, mut same, mut removed) = (0u64, 0u64, 0u64);
    let mut entries = Vec::new();
    for ((ws, path), (id, sha)) in &wanted {
        let target = format!("{ws}/{path}");
        let result = (|| -> Result<bool> {
            let bytes = ctx
                .store
                .read_blob(id, sha, ctx.config.release.max_file_bytes)?;
            let actual = hash::sha256_bytes(&bytes);
            if actual != *sha {
                return Err(Error::Changed {
                    path: format!("{id}:{path} (the request's copy)"),
                    expected: sha.clone(),
                    actual,
                });
            }
            let mut dir = dest.ensure_subdir(OsStr::new(ws), &dir_spec)?.0;
            let (parents, name) = match path.rsplit_once('/') {
                Some((p, n)) => (Some(p), n),
                None => (None, path.as_str()),
            };
            for comp in parents.into_iter().flat_map(|p| p.split('/')) {
                dir = dir.ensure_subdir(OsStr::new(comp), &dir_spec)?.0;
            }
            let changed = dir.write_file(OsStr::new(name), &bytes, &file_spec)?;
            // The checksum of what is now at the destination.
            let back = dir
                .read_file(OsStr::new(name), bytes.len() as u64)?
                .map(|(b, _)| hash::sha256_bytes(&b))
                .unwrap_or_default();
            if back != *sha {
                return Err(Error::Changed {
                    path: target.clone(),
                    expected: sha.clone(),
                    actual: back,
                });
            }
            Ok(changed)
        })();
        match result {
            Ok(changed) => {
                if changed {
                    copied += 1;
                    entries.push(ctx.entry(
                        "sync_copy",
                        Some(id),
                        Some(path),
                        Some(sha),
                        json!({"to": target}),
                    ));
                } else {
                    same += 1;
                }
                ctx.out.item("copy", changed, &json!({"action": if changed {"copy"} else {"none"}, "target": target, "request": id, "sha256": sha}));
            }
            Err(e) => {
                use bs_core::cli::Report;
                ctx.out.error(e.kind(), &target, &e.to_string());
            }
        }
    }

    if delete {
        let workspaces: std::collections::BTreeSet<&String> =
            wanted.keys().map(|(ws, _)| ws).collect();
        for ws in workspaces {
            let Ok(dir) = dest.open_subdir(OsStr::new(ws)) else {
                continue;
            };
            let mut stale = Vec::new();
            walk(&dir, "", &mut |rel| {
                if !wanted.contains_key(&(ws.clone(), rel.to_string())) {
                    stale.push(rel.to_string());
                }
            })?;
            for rel in stale {
                let (parent, name) = match rel.rsplit_once('/') {
                    Some((p, n)) => (dir.open_beneath(Path::new(p))?, n.to_string()),
                    None => (dir.try_clone()?, rel.clone()),
                };
                crate::store::unlink(&parent, OsStr::new(&name))?;
                removed += 1;
                let target = format!("{ws}/{rel}");
                entries.push(ctx.entry(
                    "sync_delete",
                    None,
                    Some(&rel),
                    None,
                    json!({"removed": target}),
                ));
                ctx.out
                    .item("copy", true, &json!({"action": "delete", "target": target}));
            }
        }
    }
    entries.push(ctx.entry("sync_level4", None, None, None, json!({"to": to.display().to_string(), "copied": copied, "unchanged": same, "removed": removed})));
    ctx.log(&entries)?;
    let mut extra = Map::new();
    extra.insert("copied".into(), Value::from(copied));
    extra.insert("removed".into(), Value::from(removed));
    Ok(extra)
}

/// Every non-directory entry below `dir`, as a relative path; directories
/// are entered through descriptors (never through a symlink).
fn walk(dir: &DirFd, prefix: &str, f: &mut dyn FnMut(&str)) -> Result<()> {
    for (name, kind) in dir.entries()? {
        let Some(name) = name.to_str() else { continue };
        if bs_core::safefs::is_temp_name(OsStr::new(name)) {
            continue;
        }
        let rel = if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        };
        match kind {
            Kind::Dir => walk(&dir.open_subdir(OsStr::new(name))?, &rel, f)?,
            _ => f(&rel),
        }
    }
    Ok(())
}
