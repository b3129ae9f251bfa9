//! A job definition: what `submit` takes and what the queue stores.
//!
//! Validation names the offending field (exit 2): a job is checked once,
//! when it enters the queue, so a bad one never reaches a worker. Names
//! that become paths or container names (id, workspace, action, output
//! globs) are restricted to characters that cannot climb out of a tree.

use std::collections::BTreeMap;

use bs_core::config::{parse_memory, JobsConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{JobsError, Result};

/// Privacy levels of outputs, most sensitive first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    HighlySensitive,
    ModeratelySensitive,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::HighlySensitive => "highly_sensitive",
            Level::ModeratelySensitive => "moderately_sensitive",
        }
    }

    fn parse(s: &str) -> Option<Level> {
        match s {
            "highly_sensitive" => Some(Level::HighlySensitive),
            "moderately_sensitive" => Some(Level::ModeratelySensitive),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub id: String,
    pub workspace: String,
    pub action: String,
    pub image: String,
    /// The argv run in the container (never through a shell of ours).
    pub command: Vec<String>,
    /// Output globs by privacy level, relative to the workspace.
    #[serde(default)]
    pub outputs: BTreeMap<Level, Vec<String>>,
    /// CPUs (fractions allowed).
    pub cpu: f64,
    /// Memory limit in bytes.
    pub memory: u64,
    /// Actions of the same workspace whose outputs are this job's inputs.
    #[serde(default)]
    pub dependencies: Vec<String>,
    /// Environment for the action; values never appear in logs or records.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The study's commit, recorded in the manifest.
    #[serde(default)]
    pub commit: String,
    /// The controller's task this job came from, when it came from one.
    #[serde(default)]
    pub task_id: Option<String>,
    /// What job-runner's controller says about the job beyond what runs it
    /// (the manifest and the results carry these). Empty for `submit`.
    #[serde(default)]
    pub origin: Origin,
}

/// The job-runner fields of a controller's definition that do not change
/// how the container runs but are recorded: the RAP (job request), the
/// study's repository, the user, the level-4 rules of the task.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Origin {
    #[serde(default)]
    pub rap_id: String,
    #[serde(default)]
    pub repo: String,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub image_sha: Option<String>,
    #[serde(default)]
    pub allow_database_access: bool,
    #[serde(default)]
    pub database_name: Option<String>,
    #[serde(default)]
    pub input_job_ids: Vec<String>,
    #[serde(default)]
    pub created_at: Option<i64>,
    /// The task's level-4 rules; `None` means the backend's configured ones.
    #[serde(default)]
    pub level4: Option<Level4Rules>,
    /// Fields of the definition this version does not know: kept (a
    /// controller upgrade must not stop a backend), never acted on.
    #[serde(default)]
    pub unknown: BTreeMap<String, Value>,
}

/// job-runner's `level4_max_filesize`, `level4_max_csv_rows` and
/// `level4_file_types` (suffixes with their dot, as job-runner compares).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Level4Rules {
    pub max_filesize: u64,
    pub max_csv_rows: u64,
    pub file_types: Vec<String>,
}

/// True for names safe as a path component and in a container name.
pub fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

fn valid_image(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/:@".contains(&b))
}

/// A relative glob that stays inside the workspace.
fn glob_problem(g: &str) -> Option<&'static str> {
    if g.is_empty() {
        return Some("empty pattern");
    }
    if g.starts_with('/') {
        return Some("must be relative to the workspace");
    }
    if g.contains('\0') || g.contains('\\') {
        return Some("contains a NUL or a backslash");
    }
    if g.split('/').any(|c| c == ".." || c == "." || c.is_empty()) {
        return Some("has an empty, . or .. component");
    }
    if g.split('/').next() == Some("metadata") {
        return Some("metadata/ is where bs-jobs writes the manifest and logs");
    }
    None
}

fn field_str<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Result<&'a str> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(JobsError::invalid(key, "must be a string")),
        None => Err(JobsError::invalid(key, "is required")),
    }
}

