//! After the container: match the output globs, copy outputs into the
//! high-privacy workspace, moderately_sensitive ones also into the
//! medium-privacy workspace when they pass its rules, and write
//! `metadata/manifest.json` and `metadata/<action>.log` in both trees.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;

use bs_core::safefs::{DirFd, FileSpec};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Result;
use crate::executor::RunResult;
use crate::files;
use crate::glob;
use crate::spec::{JobSpec, Level};

/// The open privacy trees and the rules for them.
pub struct Trees {
    /// `<high>/workspaces`
    pub high: DirFd,
    /// `<medium>/workspaces`
    pub medium: DirFd,
    /// `<high>/volumes`
    pub volumes: DirFd,
    /// `<high_privacy>/logs`: `YYYY-MM/os-job-<id>/` a job, as job-runner keeps them.
    pub logs: DirFd,
    /// `<high_privacy>/archives`, where archived workspaces go (if it exists).
    pub archives: Option<DirFd>,
    pub file_spec: FileSpec,
    pub dir_spec: FileSpec,
    pub medium_max_bytes: u64,
    pub medium_max_csv_rows: u64,
    pub medium_allowed_types: Vec<String>,
}

/// One output in the manifest.
/// One output in the manifest, with job-runner's keys and types: Airlock
/// calls `int()` on `timestamp` (the file's mtime, a number) and reads
/// `content_hash` and `repo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestOutput {
    pub level: Level,
    pub job_id: String,
    #[serde(default)]
    pub job_request: String,
    pub action: String,
    #[serde(default)]
    pub repo: String,
    pub commit: String,
    #[serde(default)]
    pub user: Option<String>,
    pub size: u64,
    #[serde(deserialize_with = "number_or_zero")]
    pub timestamp: f64,
    /// sha256 hex of the content (job-runner's and Airlock's key).
    #[serde(default)]
    pub content_hash: String,
    /// The key older bs-jobs manifests used instead of `content_hash`: read
    /// from them, never written (job-runner's manifest has no such key).
    #[serde(default, skip_serializing)]
    pub sha256: String,
    pub excluded: bool,
    #[serde(default)]
    pub message: Option<String>,
    pub row_count: Option<u64>,
    pub col_count: Option<u64>,
    /// A later run of the same action did not produce this file again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_date_output: Option<bool>,
    /// The action is no longer in the study's project.yaml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_of_date_action: Option<bool>,
}

/// Older bs-jobs manifests held an RFC 3339 string: read it as unknown
/// (0) rather than refuse the whole manifest.
fn number_or_zero<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    Ok(Value::deserialize(d)?.as_f64().unwrap_or(0.0))
}

/// `<workspace>/metadata/manifest.json` as job-runner writes it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    pub workspace: String,
    #[serde(default)]
    pub repo: Option<String>,
    #[serde(default)]
    pub outputs: BTreeMap<String, ManifestOutput>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: &'static str,
    pub message: String,
}

/// Decide from the run how the job ended, before looking at outputs.
pub fn judge_run(run: &RunResult, job: &JobSpec, time_limit_secs: u64) -> Option<Failure> {
    if let Some(refused) = &run.refused {
        return Some(Failure {
            code: "internal_error",
            message: format!("the engine did not apply the job's isolation settings: {refused}"),
        });
    }
    if run.cancelled {
        return Some(Failure {
            code: "cancelled_by_user",
            message: "cancelled by user".into(),
        });
    }
    if run.timed_out {
        return Some(Failure {
            code: "killed_by_admin",
            message: format!(
                "ran longer than the time limit of {time_limit_secs} s and was killed"
            ),
        });
    }
    if run.oom_killed {
        return Some(Failure {
            code: "nonzero_exit",
            message: format!(
                "ran out of memory (limit for this job was {} MiB)",
                job.memory >> 20
            ),
        });
    }
    if run.exit_code != 0 {
        return Some(Failure {
            code: "nonzero_exit",
            message: format!("exited with code {}", run.exit_code),
        });
    }
    None
}

/// The outputs a job produced, by path, with the level that wins when two
/// patterns match (highly_sensitive), and the patterns that matched nothing.
pub fn match_outputs(
    job: &JobSpec,
    files: &[String],
    inputs: &BTreeSet<String>,
) -> (BTreeMap<String, Level>, Vec<String>) {
    let mut matched: BTreeMap<String, Level> = BTreeMap::new();
    let mut unmatched = Vec::new();
    for (level, globs) in &job.outputs {
        for g in globs {
            let mut any = false;
            for f in files
                .iter()
                .filter(|f| !inputs.contains(*f) && glob::matches(g, f))
            {
                any = true;
                matched
                    .entry(f.clone())
                    .and_modify(|l| *l = (*l).min(*level))
                    .or_insert(*level);
            }
            if !any {
                unmatched.push(g.clone());
            }
        }
    }
    (matched, unmatched)
}

