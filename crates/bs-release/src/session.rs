//! The session of one command: who is calling, the config, the request
//! store, the audit log and the output sink, and what every command family
//! does the same way (audit entries, role checks, verifying copies). Below
//! the dispatch module, above the command families.

use bs_core::config::Config;
use bs_core::{Output, Root};
use serde_json::{Map, Value};

use crate::audit::{Audit, Entry};
use crate::error::{Error, Result};
use crate::hash;
use crate::identity::Caller;
use crate::manifest::Manifest;
use crate::request::{FileEntry, Request};
use crate::store::Store;
use crate::timefmt;

pub(crate) struct Ctx<'a> {
    pub root: Root,
    pub config: Config,
    pub store: Store,
    pub audit: Audit,
    pub caller: Caller,
    pub out: &'a mut Output,
}

/// A summary map from pairs.
pub(crate) fn summary(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

impl Ctx<'_> {
    pub(crate) fn entry(
        &self,
        action: &str,
        request: Option<&str>,
        file: Option<&str>,
        sha256: Option<&str>,
        mut detail: Value,
    ) -> Entry {
        if self.caller.via != "sudo" {
            if let Value::Object(m) = &mut detail {
                m.insert("via".into(), Value::from(self.caller.via));
            }
        }
        Entry {
            time: timefmt::now(),
            user: self.caller.user.clone(),
            action: action.into(),
            request: request.map(str::to_string),
            file: file.map(str::to_string),
            sha256: sha256.map(str::to_string),
            detail,
            seq: None,
            prev: None,
        }
    }

    pub(crate) fn log(&mut self, entries: &[Entry]) -> Result<()> {
        self.audit.append(entries)
    }

    pub(crate) fn require_author_role(&self) -> Result<()> {
        if self.caller.author {
            Ok(())
        } else {
            Err(Error::Denied(format!(
                "{} is in none of the author groups ({}): only authors create requests",
                self.caller.user,
                self.config.release.author_groups.join(", ")
            )))
        }
    }

    pub(crate) fn require_any_role(&self) -> Result<()> {
        if self.caller.author || self.caller.checker {
            Ok(())
        } else {
            Err(Error::Denied(format!(
                "{} has no release role",
                self.caller.user
            )))
        }
    }

    pub(crate) fn threads(&self) -> Option<rayon::ThreadPool> {
        hash::pool(self.config.release.hash_threads)
    }

    /// The pool of `request add` unless configured: 16 threads, or two a
    /// CPU where that is more. The copies wait for the disk, so the count is
    /// about the disk's queue more than the CPUs (measured on a 2-CPU VM:
    /// 2 threads 1.0 s for 2,000 files of 256 KiB, 8 threads 0.7 s, 16
    /// threads 0.55 s, 32 no better; BENCHMARKS.md). Each thread holds one
    /// output in memory, at most `max_file_bytes` (16 MiB): 256 MiB at most
    /// with 16 threads.
    pub(crate) fn copy_threads(&self) -> Option<rayon::ThreadPool> {
        let n = match self.config.release.copy_threads {
            0 => 16.max(2 * std::thread::available_parallelism().map_or(1, usize::from)),
            n => n,
        };
        hash::pool(n)
    }

    /// The first file whose copy or job output no longer is what was added.
    pub(crate) fn stale_file(&self, req: &Request) -> Option<String> {
        let manifest = self
            .store
            .workspace(&req.workspace)
            .and_then(|d| self.store.manifest(&d));
        for (path, f) in &req.files {
            let ok = self.verify_copy(req, path, f).is_ok()
                && manifest
                    .as_ref()
                    .is_ok_and(|m| self.verify_manifest(req, m, path, f).is_ok());
            if !ok {
                return Some(path.clone());
            }
        }
        None
    }

    /// Every copy in the request still hashes to what was recorded.
    pub(crate) fn verify_copies(&self, req: &Request) -> Result<()> {
        for (path, f) in &req.files {
            self.verify_copy(req, path, f)?;
        }
        Ok(())
    }

    pub(crate) fn verify_copy(&self, req: &Request, path: &str, f: &FileEntry) -> Result<Vec<u8>> {
        let bytes = self
            .store
            .read_blob(&req.id, &f.sha256, self.config.release.max_file_bytes)?;
        let actual = hash::sha256_bytes(&bytes);
        if actual != f.sha256 {
            return Err(Error::Changed {
                path: format!("{}:{path} (the request's copy)", req.id),
                expected: f.sha256.clone(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// The job manifest still records the content that is in the request.
    pub(crate) fn verify_manifest(
        &self,
        req: &Request,
        manifest: &Manifest,
        path: &str,
        f: &FileEntry,
    ) -> Result<()> {
        match manifest.outputs.get(path) {
            Some(meta) if meta.sha256() == f.sha256 && meta.not_releasable().is_none() => Ok(()),
            Some(meta) => Err(Error::Changed {
                path: format!(
                    "{}:{path} (the workspace output was replaced since it was added)",
                    req.id
                ),
                expected: f.sha256.clone(),
                actual: meta.sha256().to_string(),
            }),
            None => Err(Error::Changed {
                path: format!("{}:{path} (no longer in the job manifest)", req.id),
                expected: f.sha256.clone(),
                actual: String::new(),
            }),
        }
    }
}
