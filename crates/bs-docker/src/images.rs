//! `images`: list, import a root-file-system tarball, load a `docker save`
//! archive, prune by label (never an image a container uses).

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;

use bollard::query_parameters::{
    CreateImageOptionsBuilder, ImportImageOptionsBuilder, ListContainersOptionsBuilder,
    ListImagesOptionsBuilder, RemoveImageOptionsBuilder,
};
use futures_util::StreamExt;
use serde_json::json;

use bs_core::Output;

use crate::cli::ImagesCommand;
use bs_engine::{registry, Engine, EngineError};

pub fn run(engine: &Engine, cmd: ImagesCommand, out: &mut Output) -> Result<(), EngineError> {
    match cmd {
        ImagesCommand::List => list(engine, out),
        ImagesCommand::Import {
            tarball,
            tag,
            labels,
        } => import(engine, &tarball, &tag, &labels, out),
        ImagesCommand::Load { archive } => load(engine, &archive, out),
        ImagesCommand::Prune { label, keep } => prune(engine, &label, keep, out),
        // Needs the config: lib.rs calls `update` itself.
        ImagesCommand::Update { .. } => Ok(()),
    }
}

/// `images update`: pull through the proxy, verify, tag (bs-engine's
/// registry module, which bs-jobs uses for a missing `image_sha`), then
/// remove the untagged images of the same action that no container uses
/// (the ones the tags just moved away from, and older leftovers).
pub fn update(
    engine: &Engine,
    config: &bs_core::config::Config,
    wanted: &registry::Wanted,
    out: &mut Output,
) -> Result<(), EngineError> {
    let d = &config.docker;
    let src = registry::Source {
        proxy: d.registry_proxy.clone(),
        registry: d.registry.clone(),
    };
    let limit = std::time::Duration::from_secs(d.pull_timeout_secs);
    let target = format!("{}:{}", src.registry_repo(&wanted.name), wanted.tag);
    let present = match registry::ensure_present(engine, &src, wanted, true, limit) {
        Ok(p) => p,
        Err(e) => {
            out.error(e.kind(), &e.target(), &e.to_string());
            return Ok(());
        }
    };
    out.item(
        "image",
        present.changed,
        &json!({"action": if present.changed {"update"} else {"none"}, "target": target,
                "source": src.pull_ref(wanted), "id": present.id, "digest": present.digest,
                "tagged": present.tagged, "replaced": present.replaced}),
    );
    let action = wanted.name.rsplit('/').next().unwrap_or(&wanted.name);
    let label = format!("{}={action}", d.image_action_label);
    let mut filters: HashMap<&str, Vec<&str>> = HashMap::new();
    filters.insert("label", vec![label.as_str()]);
    filters.insert("dangling", vec!["true"]);
    let old = engine
        .block_on(engine.docker().list_images(Some(
            ListImagesOptionsBuilder::new().filters(&filters).build(),
        )))
        .map_err(|e| engine.error("list images", &label, e))?;
    let used = users(engine)?;
    for i in old {
        if i.id == present.id {
            continue;
        }
        if let Some(by) = used.get(&i.id) {
            out.item("image", false, &json!({"action": "keep", "target": i.id, "label": label, "reason": "used by a container", "used_by": by}));
            continue;
        }
        let opts = RemoveImageOptionsBuilder::new().force(false).build();
        match engine.block_on(engine.docker().remove_image(&i.id, Some(opts), None)) {
            Ok(_) => out.item(
                "image",
                true,
                &json!({"action": "remove", "target": i.id, "label": label}),
            ),
            Err(e) => {
                let e = engine.error("remove image", &i.id, e);
                out.error(e.kind(), &i.id, &e.to_string());
            }
        }
    }
    Ok(())
}

/// Image id -> names of the containers (any state) using it.
fn users(engine: &Engine) -> Result<HashMap<String, Vec<String>>, EngineError> {
    let opts = ListContainersOptionsBuilder::new().all(true).build();
    let all = engine
        .block_on(engine.docker().list_containers(Some(opts)))
        .map_err(|e| engine.error("list containers", "", e))?;
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for c in all {
        let name = c
            .names
            .as_ref()
            .and_then(|n| n.first())
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default();
        if let Some(id) = c.image_id {
            map.entry(id).or_default().push(name);
        }
    }
    Ok(map)
}

fn list(engine: &Engine, out: &mut Output) -> Result<(), EngineError> {
    let used = users(engine)?;
    let images = engine
        .block_on(
            engine
                .docker()
                .list_images(Some(ListImagesOptionsBuilder::new().build())),
        )
        .map_err(|e| engine.error("list images", "", e))?;
    for i in images {
        out.emit(
            "image",
            &json!({
                "target": i.repo_tags.first().cloned().unwrap_or_else(|| i.id.clone()),
                "id": i.id,
                "tags": i.repo_tags,
                "digests": i.repo_digests,
                "size": i.size,
                "created": i.created,
                "labels": i.labels,
                "used_by": used.get(&i.id).cloned().unwrap_or_default(),
            }),
        );
    }
    Ok(())
}

