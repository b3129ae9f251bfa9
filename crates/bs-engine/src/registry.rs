//! Job images from the backend's registry proxy: pull by digest (or by
//! tag), verify the digest, tag as job-runner tags.
//!
//! Job definitions name images as the public registry does
//! (`ghcr.io/opensafely-core/ehrql:v1`), but a backend reaches that
//! registry only through its proxy (`docker-proxy.opensafely.org/
//! opensafely-core`). As job-runner does, an image is pulled as
//! `<proxy>/<name>@<digest>` (or `:<tag>`), then, when it is newer than
//! what the tag names, tagged `<proxy>/<name>:<tag>` and
//! `<registry>/<name>:<tag>`. Nothing is tagged before the pulled image is
//! verified, so a registry that fails, stalls or answers with another image
//! changes nothing.

use std::time::Duration;

use bollard::models::ImageInspect;
use bollard::query_parameters::{CreateImageOptionsBuilder, TagImageOptionsBuilder};
use futures_util::StreamExt;
use serde::Serialize;

use crate::{Engine, EngineError};

/// Where images come from and what they are called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The proxy's repository prefix, pulled from.
    pub proxy: String,
    /// The public registry's prefix, the name jobs use.
    pub registry: String,
}

/// An image asked for: `NAME[:TAG][@sha256:HEX]`, NAME relative to the
/// registry prefix (`ehrql`, `python`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub name: String,
    pub tag: String,
    pub digest: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{target}: {message}")]
    Invalid { target: String, message: String },
    #[error(
        "{target}: the pulled image has digest(s) {got:?}, not {want}; refused, nothing tagged"
    )]
    DigestMismatch {
        target: String,
        want: String,
        got: Vec<String>,
    },
    #[error("{target}: the registry did not finish the pull within {secs} s; nothing tagged")]
    Stalled { target: String, secs: u64 },
    #[error("{target}: pull failed: {message}; nothing tagged")]
    PullFailed { target: String, message: String },
}

impl RegistryError {
    pub fn kind(&self) -> &'static str {
        match self {
            RegistryError::Engine(e) => e.kind(),
            RegistryError::Invalid { .. } => "invalid",
            RegistryError::DigestMismatch { .. } => "digest_mismatch",
            RegistryError::Stalled { .. } => "registry_timeout",
            RegistryError::PullFailed { .. } => "pull_failed",
        }
    }

    pub fn target(&self) -> String {
        match self {
            RegistryError::Engine(e) => e.target(),
            RegistryError::Invalid { target, .. }
            | RegistryError::DigestMismatch { target, .. }
            | RegistryError::Stalled { target, .. }
            | RegistryError::PullFailed { target, .. } => target.clone(),
        }
    }

    pub fn exit(&self) -> bs_core::Exit {
        match self {
            RegistryError::Invalid { .. } => bs_core::Exit::Usage,
            _ => bs_core::Exit::Failed,
        }
    }
}

impl bs_core::cli::Report for RegistryError {
    fn exit(&self) -> bs_core::Exit {
        RegistryError::exit(self)
    }
    fn kind(&self) -> &'static str {
        RegistryError::kind(self)
    }
    fn target(&self) -> String {
        RegistryError::target(self)
    }
}

/// `sha256:` and 64 lowercase hex digits.
pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A repository path: lowercase letters, digits, `.`, `_`, `-`, `/`
/// separated components (no registry host: the source adds it).
fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 200
        && n.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        })
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Wanted {
    /// Parse `NAME[:TAG][@DIGEST]`; the tag defaults to `latest`.
    pub fn parse(text: &str) -> Result<Wanted, RegistryError> {
        let invalid = |message: String| RegistryError::Invalid {
            target: text.to_string(),
            message,
        };
        let (rest, digest) = match text.split_once('@') {
            Some((r, d)) => {
                if !valid_digest(d) {
                    return Err(invalid(format!(
                        "{d:?} is not a digest (sha256: and 64 hex digits)"
                    )));
                }
                (r, Some(d.to_string()))
            }
            None => (text, None),
        };
        let (name, tag) = match rest.rsplit_once(':') {
            Some((n, t)) => (n, t),
            None => (rest, "latest"),
        };
        if !valid_name(name) {
            return Err(invalid(format!(
                "{name:?} is not an image name (lowercase letters, digits, . _ - and /, without the registry)"
            )));
        }
        if !valid_tag(tag) {
            return Err(invalid(format!("{tag:?} is not a tag")));
        }
        Ok(Wanted {
            name: name.to_string(),
            tag: tag.to_string(),
            digest,
        })
    }
}

