//! A release request and its state machine, as pure data and functions:
//! every rule (who may do what, in which state) is decided here, before
//! anything is written, so a refused action changes nothing.
//!
//! Airlock's protocol (airlock/business_logic.py VALID_STATE_TRANSITIONS,
//! permissions.py STATUS_OWNERS):
//!
//! ```text
//! pending --submit--> submitted --1st review--> partially_reviewed --2nd--> reviewed
//!    |                    |                            |                      |  |  |
//!    |                    +----------- return ---------+----------------------+  |  approve -> approved -> released
//!    v                                 v                                         reject -> rejected
//! withdrawn <--withdraw-- returned --submit (a new turn)--> submitted
//! ```
//!
//! The author owns pending and returned requests (edit, submit, withdraw);
//! the output checkers own submitted, partially reviewed and reviewed ones.
//! Each checker votes on every output file (approved, changes requested; a
//! vote can be reset until the review is submitted) and then submits a
//! review: one submitted review makes the request partially reviewed, two
//! make it reviewed. Only votes of submitted reviews, on the content they
//! were given on, make a decision. Each submit and each return starts a new
//! turn; a resubmission marks votes that asked for changes undecided and
//! clears the submitted reviews, so earlier votes count again only once
//! their checker submits a review in the new turn. An approved request whose
//! files changed (the job ran again) can be returned, with a new release id.

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

/// Owned by the output checkers (Airlock's REVIEWER states).
pub const UNDER_REVIEW: &[State] = &[State::Submitted, State::PartiallyReviewed, State::Reviewed];
/// Owned by the author (Airlock's AUTHOR states).
pub const EDITABLE: &[State] = &[State::Pending, State::Returned];
/// Still in progress: an author has at most one such request per workspace.
pub const ACTIVE: &[State] = &[
    State::Pending,
    State::Submitted,
    State::PartiallyReviewed,
    State::Reviewed,
    State::Returned,
];
/// Before two reviews are in, nobody sees another checker's votes.
pub const INDEPENDENT: &[State] = &[State::Submitted, State::PartiallyReviewed];

/// A checker's vote on one output file (Airlock's RequestFileVote).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Vote {
    #[serde(alias = "approve")]
    Approved,
    #[serde(alias = "reject")]
    ChangesRequested,
    /// Set by a resubmission on votes that asked for changes: to be voted again.
    Undecided,
}

impl Vote {
    pub fn as_str(self) -> &'static str {
        match self {
            Vote::Approved => "approved",
            Vote::ChangesRequested => "changes_requested",
            Vote::Undecided => "undecided",
        }
    }
}

/// The decision on a file from the votes of submitted reviews (Airlock's RequestFileDecision).
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Approved,
    ChangesRequested,
    Conflicted,
    Incomplete,
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
    /// The turn the vote was cast (or marked undecided) in.
    #[serde(default)]
    pub turn: u32,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Upload {
    /// `uploaded` or `already_uploaded`.
    pub status: String,
    pub at: String,
}

/// Output files are reviewed and released; supporting files are reviewed
/// (context for the outputs) and never released (Airlock's RequestFileType).
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    #[default]
    Output,
    Supporting,
}

/// Who may read a comment: everyone on the request, or output checkers only.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    Public,
    Private,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Comment {
    pub author: String,
    pub text: String,
    pub visibility: Visibility,
    pub turn: u32,
    pub at: String,
}

/// A named group of files with what the author says about them: the
/// context (what the files are) and the disclosure controls applied; both
/// are needed before submitting. Comments are per group.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct Group {
    #[serde(default)]
    pub context: String,
    #[serde(default)]
    pub controls: String,
    #[serde(default)]
    pub comments: Vec<Comment>,
}

/// The group files go to when none is named.
pub const DEFAULT_GROUP: &str = "default";

