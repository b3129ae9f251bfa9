//! Merging TOML layers while remembering which file set which key, so an
//! error can name the file an operator has to edit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::error::{CoreError, Result};

#[derive(Debug, Default)]
pub struct Layers {
    merged: toml::Table,
    /// Dotted key path -> the file that last set it.
    origin: BTreeMap<String, PathBuf>,
    files: Vec<PathBuf>,
}

impl Layers {
    pub fn add_required(&mut self, file: &Path) -> Result<()> {
        let text = read_required(file)?;
        self.add_text(file, &text)
    }

    pub fn add_optional(&mut self, file: &Path) -> Result<()> {
        match std::fs::read_to_string(file) {
            Ok(text) => self.add_text(file, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(CoreError::io(file, e)),
        }
    }

    pub fn add_text(&mut self, file: &Path, text: &str) -> Result<()> {
        let table: toml::Table = toml::from_str(text).map_err(|e| CoreError::Config {
            file: file.to_path_buf(),
            key: String::from("(syntax)"),
            message: e.message().to_string() + &line_of(text, e.span()),
        })?;
        record_origin(&mut self.origin, "", &table, file);
        merge(&mut self.merged, table);
        self.files.push(file.to_path_buf());
        Ok(())
    }

    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T> {
        let value = toml::Value::Table(self.merged.clone());
        serde_path_to_error::deserialize(value).map_err(|err| {
            let mut key = err.path().to_string();
            let message = err.inner().to_string();
            // For an unknown key the path stops at its parent table: add the
            // key itself so the operator sees exactly what to remove.
            if let Some(unknown) = unknown_field(&message).filter(|u| !key.ends_with(u.as_str())) {
                key = if key == "." || key.is_empty() {
                    unknown
                } else {
                    format!("{key}.{unknown}")
                };
            }
            self.error(&key, message)
        })
    }

    /// A config error about `key`, naming the layer that set it.
    pub fn error(&self, key: &str, message: impl Into<String>) -> CoreError {
        CoreError::Config {
            file: self.origin_of(key),
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// The file that set `key` or, failing that, its nearest parent table.
    pub fn origin_of(&self, key: &str) -> PathBuf {
        let mut probe = strip_indices(key);
        loop {
            if let Some(file) = self.origin.get(&probe) {
                return file.clone();
            }
            match probe.rfind('.') {
                Some(i) => probe.truncate(i),
                None => break,
            }
        }
        self.files.last().cloned().unwrap_or_default()
    }
}

/// The text of a required layer; a missing one is its own error, never an
/// empty layer.
pub fn read_required(file: &Path) -> Result<String> {
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CoreError::ConfigLayerMissing {
            file: file.to_path_buf(),
        }),
        Err(e) => Err(CoreError::io(file, e)),
    }
}

fn record_origin(
    origin: &mut BTreeMap<String, PathBuf>,
    prefix: &str,
    table: &toml::Table,
    file: &Path,
) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        origin.insert(path.clone(), file.to_path_buf());
        if let toml::Value::Table(inner) = v {
            record_origin(origin, &path, inner, file);
        }
    }
}

/// Tables merge key by key; anything else (lists too) replaces.
fn merge(base: &mut toml::Table, layer: toml::Table) {
    for (k, v) in layer {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(l)) => merge(b, l),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let end = rest.find('`')?;
    Some(rest[..end].to_string())
}

fn strip_indices(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut depth = 0;
    for c in key.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => out.push(c),
            _ => {}
        }
    }
    out
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!(" (line {line})")
        }
        None => String::new(),
    }
}
