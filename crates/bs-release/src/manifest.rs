//! The job runner's manifest, `<medium>/workspaces/<ws>/metadata/manifest.json`,
//! as job-runner's `persist_outputs` writes it: per output path its privacy
//! level, the job, request, action, repo and commit that made it, size,
//! `timestamp` (the mtime, a number), `content_hash` (sha256 hex), whether
//! it was excluded (and why), CSV row and column counts, and the
//! `out_of_date_output` / `out_of_date_action` flags a later run sets on
//! outputs its action no longer makes or whose action left project.yaml.
//! Read leniently: fields we do not know are kept and shown. `sha256` is
//! read where `content_hash` is absent (manifests of bs-jobs before it wrote
//! job-runner's format).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The level whose outputs may be released.
pub const RELEASABLE_LEVEL: &str = "moderately_sensitive";
pub const MANIFEST_PATH: &str = "metadata/manifest.json";
/// A manifest bigger than this is refused rather than read into memory.
pub const MAX_MANIFEST_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Manifest {
    #[serde(default)]
    pub outputs: BTreeMap<String, OutputMeta>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct OutputMeta {
    #[serde(default)]
    pub level: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_date_output: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_date_action: Option<bool>,
    #[serde(default)]
    pub excluded: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub col_count: Option<u64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl OutputMeta {
    /// Why this output may not be released, if it may not.
    pub fn not_releasable(&self) -> Option<String> {
        if self.level != RELEASABLE_LEVEL {
            return Some(format!(
                "privacy level {:?}: only {RELEASABLE_LEVEL} outputs are released",
                self.level
            ));
        }
        if self.excluded {
            return Some(format!(
                "excluded by the job runner: {}",
                self.message.as_deref().unwrap_or("no reason given")
            ));
        }
        if self.out_of_date_output == Some(true) {
            return Some(
                "out of date: the last run of its action no longer makes this output".into(),
            );
        }
        if self.out_of_date_action == Some(true) {
            return Some("out of date: its action is no longer in project.yaml".into());
        }
        let hash = self.sha256();
        if hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            None
        } else {
            Some("the manifest records no content_hash for it".into())
        }
    }

    /// The content's sha256: job-runner's `content_hash`, else the older `sha256`.
    pub fn sha256(&self) -> &str {
        self.content_hash
            .as_deref()
            .or(self.sha256.as_deref())
            .unwrap_or("")
    }

    /// The output's time as text, for the release server's `date`.
    pub fn date(&self) -> Option<String> {
        match &self.timestamp {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => n
                .as_f64()
                .map(|secs| crate::timefmt::from_unix_millis((secs * 1000.0) as i64)),
            _ => None,
        }
    }
}

pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
    let mut m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    // Hashes compare as lower-case hex.
    for meta in m.outputs.values_mut() {
        for s in [&mut meta.content_hash, &mut meta.sha256]
            .into_iter()
            .flatten()
        {
            *s = s.to_ascii_lowercase();
        }
    }
    Ok(m)
}

/// Why `path` may not be requested at all, whatever the manifest says:
/// Airlock's rule, a file type outside the level-4 list or a dotfile.
pub fn type_refusal(path: &str, allowed: &[String]) -> Option<String> {
    let name = path.rsplit('/').next().unwrap_or(path);
    if name.starts_with('.') {
        return Some("a dotfile cannot be released".into());
    }
    let ext = crate::checks::extension(path);
    if allowed.contains(&ext) {
        None
    } else if ext.is_empty() {
        Some("a file without an extension is not a level-4 file type".into())
    } else {
        Some(format!(
            "files of type .{ext} are not a level-4 file type ({})",
            allowed.join(", ")
        ))
    }
}