impl Source {
    pub fn proxy_repo(&self, name: &str) -> String {
        format!("{}/{name}", self.proxy.trim_end_matches('/'))
    }

    pub fn registry_repo(&self, name: &str) -> String {
        format!("{}/{name}", self.registry.trim_end_matches('/'))
    }

    /// What is pulled: by digest when there is one.
    pub fn pull_ref(&self, w: &Wanted) -> String {
        match &w.digest {
            Some(d) => format!("{}@{d}", self.proxy_repo(&w.name)),
            None => format!("{}:{}", self.proxy_repo(&w.name), w.tag),
        }
    }
}

/// What [`ensure_present`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Present {
    /// The image id.
    pub id: String,
    /// The manifest digest, verified.
    pub digest: String,
    /// Whether the engine was asked to pull (false: the digest was here).
    pub pulled: bool,
    /// The tags now naming it that this call set (none: a newer image
    /// already holds the tag).
    pub tagged: Vec<String>,
    /// The image `<registry>/NAME:TAG` named before, when it was another.
    pub replaced: Option<String>,
    /// Whether `<registry>/NAME:TAG` (the name jobs use) now names another
    /// image than before.
    pub changed: bool,
}

/// Make sure `w` is present, verified and tagged. With a digest already
/// present nothing is pulled (`always_pull` forces a pull by tag or
/// digest, as `images update` does). `limit` bounds the whole pull.
pub fn ensure_present(
    engine: &Engine,
    src: &Source,
    w: &Wanted,
    always_pull: bool,
    limit: Duration,
) -> Result<Present, RegistryError> {
    let reference = src.pull_ref(w);
    let mut pulled = false;
    let here = match &w.digest {
        Some(_) if !always_pull => inspect(engine, &reference)?,
        _ => None,
    };
    let image = match here {
        Some(i) => i,
        None => {
            pull(engine, &reference, limit)?;
            pulled = true;
            inspect(engine, &reference)?.ok_or_else(|| RegistryError::PullFailed {
                target: reference.clone(),
                message: "the engine reported success but has no such image".into(),
            })?
        }
    };
    let proxy_repo = src.proxy_repo(&w.name);
    let digests: Vec<String> = image
        .repo_digests
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|d| d.strip_prefix(&format!("{proxy_repo}@")).map(String::from))
        .collect();
    let digest = match &w.digest {
        Some(want) if digests.contains(want) => want.clone(),
        Some(want) => {
            return Err(RegistryError::DigestMismatch {
                target: reference,
                want: want.clone(),
                got: digests,
            })
        }
        None => digests
            .first()
            .cloned()
            .ok_or_else(|| RegistryError::PullFailed {
                target: reference.clone(),
                message: "the registry gave the image no digest to verify".into(),
            })?,
    };
    let id = image.id.clone().unwrap_or_default();
    // By digest, tag only an image newer than what the tag names (a
    // controller asking for an old digest must not move the tag back), as
    // job-runner does. By tag, the registry says what the tag is.
    let newer = match &w.digest {
        None => true,
        Some(_) => match inspect(engine, &format!("{proxy_repo}:{}", w.tag))? {
            None => true,
            Some(c) if c.id.as_deref() == Some(id.as_str()) => true,
            Some(c) => image.created > c.created,
        },
    };
    let public = format!("{}:{}", src.registry_repo(&w.name), w.tag);
    let before = inspect(engine, &public)?.and_then(|i| i.id);
    let mut tagged = Vec::new();
    if newer {
        for repo in [proxy_repo, src.registry_repo(&w.name)] {
            tag(engine, &id, &repo, &w.tag)?;
            tagged.push(format!("{repo}:{}", w.tag));
        }
    }
    let changed = newer && before.as_deref() != Some(id.as_str());
    Ok(Present {
        id,
        digest,
        pulled,
        replaced: if changed { before } else { None },
        tagged,
        changed,
    })
}

