//! A release request and its state machine, as pure data and functions:
//! every rule (who may do what, in which state) is decided here, before
//! anything is written, so a refused action changes nothing.
//!
//! ```text
//! pending -> submitted -> partially_reviewed -> reviewed -> approved -> released
//!               ^   \___________________\_____________\--> returned --(submit)--^
//!               |                                     \--> rejected
//! withdrawn  <- (the author, before a decision)
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::checks::Finding;
use crate::error::{Error, Result};
use crate::identity::Caller;
use crate::manifest::OutputMeta;

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Pending,
    Submitted,
    PartiallyReviewed,
    Reviewed,
    Returned,
    Approved,
    Rejected,
    Released,
    Withdrawn,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Submitted => "submitted",
            State::PartiallyReviewed => "partially_reviewed",
            State::Reviewed => "reviewed",
            State::Returned => "returned",
            State::Approved => "approved",
            State::Rejected => "rejected",
            State::Released => "released",
            State::Withdrawn => "withdrawn",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        ALL.iter().copied().find(|st| st.as_str() == s)
    }
}

pub const ALL: [State; 9] = [
    State::Pending,
    State::Submitted,
    State::PartiallyReviewed,
    State::Reviewed,
    State::Returned,
    State::Approved,
    State::Rejected,
    State::Released,
    State::Withdrawn,
];