/// A file read lazily in 1 MiB chunks, as a request body stream (an image
/// can be larger than we want in memory).
fn file_chunks(
    path: &Path,
) -> Result<
    impl futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static,
    EngineError,
> {
    let mut f = std::fs::File::open(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let chunks = std::iter::from_fn(move || {
        let mut buf = vec![0u8; 1 << 20];
        match f.read(&mut buf) {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some(Ok(bytes::Bytes::from(buf)))
            }
            Err(e) => Some(Err(e)),
        }
    });
    Ok(futures_util::stream::iter(chunks))
}

fn import(
    engine: &Engine,
    tarball: &Path,
    tag: &str,
    labels: &[String],
    out: &mut Output,
) -> Result<(), EngineError> {
    let (repo, t) = match tag.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, t),
        _ => (tag, "latest"),
    };
    let changes: Vec<String> = labels
        .iter()
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
            format!("LABEL {k}={}", serde_json::Value::from(v))
        })
        .collect();
    let opts = CreateImageOptionsBuilder::new()
        .from_src("-")
        .repo(repo)
        .tag(t)
        .changes(changes)
        .build();
    let body = bollard::body_try_stream(file_chunks(tarball)?);
    let target = format!("{repo}:{t}");
    let mut stream = engine.docker().create_image(Some(opts), Some(body), None);
    while let Some(item) = engine.block_on(stream.next()) {
        match item {
            Ok(info) => {
                if let Some(msg) = info.error_detail.and_then(|d| d.message) {
                    return Err(EngineError::Api {
                        op: "import",
                        target,
                        status: None,
                        message: msg,
                    });
                }
            }
            Err(e) => return Err(engine.error("import", &target, e)),
        }
    }
    let id = engine.image_id(&target)?.unwrap_or_default();
    out.item("image", true, &json!({"action": "import", "target": target, "id": id, "source": tarball.display().to_string()}));
    Ok(())
}

fn load(engine: &Engine, archive: &Path, out: &mut Output) -> Result<(), EngineError> {
    let body = bollard::body_try_stream(file_chunks(archive)?);
    let target = archive.display().to_string();
    let opts = ImportImageOptionsBuilder::new().quiet(true).build();
    let mut stream = engine.docker().import_image(opts, body, None);
    let mut loaded = Vec::new();
    while let Some(item) = engine.block_on(stream.next()) {
        match item {
            Ok(info) => {
                if let Some(msg) = info.error_detail.and_then(|d| d.message) {
                    return Err(EngineError::Api {
                        op: "load",
                        target,
                        status: None,
                        message: msg,
                    });
                }
                if let Some(s) = info.stream {
                    let s = s.trim();
                    if let Some(name) = s
                        .strip_prefix("Loaded image: ")
                        .or_else(|| s.strip_prefix("Loaded image ID: "))
                    {
                        loaded.push(name.to_string());
                    }
                }
            }
            Err(e) => return Err(engine.error("load", &target, e)),
        }
    }
    out.item(
        "image",
        true,
        &json!({"action": "load", "target": target, "loaded": loaded}),
    );
    Ok(())
}

fn prune(engine: &Engine, label: &str, keep: usize, out: &mut Output) -> Result<(), EngineError> {
    let mut filters: HashMap<&str, Vec<&str>> = HashMap::new();
    filters.insert("label", vec![label]);
    let mut images = engine
        .block_on(engine.docker().list_images(Some(
            ListImagesOptionsBuilder::new().filters(&filters).build(),
        )))
        .map_err(|e| engine.error("list images", label, e))?;
    images.sort_by_key(|i| std::cmp::Reverse(i.created));
    let used = users(engine)?;
    let mut seen = HashSet::new();
    for (n, i) in images.into_iter().enumerate() {
        if !seen.insert(i.id.clone()) {
            continue;
        }
        let target = i.repo_tags.first().cloned().unwrap_or_else(|| i.id.clone());
        if n < keep {
            out.item("image", false, &json!({"action": "keep", "target": target, "id": i.id, "reason": "among the newest kept"}));
            continue;
        }
        if let Some(by) = used.get(&i.id) {
            out.item("image", false, &json!({"action": "keep", "target": target, "id": i.id, "reason": "used by a container", "used_by": by}));
            continue;
        }
        // Not forced: the engine itself refuses an image a container uses,
        // a second guard should one start between our list and this call.
        let opts = RemoveImageOptionsBuilder::new().force(false).build();
        match engine.block_on(engine.docker().remove_image(&i.id, Some(opts), None)) {
            Ok(_) => out.item(
                "image",
                true,
                &json!({"action": "remove", "target": target, "id": i.id}),
            ),
            Err(e) => {
                let e = engine.error("remove image", &target, e);
                out.error(e.kind(), &target, &e.to_string());
            }
        }
    }
    Ok(())
}