/// Counts lines and keeps the first one while a file is copied.
struct CsvProbe<'a> {
    inner: &'a mut dyn Read,
    newlines: u64,
    first_line: Vec<u8>,
    header_done: bool,
    last: Option<u8>,
}

impl Read for CsvProbe<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            if b == b'\n' {
                self.newlines += 1;
                self.header_done = true;
            } else if !self.header_done && self.first_line.len() < 65536 {
                self.first_line.push(b);
            }
        }
        if n > 0 {
            self.last = Some(buf[n - 1]);
        }
        Ok(n)
    }
}

fn csv_columns(header: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(header)
        .trim_end_matches('\r')
        .split(',')
        .map(|c| c.trim().trim_matches('"').trim().to_ascii_lowercase())
        .collect()
}

fn extension(path: &str) -> Option<String> {
    let name = path.rsplit('/').next()?;
    let (stem, ext) = name.rsplit_once('.')?;
    (!stem.is_empty()).then(|| ext.to_ascii_lowercase())
}

/// Copy the inputs (outputs of the dependencies, from the high workspace)
/// into the volume; returns their paths. A dependency without outputs in
/// the manifest is an error message.
pub fn prepare_inputs(
    trees: &Trees,
    job: &JobSpec,
    volume: &DirFd,
) -> Result<std::result::Result<BTreeSet<String>, String>> {
    let mut inputs = BTreeSet::new();
    if job.dependencies.is_empty() && job.origin.input_job_ids.is_empty() {
        return Ok(Ok(inputs));
    }
    let ws = match trees.high.open_beneath(Path::new(&job.workspace)) {
        Ok(d) => d,
        Err(_) => {
            return Ok(Err(format!(
                "workspace {} has no outputs yet",
                job.workspace
            )))
        }
    };
    let manifest = read_manifest(&ws, &job.workspace)?;
    for dep in &job.dependencies {
        let outs: Vec<&String> = manifest
            .outputs
            .iter()
            .filter(|(_, o)| &o.action == dep)
            .map(|(p, _)| p)
            .collect();
        if outs.is_empty() {
            return Ok(Err(format!(
                "dependency {dep} has no outputs in workspace {}",
                job.workspace
            )));
        }
        for rel in outs {
            copy_input(trees, &ws, volume, rel)?;
            inputs.insert(rel.clone());
        }
    }
    // The controller names the jobs whose outputs are inputs (job-runner's
    // input_job_ids): their outputs as the manifest lists them.
    for input_job in &job.origin.input_job_ids {
        let outs: Vec<&String> = manifest
            .outputs
            .iter()
            .filter(|(_, o)| &o.job_id == input_job && o.out_of_date_output != Some(true))
            .map(|(p, _)| p)
            .collect();
        for rel in outs {
            if inputs.contains(rel) {
                continue;
            }
            copy_input(trees, &ws, volume, rel)?;
            inputs.insert(rel.clone());
        }
    }
    Ok(Ok(inputs))
}

fn copy_input(trees: &Trees, ws: &DirFd, volume: &DirFd, rel: &str) -> Result<()> {
    let (mut src, _) = files::open_regular(ws, Path::new(rel))?;
    let (dir, name) = files::open_parent(volume, Path::new(rel), &trees.dir_spec)?;
    files::write_from(&dir, name, &mut src, &trees.file_spec)?;
    Ok(())
}

/// job-runner's archive formats.
const ARCHIVE_FORMATS: &[&str] = &[".tar.gz", ".tar.zstd", ".tar.xz"];

/// A workspace that is no longer in the high tree but in
/// `<high_privacy>/archives/<workspace>.tar.*` is refused, as job-runner
/// refuses it: a job must not start a fresh workspace over archived work.
pub fn archived(trees: &Trees, workspace: &str) -> Result<Option<String>> {
    let Some(archives) = &trees.archives else {
        return Ok(None);
    };
    if trees.high.stat_at(OsStr::new(workspace))?.is_some() {
        return Ok(None);
    }
    for ext in ARCHIVE_FORMATS {
        if archives
            .stat_at(OsStr::new(&format!("{workspace}{ext}")))?
            .is_some()
        {
            return Ok(Some(format!(
                "workspace {workspace} is archived ({workspace}{ext}): restore it before running jobs in it"
            )));
        }
    }
    Ok(None)
}