fn inspect(engine: &Engine, reference: &str) -> Result<Option<ImageInspect>, RegistryError> {
    match engine.block_on(engine.docker().inspect_image(reference)) {
        Ok(i) => Ok(Some(i)),
        Err(e) => match engine.error("inspect image", reference, e) {
            EngineError::NotFound { .. } => Ok(None),
            other => Err(other.into()),
        },
    }
}

/// Pull `reference`, bounded by `limit`. Dropping the request on time-out
/// closes the connection, which makes the engine abandon the pull.
pub fn pull(engine: &Engine, reference: &str, limit: Duration) -> Result<(), RegistryError> {
    let opts = CreateImageOptionsBuilder::new()
        .from_image(reference)
        .build();
    let docker = engine.docker().clone();
    let target = reference.to_string();
    let work = async move {
        let mut stream = docker.create_image(Some(opts), None, None);
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    let message = info.error_detail.and_then(|d| d.message).or(info.error);
                    if let Some(message) = message {
                        return Err(Err(message));
                    }
                }
                Err(e) => return Err(Ok(e)),
            }
        }
        Ok(())
    };
    match engine.block_on(async { tokio::time::timeout(limit, work).await }) {
        Err(_) => Err(RegistryError::Stalled {
            target,
            secs: limit.as_secs(),
        }),
        Ok(Ok(())) => Ok(()),
        Ok(Err(Err(message))) => Err(RegistryError::PullFailed { target, message }),
        Ok(Err(Ok(e))) => match engine.error("pull", reference, e) {
            EngineError::Api { message, .. } => Err(RegistryError::PullFailed { target, message }),
            EngineError::NotFound { .. } => Err(RegistryError::PullFailed {
                target,
                message: "not found in the registry".into(),
            }),
            EngineError::Timeout { .. } => Err(RegistryError::Stalled {
                target,
                secs: limit.as_secs(),
            }),
            other => Err(other.into()),
        },
    }
}

/// `docker tag IMAGE REPO:TAG`.
pub fn tag(engine: &Engine, image: &str, repo: &str, tag: &str) -> Result<(), RegistryError> {
    let opts = TagImageOptionsBuilder::new().repo(repo).tag(tag).build();
    engine
        .block_on(engine.docker().tag_image(image, Some(opts)))
        .map_err(|e| engine.error("tag", &format!("{repo}:{tag}"), e).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn names_tags_and_digests_parse_and_bad_ones_are_refused() {
        let w = Wanted::parse("ehrql:v1").unwrap();
        assert_eq!(
            (w.name.as_str(), w.tag.as_str(), w.digest),
            ("ehrql", "v1", None)
        );
        let w = Wanted::parse("python").unwrap();
        assert_eq!(w.tag, "latest");
        let w = Wanted::parse(&format!("r/ehrql:v1@{D}")).unwrap();
        assert_eq!(w.digest.as_deref(), Some(D));
        assert_eq!(w.name, "r/ehrql");
        for bad in [
            "",
            "Ehrql:v1",
            "ehrql:",
            "ehrql:v 1",
            "ehrql@sha256:abc",
            "../x",
            "host:5000/ehrql:v1",
            "ehrql:v1@md5:0123",
        ] {
            assert!(Wanted::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_proxy_is_pulled_from_by_digest_when_there_is_one() {
        let src = Source {
            proxy: "proxy.example/core/".into(),
            registry: "ghcr.io/core".into(),
        };
        let w = Wanted::parse(&format!("ehrql:v1@{D}")).unwrap();
        assert_eq!(src.pull_ref(&w), format!("proxy.example/core/ehrql@{D}"));
        let w = Wanted::parse("ehrql:v1").unwrap();
        assert_eq!(src.pull_ref(&w), "proxy.example/core/ehrql:v1");
        assert_eq!(src.registry_repo("ehrql"), "ghcr.io/core/ehrql");
    }
}