const UNDER_REVIEW: &[State] = &[State::Submitted, State::PartiallyReviewed, State::Reviewed];
const EDITABLE: &[State] = &[State::Pending, State::Returned];

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Vote {
    Approve,
    Reject,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Review {
    pub reviewer: String,
    pub vote: Vote,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// The content the vote was for: a replaced file needs new votes.
    pub sha256: String,
    pub at: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Upload {
    /// `uploaded` or `already_uploaded`.
    pub status: String,
    pub at: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct FileEntry {
    pub sha256: String,
    pub size: u64,
    pub added_by: String,
    pub added_at: String,
    pub manifest: OutputMeta,
    #[serde(default)]
    pub findings: Vec<Finding>,
    #[serde(default)]
    pub reviews: Vec<Review>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<Upload>,
}

impl FileEntry {
    /// The votes that count: for the current content, by someone other than the author.
    pub fn valid_reviews<'a>(&'a self, author: &'a str) -> impl Iterator<Item = &'a Review> + 'a {
        self.reviews
            .iter()
            .filter(move |r| r.sha256 == self.sha256 && r.reviewer != author)
    }
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Event {
    pub at: String,
    pub user: String,
    pub action: String,
    pub from: State,
    pub to: State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct ReleaseInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Request {
    pub id: String,
    /// The id job-server gives the release (Airlock's `airlock_id`): a ULID,
    /// unique across backends, so a create retried after a timeout finds the
    /// release it made. Absent in requests made before it existed; publish
    /// gives them one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub airlock_id: Option<String>,
    pub workspace: String,
    pub author: String,
    /// The author's GitHub login as listed (job-server's username for them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author_github: Option<String>,
    pub state: State,
    pub created_at: String,
    pub updated_at: String,
    #[serde(default)]
    pub files: BTreeMap<String, FileEntry>,
    #[serde(default)]
    pub history: Vec<Event>,
    #[serde(default)]
    pub release: ReleaseInfo,
}

fn allowed_text(states: &[State]) -> String {
    states
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(" or ")
}

impl Request {
    pub fn new(id: String, workspace: String, author: String, now: &str) -> Request {
        Request {
            id,
            airlock_id: Some(crate::ulid::new()),
            workspace,
            author,
            author_github: None,
            state: State::Pending,
            created_at: now.into(),
            updated_at: now.into(),
            files: BTreeMap::new(),
            history: Vec::new(),
            release: ReleaseInfo::default(),
        }
    }

    fn require_state(&self, action: &str, allowed: &[State]) -> Result<()> {
        if allowed.contains(&self.state) {
            Ok(())
        } else {
            Err(Error::WrongState {
                id: self.id.clone(),
                state: self.state.as_str().into(),
                action: action.into(),
                allowed: allowed_text(allowed),
            })
        }
    }

    fn require_author(&self, caller: &Caller, action: &str) -> Result<()> {
        if caller.user == self.author {
            Ok(())
        } else {
            Err(Error::Denied(format!(
                "only the author ({}) may {action} request {}",
                self.author, self.id
            )))
        }
    }

    /// An output checker who is not the author.
    fn require_independent_checker(&self, caller: &Caller, action: &str) -> Result<()> {
        if !caller.checker {
            return Err(Error::Denied(format!(
                "{} is not an output checker: only output checkers may {action} requests",
                caller.user
            )));
        }
        if caller.user == self.author {
            return Err(Error::Denied(format!(
                "{} is the author of request {}: nobody may {action} their own request",
                caller.user, self.id
            )));
        }
        Ok(())
    }

    fn transition(
        &mut self,
        to: State,
        caller: &Caller,
        action: &str,
        comment: Option<&str>,
        now: &str,
    ) {
        self.history.push(Event {
            at: now.into(),
            user: caller.user.clone(),
            action: action.into(),
            from: self.state,
            to,
            comment: comment.map(str::to_string),
        });
        self.state = to;
        self.updated_at = now.into();
    }

    /// May `caller` add or remove files now?
    pub fn check_edit(&self, caller: &Caller, action: &str) -> Result<()> {
        self.require_author(caller, action)?;
        self.require_state(action, EDITABLE)
    }

    pub fn submit(&mut self, caller: &Caller, needed: u32, now: &str) -> Result<State> {
        self.require_author(caller, "submit")?;
        self.require_state("submit", EDITABLE)?;
        if self.files.is_empty() {
            return Err(Error::Denied(format!(
                "request {} has no files to submit",
                self.id
            )));
        }
        let to = self.progress_with(needed);
        let from = self.state;
        self.transition(to, caller, "submit", None, now);
        Ok(from)
    }

    pub fn withdraw(&mut self, caller: &Caller, now: &str) -> Result<State> {
        self.require_author(caller, "withdraw")?;
        self.require_state(
            "withdraw",
            &[
                State::Pending,
                State::Submitted,
                State::PartiallyReviewed,
                State::Reviewed,
                State::Returned,
            ],
        )?;
        let from = self.state;
        self.transition(State::Withdrawn, caller, "withdraw", None, now);
        Ok(from)
    }

    pub fn return_to_author(
        &mut self,
        caller: &Caller,
        comment: Option<&str>,
        now: &str,
    ) -> Result<State> {
        self.require_independent_checker(caller, "return")?;
        self.require_state("return", UNDER_REVIEW)?;
        let from = self.state;
        self.transition(State::Returned, caller, "return", comment, now);
        Ok(from)
    }

    pub fn approve(&mut self, caller: &Caller, needed: u32, now: &str) -> Result<State> {
        self.require_independent_checker(caller, "approve")?;
        self.require_state("approve", &[State::Reviewed])?;
        for (path, f) in &self.files {
            let approvals = f
                .valid_reviews(&self.author)
                .filter(|r| r.vote == Vote::Approve)
                .count();
            let rejections = f
                .valid_reviews(&self.author)
                .filter(|r| r.vote == Vote::Reject)
                .count();
            if rejections > 0 {
                return Err(Error::Denied(format!(
                    "{path} has {rejections} rejection(s): return the request to its author or reject it"
                )));
            }
            if approvals < needed as usize {
                return Err(Error::Denied(format!(
                    "{path} has {approvals} approval(s); {needed} independent approvals are needed"
                )));
            }
        }
        let from = self.state;
        self.transition(State::Approved, caller, "approve", None, now);
        Ok(from)
    }

    pub fn reject(&mut self, caller: &Caller, comment: Option<&str>, now: &str) -> Result<State> {
        self.require_independent_checker(caller, "reject")?;
        let comment = comment
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .ok_or_else(|| Error::Usage("a rejection needs a comment: --comment TEXT".into()))?;
        self.require_state("reject", &[State::Reviewed])?;
        let from = self.state;
        self.transition(State::Rejected, caller, "reject", Some(comment), now);
        Ok(from)
    }

    /// Record `caller`'s vote on `path` (replacing an earlier vote of theirs)
    /// and move the request on as far as the votes allow.
    pub fn vote(
        &mut self,
        caller: &Caller,
        path: &str,
        vote: Vote,
        comment: Option<&str>,
        needed: u32,
        now: &str,
    ) -> Result<State> {
        self.require_independent_checker(caller, "review")?;
        let comment = comment.map(str::trim).filter(|c| !c.is_empty());
        if vote == Vote::Reject && comment.is_none() {
            return Err(Error::Usage(
                "a rejection needs a comment: --comment TEXT".into(),
            ));
        }
        self.require_state("review", UNDER_REVIEW)?;
        let Some(file) = self.files.get_mut(path) else {
            return Err(Error::NotFound {
                what: format!("{path} in request {}", self.id),
            });
        };
        file.reviews.retain(|r| r.reviewer != caller.user);
        file.reviews.push(Review {
            reviewer: caller.user.clone(),
            vote,
            comment: comment.map(str::to_string),
            sha256: file.sha256.clone(),
            at: now.into(),
        });
        self.updated_at = now.into();
        let from = self.state;
        let to = self.progress_with(needed);
        if to != from {
            self.transition(to, caller, "review", None, now);
        }
        Ok(from)
    }

    /// Submitted, partially reviewed or reviewed, from the votes.
    fn progress_with(&self, needed: u32) -> State {
        let counts: Vec<usize> = self
            .files
            .values()
            .map(|f| f.valid_reviews(&self.author).count())
            .collect();
        if !counts.is_empty() && counts.iter().all(|&c| c >= needed as usize) {
            State::Reviewed
        } else if counts.iter().any(|&c| c > 0) {
            State::PartiallyReviewed
        } else {
            State::Submitted
        }
    }

    pub fn check_publish(&self, caller: &Caller) -> Result<()> {
        self.require_independent_checker(caller, "publish")?;
        self.require_state("publish", &[State::Approved])
    }

    pub fn mark_released(&mut self, caller: &Caller, now: &str) {
        self.release.finished_at = Some(now.into());
        self.transition(State::Released, caller, "publish", None, now);
    }

    pub fn check_view(&self, caller: &Caller) -> Result<()> {
        if caller.checker || caller.user == self.author {
            Ok(())
        } else {
            Err(Error::Denied(format!(
                "{} may see only their own requests (output checkers see all)",
                caller.user
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(name: &str, author: bool, checker: bool) -> Caller {
        Caller {
            user: name.into(),
            github: name.into(),
            groups: vec![],
            via: "sudo",
            author,
            checker,
        }
    }

    fn file(sha: &str) -> FileEntry {
        FileEntry {
            sha256: sha.into(),
            size: 1,
            added_by: "alice".into(),
            added_at: "t".into(),
            manifest: OutputMeta::default(),
            findings: vec![],
            reviews: vec![],
            upload: None,
        }
    }

    fn submitted() -> Request {
        let mut r = Request::new("1".into(), "ws".into(), "alice".into(), "t0");
        r.files.insert("a.csv".into(), file("aa"));
        r.files.insert("b.csv".into(), file("bb"));
        r.submit(&person("alice", true, false), 2, "t1").unwrap();
        r
    }

    #[test]
    fn two_independent_approvals_per_file_lead_to_reviewed_then_approved() {
        let mut r = submitted();
        let (bob, carol) = (person("bob", false, true), person("carol", true, true));
        r.vote(&bob, "a.csv", Vote::Approve, None, 2, "t2").unwrap();
        assert_eq!(r.state, State::PartiallyReviewed);
        r.vote(&bob, "b.csv", Vote::Approve, None, 2, "t3").unwrap();
        r.vote(&carol, "a.csv", Vote::Approve, None, 2, "t4")
            .unwrap();
        assert_eq!(r.state, State::PartiallyReviewed, "b.csv has one review");
        assert!(r.approve(&bob, 2, "t5").is_err());
        r.vote(&carol, "b.csv", Vote::Approve, None, 2, "t6")
            .unwrap();
        assert_eq!(r.state, State::Reviewed);
        r.approve(&bob, 2, "t7").unwrap();
        assert_eq!(r.state, State::Approved);
    }

    #[test]
    fn the_same_reviewer_twice_is_one_review() {
        let mut r = submitted();
        let bob = person("bob", false, true);
        for p in ["a.csv", "b.csv", "a.csv", "b.csv"] {
            r.vote(&bob, p, Vote::Approve, None, 2, "t").unwrap();
        }
        assert_eq!(r.state, State::PartiallyReviewed);
        assert_eq!(r.files["a.csv"].reviews.len(), 1);
    }

    #[test]
    fn self_review_and_non_checkers_are_refused_and_change_nothing() {
        let mut r = submitted();
        let before = r.clone();
        let alice_checker = person("alice", true, true);
        assert!(matches!(
            r.vote(&alice_checker, "a.csv", Vote::Approve, None, 2, "t"),
            Err(Error::Denied(_))
        ));
        assert!(matches!(
            r.vote(
                &person("dave", true, false),
                "a.csv",
                Vote::Approve,
                None,
                2,
                "t"
            ),
            Err(Error::Denied(_))
        ));
        assert!(r.return_to_author(&alice_checker, None, "t").is_err());
        assert_eq!(r, before);
    }

    #[test]
    fn a_rejection_needs_a_comment() {
        let mut r = submitted();
        let bob = person("bob", false, true);
        assert!(matches!(
            r.vote(&bob, "a.csv", Vote::Reject, Some("  "), 2, "t"),
            Err(Error::Usage(_))
        ));
        r.vote(&bob, "a.csv", Vote::Reject, Some("small numbers"), 2, "t")
            .unwrap();
        assert_eq!(
            r.files["a.csv"].reviews[0].comment.as_deref(),
            Some("small numbers")
        );
    }

    #[test]
    fn wrong_transitions_say_what_is_allowed() {
        let mut r = Request::new("1".into(), "ws".into(), "alice".into(), "t0");
        let alice = person("alice", true, false);
        let err = r.submit(&alice, 2, "t").unwrap_err();
        assert!(err.to_string().contains("no files"), "{err}");
        r.files.insert("a.csv".into(), file("aa"));
        let err = r.approve(&person("bob", false, true), 2, "t").unwrap_err();
        assert!(err.to_string().contains("allowed when reviewed"), "{err}");
        assert!(r.check_publish(&person("bob", false, true)).is_err());
        r.withdraw(&alice, "t").unwrap();
        assert!(r.submit(&alice, 2, "t").is_err());
    }

    #[test]
    fn a_replaced_file_needs_new_votes_after_return() {
        let mut r = submitted();
        let (bob, carol) = (person("bob", false, true), person("carol", false, true));
        for p in ["a.csv", "b.csv"] {
            r.vote(&bob, p, Vote::Approve, None, 2, "t").unwrap();
            r.vote(&carol, p, Vote::Approve, None, 2, "t").unwrap();
        }
        assert_eq!(r.state, State::Reviewed);
        r.return_to_author(&bob, Some("fix b"), "t").unwrap();
        r.files.get_mut("b.csv").unwrap().sha256 = "b2".into();
        r.submit(&person("alice", true, false), 2, "t").unwrap();
        assert_eq!(
            r.state,
            State::PartiallyReviewed,
            "a.csv keeps its votes, b.csv needs new ones"
        );
    }
}
