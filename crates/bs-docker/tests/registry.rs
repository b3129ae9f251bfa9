//! `bs-docker images update` against a real registry on 127.0.0.1 (Debian's
//! docker-registry, started by the test) that the test pushes images to:
//! pulled by digest, verified, tagged as job-runner tags, old images pruned
//! but never one a container uses; a wrong digest, a failing registry and a
//! stalled one each give a clear error and change no tag.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const REGISTRY: &str = "bstest-ghcr/opensafely-core";

/// A child process killed when dropped (with the directory it serves).
struct Proc {
    child: Child,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(port: u16, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = Command::new("curl")
            .args(["-sf", "-o", "/dev/null", "--max-time", "2"])
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .status()
            .unwrap()
            .success();
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "nothing answers on port {port}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Debian's docker-registry on 127.0.0.1, storing in a temp dir.
fn registry() -> (Proc, u16) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let child = Command::new("/usr/bin/docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry must be installed (bin/bootstrap installs it)");
    let p = Proc {
        child,
        _dir: Some(dir),
    };
    wait_for(port, "/v2/");
    (p, port)
}

/// A registry stand-in on 127.0.0.1: `500` answers every request with a
/// server error; `stall` accepts connections and never answers.
fn bad_registry(how: &str) -> (Proc, u16) {
    let port = free_port();
    let script = match how {
        "500" => format!(
            "import http.server\n\
             class H(http.server.BaseHTTPRequestHandler):\n\
             \x20   def do_GET(self):\n\
             \x20       self.send_response(500); self.end_headers(); self.wfile.write(b'broken')\n\
             \x20   do_HEAD = do_GET\n\
             http.server.HTTPServer(('127.0.0.1', {port}), H).serve_forever()\n"
        ),
        _ => format!(
            "import socket, time\n\
             s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind(('127.0.0.1', {port})); s.listen(16)\n\
             held = []\n\
             while True:\n\
             \x20   c, _ = s.accept(); held.append(c)\n"
        ),
    };
    let child = Command::new("python3")
        .args(["-c", &script])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the stand-in did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    (Proc { child, _dir: None }, port)
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn image_id(reference: &str) -> Option<String> {
    let out = Command::new("docker")
        .args(["image", "inspect", "-f", "{{.Id}}", reference])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Import a busybox image (with a marker file, so each is another image)
/// labelled with the action, push it to the
/// registry as `<proxy>/<action>:v1`, drop the local tag; its digest and id.
fn push_image(proxy: &str, action: &str, marker: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("rootfs.tar");
    let root = tempfile::tempdir().unwrap();
    let status = Command::new("tar")
        .args(["-C"])
        .arg(root.path())
        .args(["-xf", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&busybox_rootfs_tar())?;
            c.wait()
        })
        .unwrap();
    assert!(status.success());
    std::fs::write(root.path().join("marker"), marker).unwrap();
    let status = Command::new("tar")
        .arg("-C")
        .arg(root.path())
        .args(["--numeric-owner", "--owner=0", "--group=0", "-cf"])
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
    let reference = format!("{proxy}/{action}:v1");
    docker(&[
        "import",
        "--change",
        &format!("LABEL org.opensafely.action={action}"),
        "--change",
        "LABEL bs.test=1",
        tar.to_str().unwrap(),
        &reference,
    ]);
    docker(&["push", "-q", &reference]);
    let digest = docker(&[
        "image",
        "inspect",
        "-f",
        "{{index .RepoDigests 0}}",
        &reference,
    ]);
    let digest = digest.rsplit_once('@').unwrap().1.to_string();
    let id = image_id(&reference).unwrap();
    docker(&["rmi", &reference]);
    assert!(image_id(&id).is_none(), "the image is gone from the engine");
    (digest, id)
}

fn backend(proxy: &str, timeout: u64) -> String {
    format!(
        "[docker]\nrequire_engine = false\nregistry_proxy = \"{proxy}\"\nregistry = \"{REGISTRY}\"\npull_timeout_secs = {timeout}\n"
    )
}

/// Removes the test's tags and images whatever happens.
struct Images(Vec<String>);

impl Drop for Images {
    fn drop(&mut self) {
        for i in &self.0 {
            let _ = Command::new("docker").args(["rmi", "-f", i]).output();
        }
    }
}

#[test]
fn update_pulls_by_digest_verifies_tags_and_prunes_what_no_container_uses() {
    let (_reg, port) = registry();
    let proxy = format!("127.0.0.1:{port}/opensafely-core");
    let action = unique("act").replace('-', "");
    let proxy_tag = format!("{proxy}/{action}:v1");
    let public_tag = format!("{REGISTRY}/{action}:v1");
    let mut images = Images(vec![proxy_tag.clone(), public_tag.clone()]);
    let mut clean = Cleanup::new();
    let (digest_a, id_a) = push_image(&proxy, &action, "a");
    images.0.push(id_a.clone());
    let sb = Sandbox::new(true);
    sb.backend(&backend(&proxy, 120));

    // A digest the registry does not have: refused, nothing tagged.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let (code, recs) = sb.run(&["images", "update", &format!("{action}:v1@{wrong}")]);
    assert_eq!(code, 1, "{recs:#?}");
    assert_eq!(errors(&recs)[0]["kind"], "pull_failed", "{recs:#?}");
    assert!(image_id(&public_tag).is_none() && image_id(&proxy_tag).is_none());

    // A malformed digest is refused before anything is pulled (exit 2).
    let (code, _) = sb.run(&["images", "update", &format!("{action}:v1@sha256:abc")]);
    assert_eq!(code, 2);

    // By digest: pulled, verified, tagged as job-runner tags it.
    let (code, recs) = sb.run(&["images", "update", &format!("{action}:v1@{digest_a}")]);
    assert_eq!(code, 0, "{recs:#?}");
    let rec = find(&recs, "image", &public_tag);
    assert_eq!(rec["changed"], true);
    assert_eq!(rec["digest"], digest_a.as_str());
    assert_eq!(image_id(&public_tag).as_deref(), Some(id_a.as_str()));
    assert_eq!(image_id(&proxy_tag).as_deref(), Some(id_a.as_str()));

    // A newer image under the same tag, while a job container uses the old.
    let (_digest_b, id_b) = push_image(&proxy, &action, "b");
    images.0.push(id_b.clone());
    let job = unique("job");
    docker(&[
        "create",
        "--name",
        &job,
        "--label",
        "bs.test=1",
        &id_a,
        "true",
    ]);
    clean.containers.push(job.clone());
    let (code, recs) = sb.run(&["images", "update", &format!("{action}:v1")]);
    assert_eq!(code, 0, "{recs:#?}");
    assert_eq!(find(&recs, "image", &public_tag)["changed"], true);
    assert_eq!(image_id(&public_tag).as_deref(), Some(id_b.as_str()));
    let kept = find(&recs, "image", &id_a);
    assert_eq!(kept["action"], "keep", "{kept}");
    assert!(image_id(&id_a).is_some(), "the job's image is still there");

    // The job is gone: the next update prunes the old image.
    docker(&["rm", "-f", &job]);
    let (code, recs) = sb.run(&["images", "update", &format!("{action}:v1")]);
    assert_eq!(code, 0, "{recs:#?}");
    assert_eq!(find(&recs, "image", &public_tag)["changed"], false);
    assert_eq!(find(&recs, "image", &id_a)["action"], "remove");
    assert!(image_id(&id_a).is_none());
    assert_eq!(image_id(&public_tag).as_deref(), Some(id_b.as_str()));

    // A registry that fails, then one that stalls: clear errors, the tags
    // still name the image they named.
    for (how, kind) in [("500", "pull_failed"), ("stall", "registry_timeout")] {
        let (_bad, bad_port) = bad_registry(how);
        sb.backend(&backend(
            &format!("127.0.0.1:{bad_port}/opensafely-core"),
            4,
        ));
        let started = Instant::now();
        let (code, recs) = sb.run(&["images", "update", &format!("{action}:v1")]);
        assert_eq!(code, 1, "{how}: {recs:#?}");
        assert_eq!(errors(&recs)[0]["kind"], kind, "{how}: {recs:#?}");
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{how}: bounded"
        );
        assert_eq!(
            image_id(&public_tag).as_deref(),
            Some(id_b.as_str()),
            "{how}"
        );
    }
}