const KNOWN: &[&str] = &[
    "id",
    "workspace",
    "action",
    "image",
    "command",
    "outputs",
    "cpu",
    "memory",
    "dependencies",
    "env",
    "commit",
    "task_id",
];

/// Check a job definition as submitted (JSON) and fill in the defaults.
pub fn parse(value: &Value, config: &JobsConfig) -> Result<JobSpec> {
    let obj = value
        .as_object()
        .ok_or_else(|| JobsError::invalid("(job)", "must be a JSON object"))?;
    if let Some(unknown) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(JobsError::invalid(unknown.as_str(), "unknown field"));
    }
    let id = field_str(obj, "id")?;
    if !valid_name(id, 64) {
        return Err(JobsError::invalid(
            "id",
            "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        ));
    }
    let workspace = field_str(obj, "workspace")?;
    if !valid_name(workspace, 128) {
        return Err(JobsError::invalid(
            "workspace",
            "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
        ));
    }
    let action = field_str(obj, "action")?;
    if !valid_name(action, 128) {
        return Err(JobsError::invalid(
            "action",
            "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
        ));
    }
    let image = field_str(obj, "image")?;
    if !valid_image(image) {
        return Err(JobsError::invalid(
            "image",
            "not an image reference (lower-case name[:tag][@digest])",
        ));
    }
    let command = match obj.get("command") {
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) if !s.contains('\0') => Ok(s.clone()),
                _ => Err(JobsError::invalid(
                    format!("command[{i}]"),
                    "must be a string without NUL",
                )),
            })
            .collect::<Result<Vec<_>>>()?,
        Some(Value::Array(_)) => return Err(JobsError::invalid("command", "must not be empty")),
        Some(_) => {
            return Err(JobsError::invalid(
                "command",
                "must be an argv list of strings, not a shell string",
            ))
        }
        None => return Err(JobsError::invalid("command", "is required")),
    };
    let mut outputs = BTreeMap::new();
    match obj.get("outputs") {
        None | Some(Value::Null) => {}
        Some(Value::Object(levels)) => {
            for (level, globs) in levels {
                let lv = Level::parse(level).ok_or_else(|| {
                    JobsError::invalid(
                        format!("outputs.{level}"),
                        "unknown privacy level (highly_sensitive, moderately_sensitive)",
                    )
                })?;
                let list = globs.as_array().ok_or_else(|| {
                    JobsError::invalid(format!("outputs.{level}"), "must be a list of globs")
                })?;
                let mut out = Vec::new();
                for (i, g) in list.iter().enumerate() {
                    let field = format!("outputs.{level}[{i}]");
                    let g = g
                        .as_str()
                        .ok_or_else(|| JobsError::invalid(&field, "must be a string"))?;
                    if let Some(problem) = glob_problem(g) {
                        return Err(JobsError::invalid(field, problem));
                    }
                    out.push(g.to_string());
                }
                outputs.insert(lv, out);
            }
        }
        Some(_) => {
            return Err(JobsError::invalid(
                "outputs",
                "must be an object of level -> globs",
            ))
        }
    }
    let max_cpu = config.max_cpu;
    let cpu = match obj.get("cpu") {
        None | Some(Value::Null) => config.default_cpu,
        Some(v) => match v.as_f64() {
            Some(c) if c > 0.0 && c <= max_cpu => c,
            _ => {
                return Err(JobsError::invalid(
                    "cpu",
                    format!("must be a number above 0 and at most {max_cpu}"),
                ))
            }
        },
    };
    let max_memory = parse_memory(&config.max_memory).unwrap_or(u64::MAX);
    let memory = match obj.get("memory") {
        None | Some(Value::Null) => parse_memory(&config.default_memory).unwrap_or(1 << 32),
        Some(Value::String(s)) => parse_memory(s).ok_or_else(|| {
            JobsError::invalid("memory", "expected bytes or a size like \"512m\"")
        })?,
        Some(Value::Number(n)) => n
            .as_u64()
            .filter(|n| *n > 0)
            .ok_or_else(|| JobsError::invalid("memory", "must be a positive number of bytes"))?,
        Some(_) => {
            return Err(JobsError::invalid(
                "memory",
                "expected bytes or a size like \"512m\"",
            ))
        }
    };
    // The engine refuses limits under 6 MiB; say so here, not at run time.
    if memory < 6 << 20 || memory > max_memory {
        return Err(JobsError::invalid(
            "memory",
            format!("must be between 6 MiB and {max_memory} bytes"),
        ));
    }
    let mut dependencies = Vec::new();
    match obj.get("dependencies") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for (i, v) in items.iter().enumerate() {
                let field = format!("dependencies[{i}]");
                let d = v
                    .as_str()
                    .ok_or_else(|| JobsError::invalid(&field, "must be an action name"))?;
                if !valid_name(d, 128) {
                    return Err(JobsError::invalid(field, "not a valid action name"));
                }
                if d == action {
                    return Err(JobsError::invalid(
                        field,
                        "an action cannot depend on itself",
                    ));
                }
                dependencies.push(d.to_string());
            }
        }
        Some(_) => {
            return Err(JobsError::invalid(
                "dependencies",
                "must be a list of action names",
            ))
        }
    }
    let mut env = BTreeMap::new();
    match obj.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (k, v) in m {
                let field = format!("env.{k}");
                let ok_key = !k.is_empty()
                    && !k.as_bytes()[0].is_ascii_digit()
                    && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                if !ok_key {
                    return Err(JobsError::invalid(field, "not a valid variable name"));
                }
                let v = v
                    .as_str()
                    .filter(|v| !v.contains('\0'))
                    .ok_or_else(|| JobsError::invalid(&field, "must be a string without NUL"))?;
                env.insert(k.clone(), v.to_string());
            }
        }
        Some(_) => return Err(JobsError::invalid("env", "must be an object of strings")),
    }
    let commit = match obj.get("commit") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) if s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
            s.clone()
        }
        Some(_) => return Err(JobsError::invalid("commit", "must be a hex commit id")),
    };
    let task_id = match obj.get("task_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if valid_name(s, 128) => Some(s.clone()),
        Some(_) => return Err(JobsError::invalid("task_id", "not a valid task id")),
    };
    Ok(JobSpec {
        id: id.to_string(),
        workspace: workspace.to_string(),
        action: action.to_string(),
        image: image.to_string(),
        command,
        outputs,
        cpu,
        memory,
        dependencies,
        env,
        commit,
        task_id,
        origin: Origin::default(),
    })
}

