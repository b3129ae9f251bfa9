//! `files WS`: a workspace's releasable outputs, hashed on every CPU.

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::hash;
use crate::session::{summary, Ctx};
use crate::store::{self};

impl Ctx<'_> {
    pub(crate) fn files(&mut self, ws: &str) -> Result<Map<String, Value>> {
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
}
