//! What the controller reads: job-runner's stage names and a finished
//! job's results as job-runner's agent sends them.
//!
//! The controller reads `results["error"]` of every completed runjob task
//! (a KeyError when absent): truthy means the agent failed and the task is
//! re-issued as `<job>-00N`; falsy means a job result, read by
//! `JobTaskResults.from_dict`, which needs every key written here. A failed
//! research job (nonzero exit, unmatched patterns, cancelled) is a job
//! result, never an agent error. As `redact_results` does, no output name,
//! pattern or unmatched file name leaves the backend: the message and hint
//! of a job with unmatched patterns are blanked.

use serde_json::{json, Value};

use crate::queue::Outcome;

/// job-runner's ExecutorState value for one of our stages. A job still in
/// the queue is being prepared as far as the controller is concerned (it
/// gave the task out because it had room for the job).
pub fn controller_stage(stage: &str) -> &'static str {
    match stage {
        "prepared" => "prepared",
        "executing" => "executing",
        "executed" => "executed",
        "finalizing" => "finalizing",
        "finalized" => "finalized",
        _ => "preparing",
    }
}

/// The code of an outcome that is the agent's failure, not the job's: the
/// controller re-issues the task and a new attempt runs.
pub fn is_agent_error(o: &Outcome) -> bool {
    o.code.as_deref() == Some("internal_error")
}

fn label(o: &Outcome, key: &str) -> String {
    o.facts
        .labels
        .get(key)
        .cloned()
        .unwrap_or_else(|| "unknown".to_string())
}

/// The results of a finished job, redacted, with every key the controller
/// reads.
pub fn results_of(o: &Outcome) -> Value {
    let code = o.code.as_deref();
    let unmatched = code == Some("unmatched_patterns");
    let status_message = if unmatched {
        Some(String::new())
    } else if o.status == "succeeded" {
        Some("Completed successfully".to_string())
    } else {
        o.facts.status_message.clone()
    };
    let hint = if unmatched { Some(String::new()) } else { None };
    let error = if is_agent_error(o) {
        json!({"exception": "AgentError", "message": o.message, "traceback": ""})
    } else {
        json!(false)
    };
    json!({
        "exit_code": o.exit_code,
        "docker_image_id": o.facts.image_id,
        "status_message": status_message,
        "hint": hint,
        "timestamp_ns": o.finished_at_ns,
        "action_version": label(o, "org.opencontainers.image.version"),
        "action_revision": label(o, "org.opencontainers.image.revision"),
        "action_created": label(o, "org.opencontainers.image.created"),
        "base_revision": label(o, "org.opensafely.base.vcs-ref"),
        "base_created": label(o, "org.opencontainers.base.build-date"),
        "has_unmatched_patterns": unmatched,
        "has_level4_excluded_files": o.facts.level4_excluded,
        "cancelled": code == Some("cancelled_by_user"),
        "error": error,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const FROM_DICT: &[&str] = &[
        "exit_code",
        "docker_image_id",
        "status_message",
        "hint",
        "timestamp_ns",
        "action_version",
        "action_revision",
        "action_created",
        "base_revision",
        "base_created",
        "has_unmatched_patterns",
        "has_level4_excluded_files",
        "error",
    ];

    #[test]
    fn every_outcome_carries_every_key_the_controller_reads() {
        let mut unmatched = Outcome::failed("unmatched_patterns", "no match: out/secret.csv", 5);
        unmatched.facts.hint = Some("did you mean out/secret2.csv".into());
        for o in [
            Outcome::succeeded("ok", vec!["out/a.csv".into()], 1),
            Outcome::failed("nonzero_exit", "exited with code 3", 2),
            Outcome::failed("internal_error", "engine gone", 3),
            unmatched,
        ] {
            let r = results_of(&o);
            for k in FROM_DICT {
                assert!(r.get(*k).is_some(), "{k} missing in {r}");
            }
            assert!(!r.to_string().contains("secret"), "{r}");
        }
        let agent = results_of(&Outcome::failed("internal_error", "x", 0));
        assert!(agent["error"].is_object());
        let job = results_of(&Outcome::failed("nonzero_exit", "x", 0));
        assert_eq!(job["error"], json!(false));
        assert_eq!(job["action_version"], "unknown");
    }
}