/// Why `path` cannot be added, from the manifest: not an output of a job,
/// the message file of an excluded output, or an output that may not be released.
pub fn add_refusal(manifest: &Manifest, path: &str) -> Option<String> {
    match manifest.outputs.get(path) {
        Some(meta) => meta.not_releasable(),
        None => {
            let excluded = path
                .strip_suffix(".txt")
                .and_then(|p| manifest.outputs.get(p))
                .is_some_and(|m| m.excluded);
            Some(if excluded {
                "the job runner's note on why an output was excluded from level 4: not an output"
                    .into()
            } else {
                "not in the job manifest: only outputs of a job can be released".into()
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_job_runners_manifest_with_content_hash_and_out_of_date_flags() {
        // As agent/executors/local.py's get_output_metadata and
        // update_manifest_outputs_and_actions write it.
        let hash = "C".repeat(64);
        let text = format!(
            r#"{{"workspace":"w","repo":null,"outputs":{{
            "output/t.csv":{{"level":"moderately_sensitive","job_id":"j","job_request":"r",
              "action":"gen","user":"alice","repo":"https://github.com/o/s","commit":"c",
              "size":5,"timestamp":1795334400.25,"content_hash":"{hash}","excluded":false,
              "message":null,"row_count":1,"col_count":2}},
            "output/old.csv":{{"level":"moderately_sensitive","action":"gen","content_hash":"{hash}",
              "excluded":false,"out_of_date_output":true}},
            "output/gone.csv":{{"level":"moderately_sensitive","action":"old","content_hash":"{hash}",
              "excluded":false,"out_of_date_action":true}},
            "output/x.csv":{{"level":"moderately_sensitive","action":"gen","content_hash":"{hash}",
              "excluded":true,"message":"has a patient_id column"}}}}}}"#
        );
        let m = parse(text.as_bytes()).unwrap();
        let t = &m.outputs["output/t.csv"];
        assert_eq!(t.sha256(), "c".repeat(64));
        assert_eq!(t.not_releasable(), None);
        assert_eq!(t.repo.as_deref(), Some("https://github.com/o/s"));
        assert_eq!(t.date().unwrap(), "2026-11-22T08:00:00.250Z");
        assert!(add_refusal(&m, "output/old.csv")
            .unwrap()
            .contains("out of date"));
        assert!(add_refusal(&m, "output/gone.csv")
            .unwrap()
            .contains("project.yaml"));
        assert!(add_refusal(&m, "output/x.csv")
            .unwrap()
            .contains("patient_id"));
        assert!(add_refusal(&m, "output/x.csv.txt")
            .unwrap()
            .contains("excluded"));
        assert!(add_refusal(&m, "output/nope.csv")
            .unwrap()
            .contains("not in the job manifest"));
        assert_eq!(add_refusal(&m, "output/t.csv"), None);
    }

    #[test]
    fn dotfiles_and_types_outside_the_level4_list_are_refused() {
        let allowed: Vec<String> = ["csv", "txt"].iter().map(|s| s.to_string()).collect();
        assert_eq!(type_refusal("output/a.csv", &allowed), None);
        assert!(type_refusal("output/.hidden.csv", &allowed)
            .unwrap()
            .contains("dotfile"));
        assert!(type_refusal("output/report.docx", &allowed)
            .unwrap()
            .contains(".docx"));
        assert!(type_refusal("output/README", &allowed).is_some());
    }

    #[test]
    fn parses_the_job_runner_fields_and_keeps_unknown_ones() {
        let m = parse(br#"{"workspace":"w","outputs":{"output/a.csv":{"level":"moderately_sensitive","job_id":"j1","action":"a","commit":"c","size":3,"timestamp":1795334400.5,"sha256":"AB","excluded":false,"message":null,"row_count":1,"col_count":2,"repo":"r"}}}"#).unwrap();
        let a = &m.outputs["output/a.csv"];
        assert_eq!(a.sha256(), "ab");
        assert_eq!(a.repo.as_deref(), Some("r"));
        assert_eq!(a.date().unwrap(), "2026-11-22T08:00:00.500Z");
        assert!(a.not_releasable().unwrap().contains("content_hash"));
    }

    #[test]
    fn reads_the_manifest_bs_jobs_writes() {
        // The shape of bs-jobs' finalize::Manifest: actions, string timestamps, "" messages.
        let sha = "a".repeat(64);
        let text = format!(
            r#"{{"workspace":"w","actions":{{"gen":{{"job_id":"j","status":"succeeded"}}}},
            "outputs":{{"output/t.csv":{{"level":"moderately_sensitive","job_id":"j","action":"gen",
            "commit":"c","size":5,"timestamp":"2026-11-22T06:00:00.000000000Z","sha256":"{sha}",
            "excluded":false,"message":"","row_count":1,"col_count":1}}}}}}"#
        );
        let m = parse(text.as_bytes()).unwrap();
        let t = &m.outputs["output/t.csv"];
        assert_eq!(t.not_releasable(), None);
        assert_eq!(t.date().unwrap(), "2026-11-22T06:00:00.000000000Z");
        assert_eq!(t.row_count, Some(1));
    }

    #[test]
    fn highly_sensitive_and_excluded_outputs_are_not_releasable() {
        let h = OutputMeta {
            level: "highly_sensitive".into(),
            sha256: Some("0".repeat(64)),
            ..Default::default()
        };
        assert!(h.not_releasable().unwrap().contains("highly_sensitive"));
        let e = OutputMeta {
            level: RELEASABLE_LEVEL.into(),
            excluded: true,
            message: Some("has patient_id".into()),
            sha256: Some("0".repeat(64)),
            ..Default::default()
        };
        assert!(e.not_releasable().unwrap().contains("patient_id"));
        let ok = OutputMeta {
            level: RELEASABLE_LEVEL.into(),
            sha256: Some("0".repeat(64)),
            ..Default::default()
        };
        assert_eq!(ok.not_releasable(), None);
    }
}