/// Every field of job-runner's `JobDefinition` with its type; anything
/// else is kept in [`Origin::unknown`].
const DEFINITION_FIELDS: &[&str] = &[
    "id",
    "rap_id",
    "task_id",
    "repo_url",
    "commit",
    "study",
    "workspace",
    "action",
    "created_at",
    "image",
    "image_sha",
    "args",
    "env",
    "inputs",
    "input_job_ids",
    "output_spec",
    "allow_database_access",
    "level4_max_csv_rows",
    "level4_max_filesize",
    "user",
    "database_name",
    "cpu_count",
    "memory_limit",
    "level4_file_types",
];

fn opt_str(obj: &serde_json::Map<String, Value>, key: &str) -> Result<Option<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(JobsError::invalid(key, "must be a string or null")),
    }
}

fn opt_u64(obj: &serde_json::Map<String, Value>, key: &str) -> Result<Option<u64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(Some)
            .ok_or_else(|| JobsError::invalid(key, "must be a whole number")),
    }
}

fn str_list(obj: &serde_json::Map<String, Value>, key: &str) -> Result<Vec<String>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| JobsError::invalid(format!("{key}[{i}]"), "must be a string"))
            })
            .collect(),
        Some(_) => Err(JobsError::invalid(key, "must be a list of strings")),
    }
}

