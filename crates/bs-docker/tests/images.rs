//! `bs-docker images`: import a rootfs tarball, load an archive, prune by
//! label without removing an image a container uses.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bs_engine::ContainerSpec;
use common::*;

#[test]
fn import_then_prune_removes_unused_labelled_images_and_keeps_used_ones() {
    let e = engine();
    let sb = Sandbox::new(true);
    let dir = tempfile::tempdir().unwrap();
    let tarball = dir.path().join("rootfs.tar");
    std::fs::write(&tarball, busybox_rootfs_tar()).unwrap();
    let repo = unique("img");
    let label = format!("bs.test.prune={repo}");
    let mut clean = Cleanup::new();
    for t in ["a", "b"] {
        clean.images.push(format!("{repo}:{t}"));
    }
    for t in ["a", "b"] {
        let (code, recs) = sb.run(&[
            "images",
            "import",
            tarball.to_str().unwrap(),
            "--tag",
            &format!("{repo}:{t}"),
            "--label",
            &label,
            "--label",
            "bs.test=1",
        ]);
        assert_eq!(code, 0, "{recs:#?}");
        assert_eq!(
            find(&recs, "image", &format!("{repo}:{t}"))["changed"],
            true
        );
        // Distinct creation times keep the two imports distinct images.
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let a = e.image_id(&format!("{repo}:a")).unwrap().unwrap();
    let b = e.image_id(&format!("{repo}:b")).unwrap().unwrap();
    assert_ne!(a, b);
    let user = unique("uses");
    clean.containers.push(user.clone());
    e.create_container(&ContainerSpec {
        name: user.clone(),
        image: format!("{repo}:a"),
        command: vec!["true".into()],
        labels: test_labels(),
        ..Default::default()
    })
    .unwrap();

    let (code, recs) = sb.run(&["images", "list"]);
    assert_eq!(code, 0);
    assert!(find(&recs, "image", &format!("{repo}:a"))["used_by"][0] == user.as_str());

    let (code, recs) = sb.run(&["images", "prune", "--label", &label]);
    assert_eq!(code, 0, "{recs:#?}");
    assert!(
        e.image_id(&a).unwrap().is_some(),
        "an image a container uses is never removed"
    );
    assert!(e.image_id(&b).unwrap().is_none());
    let kept = find(&recs, "image", &format!("{repo}:a"));
    assert_eq!(kept["reason"], "used by a container");
}

#[test]
fn load_reads_a_docker_save_archive() {
    let e = engine();
    let image = ensure_test_image(&e);
    let sb = Sandbox::new(true);
    let repo = unique("saved");
    let mut clean = Cleanup::new();
    clean.images.push(format!("{repo}:1"));
    e.block_on(
        e.docker().tag_image(
            &image,
            Some(
                bollard::query_parameters::TagImageOptionsBuilder::new()
                    .repo(&repo)
                    .tag("1")
                    .build(),
            ),
        ),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("saved.tar");
    let out = std::process::Command::new("docker")
        .args(["save", "-o"])
        .arg(&archive)
        .arg(format!("{repo}:1"))
        .output()
        .unwrap();
    assert!(out.status.success());
    e.block_on(e.docker().remove_image(
        &format!("{repo}:1"),
        None::<bollard::query_parameters::RemoveImageOptions>,
        None,
    ))
    .unwrap();
    assert!(e.image_id(&format!("{repo}:1")).unwrap().is_none());
    let (code, recs) = sb.run(&["images", "load", archive.to_str().unwrap()]);
    assert_eq!(code, 0, "{recs:#?}");
    assert!(e.image_id(&format!("{repo}:1")).unwrap().is_some());
}
