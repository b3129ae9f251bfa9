//! `review`: one checker's vote on one output file, or taking it back.

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::request::Vote;
use crate::session::Ctx;
use crate::timefmt;

impl Ctx<'_> {
    /// A vote on one file (`None`: take the caller's vote back).
    pub(crate) fn review(
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
}
