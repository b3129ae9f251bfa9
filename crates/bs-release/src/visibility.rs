//! What each person sees of a request (Airlock's visibility.py and turn
//! phases): while the review is independent (submitted, partially
//! reviewed), a checker sees only their own votes and notes, in `show` and
//! in the audit log; the author sees no votes and no decision until the
//! checkers' turn is over (returned, approved, rejected, released), and
//! then the decision per file, never a checker's private note.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::audit::Entry;
use crate::identity::Caller;
use crate::request::{Comment, Request, Visibility};

/// The actions whose entries carry one checker's view of a request.
const CHECKER_ACTIONS: &[&str] = &["vote", "reset_vote", "comment"];

/// `req` as `caller` may see it.
pub fn view(req: &Request, caller: &Caller, needed: u32) -> Value {
    let mut v = serde_json::to_value(req).unwrap_or(Value::Null);
    let is_author = caller.user == req.author;
    let blinded = req.is_independent_phase();
    if let Some(files) = v.get_mut("files").and_then(Value::as_object_mut) {
        for (path, f) in files.iter_mut() {
            let Some(entry) = req.files.get(path) else {
                continue;
            };
            let Some(obj) = f.as_object_mut() else {
                continue;
            };
            // A returned request's decisions are those of the turn that returned it.
            let deciding = if req.state == crate::request::State::Returned {
                &req.turn_reviewers
            } else {
                &req.submitted_reviews
            };
            let decision = entry.decision(&req.author, deciding, needed);
            if is_author {
                obj.remove("reviews");
                if req.author_sees_decisions() {
                    obj.insert("decision".into(), json!(decision));
                }
            } else if blinded {
                let own: Vec<Value> = entry
                    .reviews
                    .iter()
                    .filter(|r| r.reviewer == caller.user)
                    .filter_map(|r| serde_json::to_value(r).ok())
                    .collect();
                obj.insert("reviews".into(), Value::from(own));
            } else {
                obj.insert("decision".into(), json!(decision));
            }
        }
    }
    if let Some(groups) = v.get_mut("groups").and_then(Value::as_object_mut) {
        for (name, g) in groups.iter_mut() {
            let Some(group) = req.groups.get(name) else {
                continue;
            };
            let seen: Vec<Value> = group
                .comments
                .iter()
                .filter(|c| comment_visible(req, caller, c))
                .filter_map(|c| serde_json::to_value(c).ok())
                .collect();
            if let Some(obj) = g.as_object_mut() {
                obj.insert("comments".into(), Value::from(seen));
            }
        }
    }
    if let Some(obj) = v.as_object_mut() {
        if is_author || blinded {
            // Who has submitted a review is the checkers' business until the turn is over.
            let mine: BTreeMap<&String, &String> = req
                .submitted_reviews
                .iter()
                .filter(|(k, _)| **k == caller.user)
                .collect();
            obj.insert("submitted_reviews".into(), json!(mine));
            obj.remove("turn_reviewers");
            obj.insert(
                "reviews_submitted".into(),
                json!(req.submitted_reviews.len()),
            );
        }
    }
    v
}

/// Whether `caller` may read comment `c`: the author reads public comments
/// of turns that are over (and their own); a checker reads every comment,
/// except other checkers' of the current turn while it is independent.
fn comment_visible(req: &Request, caller: &Caller, c: &Comment) -> bool {
    if c.author == caller.user {
        return true;
    }
    let turn_over = c.turn < req.turn || !req.is_independent_phase() && req.author_sees_decisions();
    if caller.user == req.author {
        return c.visibility == Visibility::Public && turn_over;
    }
    if !caller.checker {
        return false;
    }
    c.author == req.author || c.turn < req.turn || !req.is_independent_phase()
}

/// Whether `e` is hidden from `user` reading the audit log: another
/// checker's vote or note on a request in its independent phase, this turn.
pub fn hidden_entry(e: &Entry, user: &str, blinded: &BTreeMap<String, u32>) -> bool {
    if e.user == user || !CHECKER_ACTIONS.contains(&e.action.as_str()) {
        return false;
    }
    let Some(turn) = e.request.as_ref().and_then(|r| blinded.get(r)) else {
        return false;
    };
    e.detail
        .get("turn")
        .and_then(Value::as_u64)
        .map_or(true, |t| t == u64::from(*turn))
}