/// A controller's task definition (job-runner's `JobDefinition`, every
/// field) checked and turned into a job. `task_id` is the task it came in.
pub fn from_definition(def: &Value, task_id: &str, config: &JobsConfig) -> Result<JobSpec> {
    let obj = def
        .as_object()
        .ok_or_else(|| JobsError::invalid("definition", "must be a JSON object"))?;
    let mut mapped = serde_json::Map::new();
    for key in ["id", "workspace", "action", "image"] {
        mapped.insert(key.into(), Value::String(field_str(obj, key)?.to_string()));
    }
    let args = str_list(obj, "args")?;
    mapped.insert("env".into(), obj.get("env").cloned().unwrap_or(Value::Null));
    let mut by_level: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    match obj.get("output_spec") {
        None | Some(Value::Null) => {}
        Some(Value::Object(spec)) => {
            for (pattern, level) in spec {
                let level = level.as_str().ok_or_else(|| {
                    JobsError::invalid("output_spec", "each privacy level must be a string")
                })?;
                by_level
                    .entry(level.to_string())
                    .or_default()
                    .push(Value::String(pattern.clone()));
            }
        }
        Some(_) => {
            return Err(JobsError::invalid(
                "output_spec",
                "must be an object of pattern -> privacy level",
            ))
        }
    }
    mapped.insert(
        "outputs".into(),
        serde_json::to_value(by_level).unwrap_or(Value::Null),
    );
    match obj.get("cpu_count") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            let n: f64 = s
                .trim()
                .parse()
                .map_err(|_| JobsError::invalid("cpu_count", "must be a number"))?;
            mapped.insert("cpu".into(), serde_json::json!(n));
        }
        Some(v @ Value::Number(_)) => {
            mapped.insert("cpu".into(), v.clone());
        }
        Some(_) => return Err(JobsError::invalid("cpu_count", "must be a number")),
    }
    if let Some(m) = obj.get("memory_limit").filter(|v| !v.is_null()) {
        mapped.insert("memory".into(), m.clone());
    }
    let study = match obj.get("study") {
        None | Some(Value::Null) => serde_json::Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(JobsError::invalid("study", "must be an object")),
    };
    let study_commit = opt_str(&study, "commit")
        .map_err(|_| JobsError::invalid("study.commit", "must be a string or null"))?;
    let commit = match study_commit {
        Some(c) => Some(c),
        None => opt_str(obj, "commit")?,
    };
    if let Some(c) = commit {
        mapped.insert("commit".into(), Value::String(c));
    }
    mapped.insert("task_id".into(), Value::String(task_id.to_string()));
    // job-runner runs the image's own entrypoint when args is empty; `parse`
    // wants an argv, so it is checked with a placeholder and emptied after.
    let empty_args = args.is_empty();
    mapped.insert(
        "command".into(),
        if empty_args {
            serde_json::json!(["-"])
        } else {
            serde_json::to_value(&args).unwrap_or(Value::Null)
        },
    );
    let mut job = parse(&Value::Object(mapped), config).map_err(|e| match e {
        JobsError::Invalid { field, message } => {
            let field = match field.as_str() {
                "command" => "args".to_string(),
                "cpu" => "cpu_count".to_string(),
                "memory" => "memory_limit".to_string(),
                f if f.starts_with("outputs") => "output_spec".to_string(),
                f if f.starts_with("command[") => f.replacen("command", "args", 1),
                f => f.to_string(),
            };
            JobsError::Invalid { field, message }
        }
        e => e,
    })?;
    if empty_args {
        job.command.clear();
    }
    let repo = match opt_str(&study, "git_repo_url")
        .map_err(|_| JobsError::invalid("study.git_repo_url", "must be a string or null"))?
    {
        Some(r) => r,
        None => opt_str(obj, "repo_url")?.unwrap_or_default(),
    };
    let _ = opt_str(obj, "repo_url")?;
    let allow_database_access = match obj.get("allow_database_access") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(JobsError::invalid(
                "allow_database_access",
                "must be true or false",
            ))
        }
    };
    let input_job_ids = str_list(obj, "input_job_ids")?;
    if let Some(bad) = input_job_ids.iter().position(|j| !valid_name(j, 64)) {
        return Err(JobsError::invalid(
            format!("input_job_ids[{bad}]"),
            "not a job id",
        ));
    }
    let _ = str_list(obj, "inputs")?;
    let created_at = match obj.get("created_at") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .ok_or_else(|| JobsError::invalid("created_at", "must be a UNIX time"))?,
        ),
    };
    let max_filesize = opt_u64(obj, "level4_max_filesize")?;
    let max_csv_rows = opt_u64(obj, "level4_max_csv_rows")?;
    let file_types = match obj.get("level4_file_types") {
        None | Some(Value::Null) => None,
        Some(_) => Some(str_list(obj, "level4_file_types")?),
    };
    let level4 = if max_filesize.is_some() || max_csv_rows.is_some() || file_types.is_some() {
        Some(Level4Rules {
            max_filesize: max_filesize.unwrap_or(config.medium_max_bytes),
            max_csv_rows: max_csv_rows.unwrap_or(config.medium_max_csv_rows),
            // job-runner's default when the field is absent: CSV only.
            file_types: file_types.unwrap_or_else(|| vec![".csv".into()]),
        })
    } else {
        None
    };
    let unknown = obj
        .iter()
        .filter(|(k, _)| !DEFINITION_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    job.origin = Origin {
        rap_id: opt_str(obj, "rap_id")?.unwrap_or_default(),
        repo,
        user: opt_str(obj, "user")?,
        image_sha: opt_str(obj, "image_sha")?,
        allow_database_access,
        database_name: opt_str(obj, "database_name")?,
        input_job_ids,
        created_at,
        level4,
        unknown,
    };
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> Value {
        json!({"id": "j1", "workspace": "ws", "action": "a", "image": "bs-busybox:latest",
               "command": ["sh", "-c", "true"], "outputs": {"moderately_sensitive": ["out/*.csv"]},
               "cpu": 1, "memory": "64m", "dependencies": ["prev"]})
    }

    fn field_of(v: Value) -> String {
        match parse(&v, &JobsConfig::default()) {
            Err(JobsError::Invalid { field, .. }) => field,
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_good_job_parses_with_defaults_filled_in() {
        let mut v = good();
        v.as_object_mut().unwrap().remove("cpu");
        let spec = parse(&v, &JobsConfig::default()).unwrap();
        assert_eq!(spec.cpu, 2.0);
        assert_eq!(spec.memory, 64 << 20);
        assert_eq!(spec.outputs[&Level::ModeratelySensitive], vec!["out/*.csv"]);
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(&str, Value)> = vec![
            ("id", json!("../x")),
            ("workspace", json!("")),
            ("action", json!("a b")),
            ("image", json!("UPPER:1")),
            ("command", json!("sh -c true")),
            ("cpu", json!(0)),
            ("memory", json!("1k")),
            ("dependencies", json!("prev")),
        ];
        for (key, bad) in cases {
            let mut v = good();
            v[key] = bad;
            assert_eq!(field_of(v), key);
        }
        let mut v = good();
        v["outputs"] = json!({"moderately_sensitive": ["../etc/passwd"]});
        assert_eq!(field_of(v), "outputs.moderately_sensitive[0]");
        let mut v = good();
        v["outputs"] = json!({"secret": ["x"]});
        assert_eq!(field_of(v), "outputs.secret");
        let mut v = good();
        v["command"] = json!(["sh", 1]);
        assert_eq!(field_of(v), "command[1]");
        let mut v = good();
        v["colour"] = json!("red");
        assert_eq!(field_of(v), "colour");
        let mut v = good();
        v.as_object_mut().unwrap().remove("image");
        assert_eq!(field_of(v), "image");
    }
}
