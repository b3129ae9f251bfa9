//! Publish trusts nothing it did not see happen (issue 12: a `request.json`
//! edited to `approved` with no votes was uploaded). Before anything leaves,
//! "approved" is derived again: from the votes in the request that are for
//! the exact bytes about to be uploaded, each confirmed by its entry in the
//! audit log, whose chain must be intact, and from an audited approval of
//! the request by a checker who is not its author.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::audit::{Break, Entry};
use crate::error::{Error, Result};
use crate::request::{Request, Vote};

/// The actions that move a whole request: the last one on record must be an approval.
const STATE_ACTIONS: &[&str] = &["submit", "withdraw", "return", "approve", "reject"];

/// Refuse unless `req` is approved by its votes and the audit log says so too.
pub fn confirm(req: &Request, log: &[Entry], breaks: &[Break], needed: u32) -> Result<()> {
    if !breaks.is_empty() {
        return Err(not_approved(
            req,
            format!(
                "the audit log has {} break(s), so its votes cannot be trusted: run `bs-release audit`",
                breaks.len()
            ),
        ));
    }
    let ours: Vec<&Entry> = log
        .iter()
        .filter(|e| e.request.as_deref() == Some(req.id.as_str()))
        .collect();
    match ours
        .iter()
        .rev()
        .find(|e| STATE_ACTIONS.contains(&e.action.as_str()))
    {
        Some(e) if e.action == "approve" && e.user != req.author => {}
        Some(e) => {
            return Err(not_approved(
                req,
                format!("the last change on record is {:?} by {}", e.action, e.user),
            ))
        }
        None => return Err(not_approved(req, "no approval on record".into())),
    }
    for (path, f) in req.outputs() {
        // The votes that decide: those of the reviews submitted this turn,
        // on these bytes, each the last vote on record for its checker.
        let mut confirmed = BTreeSet::new();
        for r in f
            .valid_reviews(&req.author)
            .filter(|r| req.submitted_reviews.contains_key(&r.reviewer))
        {
            let last = ours.iter().rev().find(|e| {
                (e.action == "vote" || e.action == "reset_vote")
                    && e.file.as_deref() == Some(path)
                    && e.user == r.reviewer
            });
            let recorded = last.is_some_and(|e| {
                e.action == "vote"
                    && e.sha256.as_deref() == Some(f.sha256.as_str())
                    && e.detail.get("vote").and_then(Value::as_str) == Some(r.vote.as_str())
            });
            if !recorded {
                return Err(not_approved(
                    req,
                    format!(
                        "{path}: the vote of {} is not the one on record in the audit log",
                        r.reviewer
                    ),
                ));
            }
            let submitted = ours
                .iter()
                .any(|e| e.action == "submit_review" && e.user == r.reviewer);
            if r.vote == Vote::Approved && submitted {
                confirmed.insert(r.reviewer.as_str());
            }
        }
        if confirmed.len() < needed as usize {
            return Err(not_approved(
                req,
                format!(
                    "{path}: {} independent approval(s) of these bytes ({}) on record; {needed} are needed",
                    confirmed.len(),
                    f.sha256
                ),
            ));
        }
    }
    Ok(())
}

fn not_approved(req: &Request, why: String) -> Error {
    Error::Denied(format!(
        "request {} says {} but is not approved: {why}; nothing was sent",
        req.id,
        req.state.as_str()
    ))
}
