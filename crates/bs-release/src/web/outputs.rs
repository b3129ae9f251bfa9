//! The bytes the browser is shown: a workspace output (read as `request
//! add` reads it: beneath the workspace, no symlink followed, one link
//! only) or a request's copy (verified against its sha256 as publish
//! does). Each read is for someone with a release role, and audited.

use serde_json::json;

use crate::error::{Error, Result};
use crate::session::Ctx;
use crate::store;

impl Ctx<'_> {
    /// Output `path` of workspace `ws`, as listed in its job manifest.
    pub(crate) fn output_bytes(&mut self, ws: &str, path: &str) -> Result<Vec<u8>> {
        self.require_any_role()?;
        store::valid_output_path(path)?;
        let ws_dir = self.store.workspace(ws)?;
        let manifest = self.store.manifest(&ws_dir)?;
        if !manifest.outputs.contains_key(path) {
            return Err(Error::NotFound {
                what: format!("{path} in the job manifest of workspace {ws}"),
            });
        }
        let (file, size) = store::open_file_beneath(&ws_dir, path)?;
        let bytes = store::read_all(file, size, self.config.release.max_file_bytes, path)?;
        let sha = crate::hash::sha256_bytes(&bytes);
        let e = self.entry(
            "view_file",
            None,
            Some(path),
            Some(&sha),
            json!({"workspace": ws}),
        );
        self.log(&[e])?;
        Ok(bytes)
    }

    /// The request's copy of `path`, for someone who may see the request.
    pub(crate) fn request_file_bytes(&mut self, id: &str, path: &str) -> Result<Vec<u8>> {
        let req = self.store.load(id)?;
        req.check_view(&self.caller)?;
        let Some(f) = req.files.get(path) else {
            return Err(Error::NotFound {
                what: format!("{path} in request {id}"),
            });
        };
        let bytes = self.verify_copy(&req, path, f)?;
        let e = self.entry(
            "view_file",
            Some(id),
            Some(path),
            Some(&f.sha256),
            json!({}),
        );
        self.log(&[e])?;
        Ok(bytes)
    }

    /// The workspaces under the medium-privacy tree (directories only).
    pub(crate) fn workspace_names(&self) -> Result<Vec<String>> {
        self.require_any_role()?;
        let dir = self.store.workspaces()?;
        let mut names: Vec<String> = dir
            .entries()?
            .into_iter()
            .filter(|(_, k)| *k == bs_core::safefs::Kind::Dir)
            .filter_map(|(n, _)| n.to_str().map(str::to_string))
            .filter(|n| store::valid_workspace(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }
}