pub fn read_manifest(ws: &DirFd, workspace: &str) -> Result<Manifest> {
    let fresh = Manifest {
        workspace: workspace.to_string(),
        ..Manifest::default()
    };
    let meta = match ws.open_subdir(OsStr::new("metadata")) {
        Ok(m) => m,
        Err(_) => return Ok(fresh),
    };
    let mut manifest = match meta.read_file(OsStr::new("manifest.json"), 256 << 20)? {
        Some((bytes, _)) => serde_json::from_slice(&bytes).unwrap_or(fresh),
        None => fresh,
    };
    // Entries an older bs-jobs wrote carry only `sha256`.
    for out in manifest.outputs.values_mut() {
        if out.content_hash.is_empty() {
            out.content_hash = std::mem::take(&mut out.sha256);
        }
    }
    Ok(manifest)
}

/// What finalize did with the outputs.
#[derive(Debug, Default)]
pub struct Filed {
    pub outputs: BTreeMap<String, ManifestOutput>,
}

/// Copy matched outputs to the trees. Returns the manifest entries.
pub fn file_outputs(
    trees: &Trees,
    job: &JobSpec,
    volume: &DirFd,
    matched: &BTreeMap<String, Level>,
    now_ns: i128,
) -> Result<Filed> {
    let high_ws = files::ensure_dirs(&trees.high, Path::new(&job.workspace), &trees.dir_spec)?;
    let medium_ws = files::ensure_dirs(&trees.medium, Path::new(&job.workspace), &trees.dir_spec)?;
    let rules = Level4::of(trees, job);
    let mut filed = Filed::default();
    for (rel, level) in matched {
        let relp = Path::new(rel);
        let (mut src, _) = files::open_regular(volume, relp)?;
        let is_csv = extension(rel).as_deref() == Some("csv");
        let (dir, name) = files::open_parent(&high_ws, relp, &trees.dir_spec)?;
        let mut probe = CsvProbe {
            inner: &mut src,
            newlines: 0,
            first_line: Vec::new(),
            header_done: false,
            last: None,
        };
        let copied = files::write_from(&dir, name, &mut probe, &trees.file_spec)?;
        let (row_count, col_count) = if is_csv && copied.size > 0 {
            let lines = probe.newlines + u64::from(probe.last != Some(b'\n'));
            (
                Some(lines.saturating_sub(1)),
                Some(csv_columns(&probe.first_line).len() as u64),
            )
        } else {
            (None, None)
        };
        let timestamp = match dir.stat_at(name)? {
            Some(st) => st.st_mtime as f64 + st.st_mtime_nsec as f64 / 1e9,
            None => now_ns as f64 / 1e9,
        };
        let mut out = ManifestOutput {
            level: *level,
            job_id: job.id.clone(),
            job_request: job.origin.rap_id.clone(),
            action: job.action.clone(),
            repo: job.origin.repo.clone(),
            commit: job.commit.clone(),
            user: job.origin.user.clone(),
            size: copied.size,
            timestamp,
            content_hash: copied.sha256,
            sha256: String::new(),
            excluded: false,
            message: None,
            row_count,
            col_count,
            out_of_date_output: None,
            out_of_date_action: None,
        };
        if *level == Level::ModeratelySensitive {
            let problem = medium_problem(&rules, rel, &out, &probe.first_line);
            let mut txt = rel.clone();
            txt.push_str(".txt");
            match problem {
                None => {
                    // A note of an earlier run that excluded it is stale now.
                    let (tdir, tname) =
                        files::open_parent(&medium_ws, Path::new(&txt), &trees.dir_spec)?;
                    tdir.remove_if_exists(tname)?;
                    let (mut again, _) = files::open_regular(&high_ws, relp)?;
                    let (mdir, mname) = files::open_parent(&medium_ws, relp, &trees.dir_spec)?;
                    let second = files::write_from(&mdir, mname, &mut again, &trees.file_spec)?;
                    if second.sha256 != out.content_hash {
                        out.excluded = true;
                        out.message = Some(
                            "changed while being copied; not released to the medium tree".into(),
                        );
                        mdir.remove_if_exists(mname)?;
                    }
                }
                Some(reason) => {
                    out.excluded = true;
                    out.message = Some(reason.clone());
                    // The copy an earlier run released must not stay
                    // beside a note saying it was not released.
                    let (mdir, mname) = files::open_parent(&medium_ws, relp, &trees.dir_spec)?;
                    mdir.remove_if_exists(mname)?;
                    let note = format!(
                        "{rel} was not copied to the medium privacy workspace: {reason}.\n\
                         It is in the high privacy workspace (sha256 {}).\n",
                        out.content_hash
                    );
                    files::write_rel(
                        &medium_ws,
                        Path::new(&txt),
                        note.as_bytes(),
                        &trees.file_spec,
                        &trees.dir_spec,
                    )?;
                }
            }
        }
        filed.outputs.insert(rel.clone(), out);
    }
    Ok(filed)
}