fn default_group() -> String {
    DEFAULT_GROUP.into()
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct FileEntry {
    #[serde(default = "default_group")]
    pub group: String,
    #[serde(default)]
    pub filetype: FileType,
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
    /// The votes for the current content, by someone other than the author.
    pub fn valid_reviews<'a>(&'a self, author: &'a str) -> impl Iterator<Item = &'a Review> + 'a {
        self.reviews
            .iter()
            .filter(move |r| r.sha256 == self.sha256 && r.reviewer != author)
    }

    /// `reviewer`'s vote on the current content, if any.
    pub fn vote_of(&self, reviewer: &str) -> Option<Vote> {
        self.reviews
            .iter()
            .find(|r| r.reviewer == reviewer && r.sha256 == self.sha256)
            .map(|r| r.vote)
    }

    /// Airlock's decision: from the votes of submitted reviews only.
    pub fn decision(
        &self,
        author: &str,
        submitted: &BTreeMap<String, String>,
        needed: u32,
    ) -> Decision {
        let votes: Vec<Vote> = self
            .valid_reviews(author)
            .filter(|r| submitted.contains_key(&r.reviewer))
            .map(|r| r.vote)
            .collect();
        let approved = votes.iter().filter(|v| **v == Vote::Approved).count();
        let changes = votes
            .iter()
            .filter(|v| **v == Vote::ChangesRequested)
            .count();
        if approved >= needed as usize {
            Decision::Approved
        } else if votes.len() < needed as usize {
            Decision::Incomplete
        } else if changes >= needed as usize {
            Decision::ChangesRequested
        } else {
            Decision::Conflicted
        }
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
    /// The review turn: each submit and each return starts a new one.
    #[serde(default = "first_turn")]
    pub turn: u32,
    /// Checkers who submitted their review this turn, and when.
    #[serde(default)]
    pub submitted_reviews: BTreeMap<String, String>,
    /// The submitted reviews of the turn before: what a returned request's
    /// decisions, shown to its author, come from.
    #[serde(default)]
    pub turn_reviewers: BTreeMap<String, String>,
    #[serde(default)]
    pub groups: BTreeMap<String, Group>,
}

fn first_turn() -> u32 {
    1
}

/// A group without its context or its controls.
fn group_incomplete(g: Option<&Group>) -> bool {
    match g {
        None => true,
        Some(g) => g.context.trim().is_empty() || g.controls.trim().is_empty(),
    }
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
            turn: 1,
            submitted_reviews: BTreeMap::new(),
            turn_reviewers: BTreeMap::new(),
            groups: BTreeMap::new(),
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

    /// A new turn: the submitted reviews of the last one no longer count.
    fn start_new_turn(&mut self) {
        self.turn += 1;
        self.turn_reviewers = std::mem::take(&mut self.submitted_reviews);
    }

    /// The groups that hold files.
    pub fn used_groups(&self) -> std::collections::BTreeSet<&str> {
        self.files.values().map(|f| f.group.as_str()).collect()
    }

    /// The output files (supporting files are reviewed as context, never voted on or released).
    pub fn outputs(&self) -> impl Iterator<Item = (&String, &FileEntry)> {
        self.files
            .iter()
            .filter(|(_, f)| f.filetype == FileType::Output)
    }

    /// Groups where one of `deciders` asked for changes to a file, without a
    /// public comment this turn (by `by` when given, else by anyone but the author).
    pub fn groups_missing_public_comment(
        &self,
        deciders: &BTreeMap<String, String>,
        by: Option<&str>,
    ) -> Vec<String> {
        let mut missing = std::collections::BTreeSet::new();
        for (_, f) in self.outputs() {
            let changes = f
                .reviews
                .iter()
                .any(|r| deciders.contains_key(&r.reviewer) && r.vote == Vote::ChangesRequested);
            if !changes {
                continue;
            }
            let commented = self.groups.get(&f.group).is_some_and(|g| {
                g.comments.iter().any(|c| {
                    c.turn == self.turn
                        && c.visibility == Visibility::Public
                        && match by {
                            Some(who) => c.author == who,
                            None => c.author != self.author,
                        }
                })
            });
            if !commented {
                missing.insert(f.group.clone());
            }
        }
        missing.into_iter().collect()
    }

    /// Groups where `reviewer` asked for changes without a comment of theirs this turn.
    fn groups_missing_comment_by(&self, reviewer: &str) -> Vec<String> {
        let mut missing = std::collections::BTreeSet::new();
        for (_, f) in self.outputs() {
            if f.vote_of(reviewer) != Some(Vote::ChangesRequested) {
                continue;
            }
            let commented = self.groups.get(&f.group).is_some_and(|g| {
                g.comments
                    .iter()
                    .any(|c| c.turn == self.turn && c.author == reviewer)
            });
            if !commented {
                missing.insert(f.group.clone());
            }
        }
        missing.into_iter().collect()
    }

    /// The author describes a group: its context and disclosure controls.
    pub fn set_group(
        &mut self,
        caller: &Caller,
        name: &str,
        context: Option<&str>,
        controls: Option<&str>,
        now: &str,
    ) -> Result<()> {
        self.check_edit(caller, "describe the groups of")?;
        if !self.used_groups().contains(name) {
            return Err(Error::NotFound {
                what: format!("group {name} in request {}", self.id),
            });
        }
        let g = self.groups.entry(name.to_string()).or_default();
        if let Some(c) = context {
            g.context = c.trim().to_string();
        }
        if let Some(c) = controls {
            g.controls = c.trim().to_string();
        }
        self.updated_at = now.into();
        Ok(())
    }

    /// A comment on a group. The author comments (publicly) while they own
    /// the request; a checker who is not the author, while the checkers do,
    /// publicly or for checkers only. Nobody else.
    pub fn comment(
        &mut self,
        caller: &Caller,
        group: &str,
        text: &str,
        visibility: Visibility,
        now: &str,
    ) -> Result<()> {
        let text = text.trim();
        if text.is_empty() {
            return Err(Error::Usage("a comment needs text".into()));
        }
        if caller.user == self.author {
            self.require_state("comment on", EDITABLE)?;
            if visibility == Visibility::Private {
                return Err(Error::Denied(
                    "authors comment publicly: private comments are for output checkers".into(),
                ));
            }
        } else if caller.checker {
            self.require_state("comment on", UNDER_REVIEW)?;
        } else {
            return Err(Error::Denied(format!(
                "{} has no role on request {}: only its author and output checkers comment",
                caller.user, self.id
            )));
        }
        if !self.used_groups().contains(group) {
            return Err(Error::NotFound {
                what: format!("group {group} in request {}", self.id),
            });
        }
        let turn = self.turn;
        self.groups
            .entry(group.to_string())
            .or_default()
            .comments
            .push(Comment {
                author: caller.user.clone(),
                text: text.to_string(),
                visibility,
                turn,
                at: now.into(),
            });
        self.updated_at = now.into();
        Ok(())
    }

    /// May `caller` add or remove files now?
    pub fn check_edit(&self, caller: &Caller, action: &str) -> Result<()> {
        self.require_author(caller, action)?;
        self.require_state(action, EDITABLE)
    }

    pub fn submit(&mut self, caller: &Caller, _needed: u32, now: &str) -> Result<State> {
        self.require_author(caller, "submit")?;
        self.require_state("submit", EDITABLE)?;
        if self.files.is_empty() {
            return Err(Error::Denied(format!(
                "request {} has no files to submit",
                self.id
            )));
        }
        let incomplete: Vec<&str> = self
            .used_groups()
            .into_iter()
            .filter(|g| group_incomplete(self.groups.get(*g)))
            .collect();
        if !incomplete.is_empty() {
            return Err(Error::Denied(format!(
                "describe the context and the disclosure controls of group(s) {} before submitting (request group ID NAME --context T --controls T)",
                incomplete.join(", ")
            )));
        }
        if self.state == State::Returned {
            let missing =
                self.groups_missing_public_comment(&self.turn_reviewers, Some(&caller.user));
            if !missing.is_empty() {
                return Err(Error::Denied(format!(
                    "answer the checkers on group(s) {} before resubmitting (request comment ID GROUP TEXT)",
                    missing.join(", ")
                )));
            }
        }
        let from = self.state;
        if from == State::Returned {
            // Votes that asked for changes are to be cast again (Airlock marks them undecided).
            let turn = self.turn;
            for f in self.files.values_mut() {
                for r in &mut f.reviews {
                    if r.vote == Vote::ChangesRequested {
                        r.vote = Vote::Undecided;
                        r.turn = turn;
                    }
                }
            }
        }
        self.transition(State::Submitted, caller, "submit", None, now);
        self.start_new_turn();
        Ok(from)
    }

    /// The author, while they own the request (pending or returned).
    pub fn withdraw(&mut self, caller: &Caller, now: &str) -> Result<State> {
        self.require_author(caller, "withdraw")?;
        self.require_state("withdraw", EDITABLE)?;
        let from = self.state;
        self.transition(State::Withdrawn, caller, "withdraw", None, now);
        Ok(from)
    }

    /// Whether returning now is an early return (fewer than two reviews
    /// submitted): the turn's votes are then undone first.
    pub fn is_early_return(&self) -> bool {
        UNDER_REVIEW.contains(&self.state) && self.submitted_reviews.len() < 2
    }

    /// Send the request back to its author. `files_changed`: whether a file
    /// no longer matches the job's output, which lets an approved request
    /// (one whose job ran again) be returned rather than stay stuck.
    pub fn return_to_author(
        &mut self,
        caller: &Caller,
        comment: Option<&str>,
        files_changed: bool,
        now: &str,
    ) -> Result<State> {
        self.require_independent_checker(caller, "return")?;
        if self.state == State::Approved {
            if !files_changed {
                return Err(Error::Denied(format!(
                    "request {} is approved and its files are what was approved: publish it",
                    self.id
                )));
            }
            // job-server ties a release id to its files: the next approval
            // makes a new release.
            self.airlock_id = Some(crate::ulid::new());
            self.release = ReleaseInfo::default();
            for f in self.files.values_mut() {
                f.upload = None;
            }
        } else {
            self.require_state("return", UNDER_REVIEW)?;
        }
        if UNDER_REVIEW.contains(&self.state) && !self.is_early_return() {
            let missing = self.groups_missing_public_comment(&self.submitted_reviews, None);
            if !missing.is_empty() {
                return Err(Error::Denied(format!(
                    "changes were requested in group(s) {}: tell the author what to change there first (request comment ID GROUP TEXT --public)",
                    missing.join(", ")
                )));
            }
        }
        if self.is_early_return() {
            // Airlock's revert_turn_activity: the votes of this turn go
            // (those of a submitted review become undecided).
            let turn = self.turn;
            let submitted = self.submitted_reviews.clone();
            for f in self.files.values_mut() {
                f.reviews
                    .retain(|r| r.turn != turn || submitted.contains_key(&r.reviewer));
                for r in &mut f.reviews {
                    if r.turn == turn {
                        r.vote = Vote::Undecided;
                    }
                }
            }
        }
        let from = self.state;
        self.transition(State::Returned, caller, "return", comment, now);
        self.start_new_turn();
        Ok(from)
    }

    pub fn approve(&mut self, caller: &Caller, needed: u32, now: &str) -> Result<State> {
        self.require_independent_checker(caller, "approve")?;
        self.require_state("approve", &[State::Reviewed])?;
        for (path, f) in self.outputs() {
            let d = f.decision(&self.author, &self.submitted_reviews, needed);
            if d != Decision::Approved {
                return Err(Error::Denied(format!(
                    "{path}: the decision of the submitted reviews is {}: {needed} independent approvals are needed",
                    serde_json::to_value(d).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
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

    /// Record `caller`'s vote on `path` (replacing an earlier vote of
    /// theirs). A vote does not move the request: submitting the review does.
    pub fn vote(
        &mut self,
        caller: &Caller,
        path: &str,
        vote: Vote,
        comment: Option<&str>,
        now: &str,
    ) -> Result<()> {
        self.require_independent_checker(caller, "review")?;
        self.require_state("vote on", UNDER_REVIEW)?;
        if vote == Vote::Undecided {
            return Err(Error::Usage(
                "undecided is set by a resubmission, not voted".into(),
            ));
        }
        let comment = comment.map(str::trim).filter(|c| !c.is_empty());
        let turn = self.turn;
        let Some(file) = self.files.get_mut(path) else {
            return Err(Error::NotFound {
                what: format!("{path} in request {}", self.id),
            });
        };
        if file.filetype == FileType::Supporting {
            return Err(Error::Denied(format!(
                "{path} is a supporting file: it is reviewed as context, not voted on"
            )));
        }
        file.reviews.retain(|r| r.reviewer != caller.user);
        file.reviews.push(Review {
            reviewer: caller.user.clone(),
            vote,
            comment: comment.map(str::to_string),
            sha256: file.sha256.clone(),
            at: now.into(),
            turn,
        });
        self.updated_at = now.into();
        Ok(())
    }

    /// Take back `caller`'s vote on `path`: only before their review is submitted.
    pub fn reset_vote(&mut self, caller: &Caller, path: &str, now: &str) -> Result<()> {
        self.require_independent_checker(caller, "review")?;
        self.require_state("reset a vote on", UNDER_REVIEW)?;
        if self.submitted_reviews.contains_key(&caller.user) {
            return Err(Error::Denied(format!(
                "{} has submitted their review of request {}: its votes cannot be reset",
                caller.user, self.id
            )));
        }
        let Some(file) = self.files.get_mut(path) else {
            return Err(Error::NotFound {
                what: format!("{path} in request {}", self.id),
            });
        };
        let before = file.reviews.len();
        file.reviews.retain(|r| r.reviewer != caller.user);
        if file.reviews.len() == before {
            return Err(Error::NotFound {
                what: format!("a vote of {} on {path}", caller.user),
            });
        }
        self.updated_at = now.into();
        Ok(())
    }

    /// Submit `caller`'s review: every output voted on (its current
    /// content), once a turn. The first makes the request partially
    /// reviewed, the second reviewed.
    pub fn submit_review(&mut self, caller: &Caller, now: &str) -> Result<State> {
        self.require_independent_checker(caller, "review")?;
        self.require_state("submit a review of", UNDER_REVIEW)?;
        if self.submitted_reviews.contains_key(&caller.user) {
            return Err(Error::Denied(format!(
                "{} has already submitted their review of request {} this turn",
                caller.user, self.id
            )));
        }
        let missing: Vec<&str> = self
            .outputs()
            .filter(|(_, f)| matches!(f.vote_of(&caller.user), None | Some(Vote::Undecided)))
            .map(|(p, _)| p.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(Error::Denied(format!(
                "vote on every file before submitting your review; not yet voted: {}",
                missing.join(", ")
            )));
        }
        let uncommented = self.groups_missing_comment_by(&caller.user);
        if !uncommented.is_empty() {
            return Err(Error::Denied(format!(
                "comment on group(s) {} where you asked for changes before submitting your review",
                uncommented.join(", ")
            )));
        }
        self.submitted_reviews
            .insert(caller.user.clone(), now.to_string());
        let from = self.state;
        let to = match self.submitted_reviews.len() {
            1 => State::PartiallyReviewed,
            _ => State::Reviewed,
        };
        if to != from && from != State::Reviewed {
            self.transition(to, caller, "review", None, now);
        }
        self.updated_at = now.into();
        Ok(from)
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

    /// Whether votes are blinded now: before two reviews are in, a checker
    /// sees only their own.
    pub fn is_independent_phase(&self) -> bool {
        INDEPENDENT.contains(&self.state)
    }

    /// Whether the author may see the decisions: once the checkers' turn is over.
    pub fn author_sees_decisions(&self) -> bool {
        matches!(
            self.state,
            State::Returned | State::Approved | State::Rejected | State::Released
        )
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
            group: DEFAULT_GROUP.into(),
            filetype: FileType::Output,
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

    fn described(r: &mut Request) {
        r.groups.insert(
            DEFAULT_GROUP.into(),
            Group {
                context: "table 1".into(),
                controls: "rounded".into(),
                comments: vec![],
            },
        );
    }

    fn submitted() -> Request {
        let mut r = Request::new("1".into(), "ws".into(), "alice".into(), "t0");
        r.files.insert("a.csv".into(), file("aa"));
        r.files.insert("b.csv".into(), file("bb"));
        described(&mut r);
        r.submit(&person("alice", true, false), 2, "t1").unwrap();
        r
    }

    fn vote_all(r: &mut Request, who: &Caller, v: Vote) {
        for p in ["a.csv", "b.csv"] {
            r.vote(who, p, v, None, "t").unwrap();
        }
    }

    #[test]
    fn two_submitted_reviews_make_it_reviewed_then_approved() {
        let mut r = submitted();
        let (bob, carol) = (person("bob", false, true), person("carol", true, true));
        r.vote(&bob, "a.csv", Vote::Approved, None, "t2").unwrap();
        assert_eq!(
            r.state,
            State::Submitted,
            "a vote does not move the request"
        );
        assert!(r.submit_review(&bob, "t").is_err(), "b.csv not voted yet");
        r.vote(&bob, "b.csv", Vote::Approved, None, "t3").unwrap();
        r.submit_review(&bob, "t").unwrap();
        assert_eq!(r.state, State::PartiallyReviewed);
        assert!(r.submit_review(&bob, "t").is_err(), "once a turn");
        vote_all(&mut r, &carol, Vote::Approved);
        assert!(r.approve(&bob, 2, "t5").is_err());
        r.submit_review(&carol, "t").unwrap();
        assert_eq!(r.state, State::Reviewed);
        r.approve(&bob, 2, "t7").unwrap();
        assert_eq!(r.state, State::Approved);
    }

    #[test]
    fn a_vote_can_be_reset_until_the_review_is_submitted() {
        let mut r = submitted();
        let bob = person("bob", false, true);
        r.vote(&bob, "a.csv", Vote::Approved, None, "t").unwrap();
        r.reset_vote(&bob, "a.csv", "t").unwrap();
        assert!(r.files["a.csv"].reviews.is_empty());
        vote_all(&mut r, &bob, Vote::Approved);
        r.submit_review(&bob, "t").unwrap();
        assert!(matches!(
            r.reset_vote(&bob, "a.csv", "t"),
            Err(Error::Denied(_))
        ));
    }

    #[test]
    fn self_review_and_non_checkers_are_refused_and_change_nothing() {
        let mut r = submitted();
        let before = r.clone();
        let alice_checker = person("alice", true, true);
        assert!(matches!(
            r.vote(&alice_checker, "a.csv", Vote::Approved, None, "t"),
            Err(Error::Denied(_))
        ));
        assert!(matches!(
            r.vote(
                &person("dave", true, false),
                "a.csv",
                Vote::Approved,
                None,
                "t"
            ),
            Err(Error::Denied(_))
        ));
        assert!(r
            .return_to_author(&alice_checker, None, false, "t")
            .is_err());
        assert!(r
            .vote(
                &person("bob", false, true),
                "nope.csv",
                Vote::Approved,
                None,
                "t"
            )
            .is_err());
        assert_eq!(r, before);
    }

    #[test]
    fn only_airlocks_transitions_and_withdraw_only_while_the_author_owns_it() {
        let mut r = Request::new("1".into(), "ws".into(), "alice".into(), "t0");
        let alice = person("alice", true, false);
        let err = r.submit(&alice, 2, "t").unwrap_err();
        assert!(err.to_string().contains("no files"), "{err}");
        r.files.insert("a.csv".into(), file("aa"));
        assert!(r
            .submit(&alice, 2, "t")
            .unwrap_err()
            .to_string()
            .contains("context"));
        described(&mut r);
        let err = r.approve(&person("bob", false, true), 2, "t").unwrap_err();
        assert!(err.to_string().contains("allowed when reviewed"), "{err}");
        assert!(r.check_publish(&person("bob", false, true)).is_err());
        r.submit(&alice, 2, "t").unwrap();
        let err = r.withdraw(&alice, "t").unwrap_err();
        assert!(matches!(err, Error::WrongState { .. }), "{err}");
        r.return_to_author(&person("bob", false, true), None, false, "t")
            .unwrap();
        r.withdraw(&alice, "t").unwrap();
        assert!(r.submit(&alice, 2, "t").is_err());
    }

    #[test]
    fn a_resubmission_starts_a_turn_in_which_old_votes_count_only_when_reviewed_again() {
        let mut r = submitted();
        let (bob, carol) = (person("bob", false, true), person("carol", false, true));
        vote_all(&mut r, &bob, Vote::Approved);
        r.vote(&carol, "a.csv", Vote::Approved, None, "t").unwrap();
        r.vote(&carol, "b.csv", Vote::ChangesRequested, None, "t")
            .unwrap();
        r.submit_review(&bob, "t").unwrap();
        let err = r.submit_review(&carol, "t").unwrap_err();
        assert!(err.to_string().contains("comment"), "{err}");
        r.comment(
            &carol,
            DEFAULT_GROUP,
            "row 2 is small",
            Visibility::Private,
            "t",
        )
        .unwrap();
        r.submit_review(&carol, "t").unwrap();
        assert_eq!(r.state, State::Reviewed);
        assert!(r.approve(&bob, 2, "t").is_err(), "b.csv is conflicted");
        let turn = r.turn;
        // Returning with changes requested needs a word to the author.
        assert!(r.return_to_author(&bob, None, false, "t").is_err());
        r.comment(
            &bob,
            DEFAULT_GROUP,
            "suppress row 2",
            Visibility::Public,
            "t",
        )
        .unwrap();
        r.return_to_author(&bob, Some("fix b"), false, "t").unwrap();
        assert_eq!(r.turn, turn + 1);
        r.files.get_mut("b.csv").unwrap().sha256 = "b2".into();
        let alice = person("alice", true, false);
        // And the author answers before resubmitting.
        assert!(r.submit(&alice, 2, "t").is_err());
        assert!(r
            .comment(&alice, DEFAULT_GROUP, "private?", Visibility::Private, "t")
            .is_err());
        assert!(r
            .comment(
                &person("eve", false, false),
                DEFAULT_GROUP,
                "hi",
                Visibility::Public,
                "t"
            )
            .is_err());
        r.comment(&alice, DEFAULT_GROUP, "suppressed", Visibility::Public, "t")
            .unwrap();
        r.submit(&alice, 2, "t").unwrap();
        assert_eq!(
            r.state,
            State::Submitted,
            "not straight to reviewed on old votes"
        );
        assert!(r.submitted_reviews.is_empty());
        assert_eq!(
            r.files["b.csv"]
                .reviews
                .iter()
                .find(|x| x.reviewer == "carol")
                .unwrap()
                .vote,
            Vote::Undecided
        );
        // Bob's approval of a.csv stands but b.csv changed: he must vote it again.
        assert!(r.submit_review(&bob, "t").is_err());
        r.vote(&bob, "b.csv", Vote::Approved, None, "t").unwrap();
        r.submit_review(&bob, "t").unwrap();
        assert_eq!(r.state, State::PartiallyReviewed);
    }

    #[test]
    fn an_early_return_undoes_the_turns_votes() {
        let mut r = submitted();
        let bob = person("bob", false, true);
        vote_all(&mut r, &bob, Vote::ChangesRequested);
        assert!(r.is_early_return());
        r.return_to_author(&bob, Some("wrong files"), false, "t")
            .unwrap();
        assert!(r.files.values().all(|f| f.reviews.is_empty()));
        assert_eq!(r.state, State::Returned);
    }

    #[test]
    fn an_approved_request_whose_files_changed_can_be_returned_with_a_new_release_id() {
        let mut r = submitted();
        let (bob, carol) = (person("bob", false, true), person("carol", false, true));
        for c in [&bob, &carol] {
            vote_all(&mut r, c, Vote::Approved);
            r.submit_review(c, "t").unwrap();
        }
        r.approve(&bob, 2, "t").unwrap();
        assert!(r.return_to_author(&bob, None, false, "t").is_err());
        let old = r.airlock_id.clone();
        r.release.release_id = old.clone();
        r.return_to_author(&bob, Some("the job ran again"), true, "t")
            .unwrap();
        assert_eq!(r.state, State::Returned);
        assert_ne!(r.airlock_id, old);
        assert!(r.release.release_id.is_none());
    }
}
