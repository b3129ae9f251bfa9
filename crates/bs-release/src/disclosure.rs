//! `disclosure PATH...`: the disclosure checks of given workspace outputs.

use std::path::{Component, Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::checks::{self, Finding};
use crate::error::{Error, Result};
use crate::session::{summary, Ctx};
use crate::store::{self};

impl Ctx<'_> {
    pub(crate) fn check(&mut self, paths: &[PathBuf]) -> Result<Map<String, Value>> {
        self.require_any_role()?;
        let base = self.store.medium_path().join(store::WORKSPACES_DIR);
        let workspaces = self.store.workspaces()?;
        let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
        let mut total = 0u64;
        let mut entries = Vec::new();
        for p in paths {
            let abs = if p.is_absolute() {
                self.root.join(p)
            } else {
                lexical(&cwd.join(p))
            };
            let result = abs
                .strip_prefix(&base)
                .ok()
                .and_then(|r| r.to_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    Error::Usage(format!(
                        "{}: check looks only at outputs under {}",
                        p.display(),
                        self.root.display_path(&base)
                    ))
                })
                .and_then(|rel| {
                    store::valid_output_path(&rel)?;
                    let (file, size) = store::open_file_beneath(&workspaces, &rel)?;
                    let max = self.config.release.max_file_bytes;
                    let content = if size <= max {
                        Some(store::read_all(file, size, max, &rel)?)
                    } else {
                        None
                    };
                    Ok((
                        rel,
                        size,
                        checks::check(
                            &p.to_string_lossy(),
                            size,
                            content.as_deref(),
                            &self.config.release,
                        ),
                    ))
                });
            match result {
                Ok((rel, size, findings)) => {
                    total += findings.len() as u64;
                    self.emit_findings(&p.to_string_lossy(), size, &findings);
                    entries.push(self.entry(
                        "check",
                        None,
                        Some(&rel),
                        None,
                        json!({"findings": findings.len()}),
                    ));
                }
                Err(e) => {
                    use bs_core::cli::Report;
                    self.out
                        .error(e.kind(), &p.to_string_lossy(), &e.to_string());
                }
            }
        }
        self.log(&entries)?;
        Ok(summary(&[("findings", Value::from(total))]))
    }

    pub(crate) fn emit_findings(&mut self, path: &str, size: u64, findings: &[Finding]) {
        for f in findings {
            let mut v = serde_json::to_value(f).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.insert("path".into(), Value::from(path));
            }
            self.out.emit("finding", &v);
        }
        self.out.emit(
            "checked",
            &json!({"path": path, "size": size, "findings": findings.len()}),
        );
    }
}

/// `..` and `.` resolved without touching the file system.
fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(x) => out.push(x),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}