/// Why a moderately_sensitive file may not go to the medium tree.
/// The level-4 rules a job's outputs are judged by: the task's own
/// (job-runner's level4_* fields), else the backend's configured ones.
struct Level4 {
    max_bytes: u64,
    max_rows: u64,
    /// Lower-case extensions without the dot.
    types: Vec<String>,
}

impl Level4 {
    fn of(trees: &Trees, job: &JobSpec) -> Level4 {
        match &job.origin.level4 {
            Some(r) => Level4 {
                max_bytes: r.max_filesize,
                max_rows: r.max_csv_rows,
                types: r
                    .file_types
                    .iter()
                    .map(|t| t.trim_start_matches('.').to_ascii_lowercase())
                    .collect(),
            },
            None => Level4 {
                max_bytes: trees.medium_max_bytes,
                max_rows: trees.medium_max_csv_rows,
                types: trees
                    .medium_allowed_types
                    .iter()
                    .map(|t| t.trim_start_matches('.').to_ascii_lowercase())
                    .collect(),
            },
        }
    }
}

fn medium_problem(
    rules: &Level4,
    rel: &str,
    out: &ManifestOutput,
    header: &[u8],
) -> Option<String> {
    if out.size > rules.max_bytes {
        return Some(format!(
            "it is {} bytes, over the limit of {} bytes",
            out.size, rules.max_bytes
        ));
    }
    let ext = extension(rel);
    let allowed = ext
        .as_ref()
        .is_some_and(|e| rules.types.iter().any(|a| a == e));
    if !allowed {
        return Some(format!(
            "files of type {} are not allowed there (allowed: {})",
            ext.unwrap_or_else(|| "(none)".into()),
            rules.types.join(", ")
        ));
    }
    if ext.as_deref() == Some("csv") {
        if csv_columns(header).iter().any(|c| c == "patient_id") {
            return Some("it has a patient_id column".into());
        }
        if let Some(rows) = out.row_count {
            if rows > rules.max_rows {
                return Some(format!(
                    "it has {rows} rows, over the limit of {}",
                    rules.max_rows
                ));
            }
        }
    }
    None
}

/// Update the manifests of both trees (call with the queue lock held, so
/// two jobs finishing in one workspace do not lose each other's entries).
pub fn write_manifests(trees: &Trees, job: &JobSpec, filed: &Filed) -> Result<()> {
    // The same manifest in both trees: job-runner's in the medium one
    // (Airlock and bs-release read it; it lists every output, as
    // job-runner's does), ours in the high one (inputs of later jobs).
    for top in [&trees.high, &trees.medium] {
        let ws = files::ensure_dirs(top, Path::new(&job.workspace), &trees.dir_spec)?;
        let mut manifest = read_manifest(&ws, &job.workspace)?;
        manifest.workspace = job.workspace.clone();
        if !job.origin.repo.is_empty() {
            manifest.repo = Some(job.origin.repo.clone());
        }
        update_outputs(&mut manifest, job, filed);
        let mut bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
        bytes.push(b'\n');
        files::write_rel(
            &ws,
            Path::new("metadata/manifest.json"),
            &bytes,
            &trees.file_spec,
            &trees.dir_spec,
        )?;
    }
    Ok(())
}

/// A finished run's outputs replace the action's earlier ones; those it
/// did not produce again stay listed, marked `out_of_date_output`.
pub fn update_outputs(manifest: &mut Manifest, job: &JobSpec, filed: &Filed) {
    for (rel, out) in manifest.outputs.iter_mut() {
        if out.action == job.action && !filed.outputs.contains_key(rel) {
            out.out_of_date_output = Some(true);
        }
    }
    for (rel, out) in &filed.outputs {
        manifest.outputs.insert(rel.clone(), out.clone());
    }
}

