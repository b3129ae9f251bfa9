//! Plan first, then apply. A tool computes its changes as data (a serde
//! enum implementing [`Change`]); the same data is the JSON record, the dry
//! run and the input of `apply --plan`.
//!
//! `apply --plan FILE|-` never trusts the plan it is given: the tool computes
//! a fresh plan from the live system and applies only the given changes that
//! are still in it. A change that is no longer needed (someone else did it)
//! or no longer valid (the system moved on) is reported and skipped.

use std::io::BufRead;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{CoreError, Result};

/// The verb a run was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Plan,
    Apply,
    Check,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Plan => "plan",
            Mode::Apply => "apply",
            Mode::Check => "check",
        }
    }

    /// Whether this verb changes the system (and so takes the run lock).
    pub fn mutates(self) -> bool {
        self == Mode::Apply
    }
}

/// One change a tool can make. Serialised with an `action` tag and a
/// `target` field so records read the same in every tool.
pub trait Change: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug {
    /// The record `type` (`group`, `user`, `keys`, ...).
    fn record_type(&self) -> &'static str;
    /// What the change is about, as an operator would name it.
    fn target(&self) -> String;
}

/// Where `apply --plan` reads its plan from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanInput {
    Stdin,
    File(PathBuf),
}

impl PlanInput {
    pub fn parse(arg: &str) -> PlanInput {
        if arg == "-" {
            PlanInput::Stdin
        } else {
            PlanInput::File(PathBuf::from(arg))
        }
    }

    pub fn read<C: Change>(&self, tool: &str) -> Result<Vec<C>> {
        match self {
            PlanInput::Stdin => read_plan(tool, std::io::stdin().lock()),
            PlanInput::File(path) => {
                let file = std::fs::File::open(path).map_err(|e| CoreError::io(path, e))?;
                read_plan(tool, std::io::BufReader::new(file))
            }
        }
    }
}

/// The changes in a plan: the records of `tool` that say `"changed": true`.
/// Summaries, errors, other tools' records and unchanged items are ignored,
/// so the output of `plan | jq 'select(...)'` can be fed back as is.
pub fn read_plan<C: Change>(tool: &str, reader: impl BufRead) -> Result<Vec<C>> {
    let mut changes = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| CoreError::PlanInput {
            line: i + 1,
            message: e.to_string(),
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&line).map_err(|e| CoreError::PlanInput {
            line: i + 1,
            message: format!("not a JSON record: {e}"),
        })?;
        if value.get("tool").and_then(Value::as_str) != Some(tool) {
            continue;
        }
        if value.get("changed").and_then(Value::as_bool) != Some(true) {
            continue;
        }
        let change = C::deserialize(&value).map_err(|e| CoreError::PlanInput {
            line: i + 1,
            message: format!("not a {tool} change: {e}"),
        })?;
        changes.push(change);
    }
    Ok(changes)
}

/// Split a fresh plan against the one given back: the changes to apply
/// (in the fresh plan's order), and the given ones that are not needed any
/// more or no longer match what the live system needs.
pub fn still_needed<C: Change>(fresh: Vec<C>, given: Vec<C>) -> (Vec<C>, Vec<C>) {
    let mut apply = Vec::new();
    let mut rest = given;
    for change in fresh {
        if let Some(pos) = rest.iter().position(|g| *g == change) {
            rest.remove(pos);
            apply.push(change);
        }
    }
    (apply, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "action", rename_all = "snake_case")]
    enum Demo {
        Create { target: String },
        Remove { target: String },
    }

    impl Change for Demo {
        fn record_type(&self) -> &'static str {
            "demo"
        }
        fn target(&self) -> String {
            match self {
                Demo::Create { target } | Demo::Remove { target } => target.clone(),
            }
        }
    }

    #[test]
    fn reads_only_changed_records_of_the_tool() {
        let text = r#"{"tool":"bs-x","type":"demo","action":"create","target":"a","changed":true,"mode":"plan"}
{"tool":"bs-x","type":"demo","action":"create","target":"b","changed":false}
{"tool":"bs-y","type":"demo","action":"create","target":"c","changed":true}

{"tool":"bs-x","type":"summary","changed":1,"unchanged":1,"failed":0,"ok":true,"schema":1}
"#;
        let plan: Vec<Demo> = read_plan("bs-x", text.as_bytes()).unwrap();
        assert_eq!(plan, vec![Demo::Create { target: "a".into() }]);
    }

    #[test]
    fn garbage_in_a_plan_is_a_usage_error_naming_the_line() {
        let err = read_plan::<Demo>("bs-x", "{}\nnot json\n".as_bytes()).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        assert_eq!(err.exit(), crate::Exit::Usage);
    }

    #[test]
    fn only_changes_still_needed_are_applied() {
        let fresh = vec![
            Demo::Create { target: "a".into() },
            Demo::Create { target: "b".into() },
        ];
        let given = vec![
            Demo::Create { target: "b".into() },
            Demo::Remove { target: "z".into() },
        ];
        let (apply, stale) = still_needed(fresh, given);
        assert_eq!(apply, vec![Demo::Create { target: "b".into() }]);
        assert_eq!(stale, vec![Demo::Remove { target: "z".into() }]);
    }
}
