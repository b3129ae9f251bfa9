//! The job runner's manifest, `<medium>/workspaces/<ws>/metadata/manifest.json`:
//! per output path its privacy level, the job and commit that made it, size,
//! timestamp, sha256, whether it was excluded (and why), and CSV row and
//! column counts. Read leniently: fields we do not know are kept and shown.

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
    pub sha256: Option<String>,
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
        match &self.sha256 {
            Some(s) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => None,
            _ => Some("the manifest records no sha256 for it".into()),
        }
    }

    pub fn sha256(&self) -> &str {
        self.sha256.as_deref().unwrap_or("")
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
        if let Some(s) = &mut meta.sha256 {
            *s = s.to_ascii_lowercase();
        }
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_job_runner_fields_and_keeps_unknown_ones() {
        let m = parse(br#"{"workspace":"w","outputs":{"output/a.csv":{"level":"moderately_sensitive","job_id":"j1","action":"a","commit":"c","size":3,"timestamp":1795334400.5,"sha256":"AB","excluded":false,"message":null,"row_count":1,"col_count":2,"repo":"r"}}}"#).unwrap();
        let a = &m.outputs["output/a.csv"];
        assert_eq!(a.sha256(), "ab");
        assert_eq!(a.extra["repo"], "r");
        assert_eq!(a.date().unwrap(), "2026-11-22T08:00:00.500Z");
        assert!(a.not_releasable().unwrap().contains("sha256"));
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