/// The action's log for both trees: a header saying what ran (environment
/// values redacted), then the container's output with any environment
/// value that appears in it redacted too.
pub fn render_log(
    job: &JobSpec,
    secrets: &BTreeMap<String, String>,
    output: &[u8],
    summary: &[(&str, String)],
) -> Vec<u8> {
    let mut text = String::new();
    text.push_str(&format!(
        "job_id: {}\nworkspace: {}\naction: {}\nimage: {}\n",
        job.id, job.workspace, job.action, job.image
    ));
    text.push_str(&format!(
        "command: {}\n",
        serde_json::to_string(&job.command).unwrap_or_default()
    ));
    text.push_str(&format!(
        "commit: {}\ncpu: {}\nmemory_bytes: {}\n",
        job.commit, job.cpu, job.memory
    ));
    text.push_str("env:\n  HOME=/tmp\n");
    for k in job.env.keys().chain(secrets.keys()) {
        text.push_str(&format!("  {k}=xxxx-REDACTED-xxxx\n"));
    }
    for (k, v) in summary {
        text.push_str(&format!("{k}: {v}\n"));
    }
    text.push_str("--- output ---\n");
    let mut body = String::from_utf8_lossy(output).into_owned();
    for v in job
        .env
        .values()
        .chain(secrets.values())
        .filter(|v| v.len() >= 4)
    {
        body = body.replace(v.as_str(), "xxxx-REDACTED-xxxx");
    }
    text.push_str(&body);
    text.into_bytes()
}

pub fn write_logs(trees: &Trees, job: &JobSpec, log: &[u8]) -> Result<()> {
    let rel = format!("metadata/{}.log", job.action);
    for top in [&trees.high, &trees.medium] {
        let ws = files::ensure_dirs(top, Path::new(&job.workspace), &trees.dir_spec)?;
        // Not fsynced here: the manifest, written next into the same
        // directory, fsyncs it (one directory fsync a tree, not two).
        let (dir, name) = files::open_parent(&ws, Path::new(&rel), &trees.dir_spec)?;
        files::write_from_opts(&dir, name, &mut &log[..], &trees.file_spec, false)?;
    }
    Ok(())
}

/// `<high_privacy>/logs/YYYY-MM/os-job-<id>/{logs.txt,metadata.json}` as
/// job-runner keeps them (the month the job was created): the log, and the
/// job's metadata with the container's labels and its environment's names
/// (never a value).
pub fn write_job_log_dir(
    trees: &Trees,
    job: &JobSpec,
    log: &[u8],
    metadata: &Value,
    created_ns: i128,
) -> Result<()> {
    let month: String = crate::clock::rfc3339(created_ns).chars().take(7).collect();
    let rel = Path::new(&month).join(crate::executor::container_name(&job.id));
    let dir = files::ensure_dirs(&trees.logs, &rel, &trees.dir_spec)?;
    files::write_from(
        &dir,
        OsStr::new("logs.txt"),
        &mut &log[..],
        &trees.file_spec,
    )?;
    let mut bytes = serde_json::to_vec_pretty(metadata).unwrap_or_default();
    bytes.push(b'\n');
    files::write_from(
        &dir,
        OsStr::new("metadata.json"),
        &mut &bytes[..],
        &trees.file_spec,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_header_columns_are_normalised() {
        assert_eq!(
            csv_columns(b"\"Patient_ID\", age\r"),
            vec!["patient_id", "age"]
        );
        assert_eq!(extension("output/a.CSV").as_deref(), Some("csv"));
        assert_eq!(extension("output/.hidden"), None);
        assert_eq!(extension("README"), None);
    }

    #[test]
    fn env_values_are_redacted_from_the_log() {
        let mut job: JobSpec = serde_json::from_value(serde_json::json!({
            "id": "j", "workspace": "w", "action": "a", "image": "i", "command": ["x"],
            "cpu": 1.0, "memory": 1u64 << 30}))
        .unwrap();
        job.env.insert("DB_PASSWORD".into(), "hunter22".into());
        let log = String::from_utf8(render_log(
            &job,
            &BTreeMap::new(),
            b"connecting with hunter22\n",
            &[],
        ))
        .unwrap();
        assert!(!log.contains("hunter22"), "{log}");
        assert!(log.contains("DB_PASSWORD=xxxx-REDACTED-xxxx"));
    }
}
