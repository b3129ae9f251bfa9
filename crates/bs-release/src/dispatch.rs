//! The top of a person's command: open the store and the audit log,
//! establish the caller (auditing a refusal), hand the command to its
//! family, and audit every refused command.

use std::time::Duration;

use bs_core::accounts::AccountDb;
use bs_core::config::Config;
use bs_core::{Output, Root};
use serde_json::{json, Map, Value};

use crate::audit::{Audit, Entry};
use crate::cli::{Cli, Command, RequestCommand};
use crate::error::{Error, Result};
use crate::identity::{self, Caller, SudoEnv};
use crate::request::Vote;
use crate::session::Ctx;
use crate::store::Store;
use crate::timefmt;

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
    let ctx = Ctx {
        root,
        config,
        store,
        audit,
        caller,
        out,
    };
    let mut ctx = ctx;
    run_as(&mut ctx, cli.command)
}

/// Do one command for an established caller, auditing a refusal: the CLI
/// and the web UI (`serve`) both come through here, so a command refused
/// on one is refused, and recorded, the same way on the other.
pub(crate) fn run_as(ctx: &mut Ctx<'_>, command: Command) -> Result<Map<String, Value>> {
    let request_id = request_of(&command);
    let result = ctx.dispatch(command);
    if let Err(e) = &result {
        audit_refusal(ctx, request_id.as_deref(), e);
    }
    result
}

/// Every refusal is part of the record (issue 12): a self-review attempt
/// or an unsafe path is worth knowing about. A failure to write this entry
/// must not hide the refusal itself.
pub(crate) fn audit_refusal(ctx: &mut Ctx<'_>, request: Option<&str>, e: &Error) {
    let mut entry = refusal(&ctx.caller.user, request, e);
    if ctx.caller.via != "sudo" {
        if let Value::Object(m) = &mut entry.detail {
            m.insert("via".into(), Value::from(ctx.caller.via));
        }
    }
    let _ = ctx.audit.append(&[entry]);
}

/// The request a command is about, for the record of a refusal.
fn request_of(command: &Command) -> Option<String> {
    match command {
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
    }
}

/// The audit entry of a refused command.
pub(crate) fn refusal(user: &str, request: Option<&str>, e: &Error) -> Entry {
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

impl Ctx<'_> {
    pub(crate) fn dispatch(&mut self, command: Command) -> Result<Map<String, Value>> {
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
            Command::Plan | Command::Apply(_) | Command::Check | Command::Serve { .. } => {
                Err(Error::Usage("handled before".into()))
            }
        }
    }
}
