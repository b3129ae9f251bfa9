#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Our ACL codec against the reference tools: what we write through an fd,
//! getfacl reads back entry for entry (effective rights included); what
//! setfacl writes, we decode to the same ACL; and the posix-acl crate (on a
//! scratch file only: it follows symlinks) agrees.

use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;

use bs_perms::acl::{Acl, Entry, Tag, XATTR_ACCESS, XATTR_DEFAULT};
use proptest::prelude::*;

fn arb_acl() -> impl Strategy<Value = Acl> {
    (
        0u16..8,
        0u16..8,
        0u16..8,
        proptest::collection::btree_map(1000u32..1008, 0u16..8, 0..4),
        proptest::collection::btree_map(1000u32..1008, 0u16..8, 0..4),
        proptest::option::of(0u16..8),
    )
        .prop_map(|(u, g, o, users, groups, mask)| {
            let named: Vec<Entry> = users
                .into_iter()
                .map(|(id, perm)| Entry {
                    tag: Tag::User,
                    id,
                    perm,
                })
                .chain(groups.into_iter().map(|(id, perm)| Entry {
                    tag: Tag::Group,
                    id,
                    perm,
                }))
                .collect();
            let computed = Acl::with_computed_mask(u, g, o, &named);
            match (mask, named.is_empty()) {
                // An arbitrary (narrower) mask, to exercise effective rights.
                (Some(m), false) => Acl::from_entries(
                    computed
                        .entries()
                        .iter()
                        .map(|e| {
                            if e.tag == Tag::Mask {
                                Entry { perm: m, ..*e }
                            } else {
                                *e
                            }
                        })
                        .collect(),
                ),
                _ => computed,
            }
        })
}

fn numeric(tag: Tag, id: u32) -> String {
    let _ = tag;
    id.to_string()
}

/// getfacl's view: entries (comments split off) and the effective rights it notes.
fn getfacl(path: &Path, default: bool) -> (Vec<String>, Vec<(String, String)>) {
    let out = Command::new("getfacl")
        .args(["-cpn"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut entries = Vec::new();
    let mut effective = Vec::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let (line, is_default) = match line.strip_prefix("default:") {
            Some(rest) => (rest, true),
            None => (line, false),
        };
        if line.is_empty() || is_default != default {
            continue;
        }
        let mut parts = line.split('\t').filter(|p| !p.is_empty());
        let entry = parts.next().unwrap().to_string();
        if let Some(eff) = parts.next().and_then(|c| c.strip_prefix("#effective:")) {
            effective.push((entry.clone(), eff.to_string()));
        }
        entries.push(entry);
    }
    (entries, effective)
}

fn write_fd(path: &Path, xattr: &str, acl: &Acl) {
    let f = std::fs::File::open(path).unwrap();
    rustix::fs::fsetxattr(
        f.as_fd(),
        xattr,
        &acl.encode(),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
}

fn read_fd(path: &Path, xattr: &str) -> Acl {
    let f = std::fs::File::open(path).unwrap();
    let mut buf = [0u8; 1024];
    match rustix::fs::fgetxattr(f.as_fd(), xattr, &mut buf[..]) {
        Ok(n) => Acl::decode(&buf[..n]).unwrap(),
        // A minimal access ACL is not stored: the mode is the ACL.
        Err(rustix::io::Errno::NODATA) if xattr == XATTR_ACCESS => {
            let st = rustix::fs::fstat(&f).unwrap();
            Acl::from_mode(st.st_mode)
        }
        Err(e) => panic!("{e}"),
    }
}

fn setfacl_text(acl: &Acl) -> String {
    acl.to_text_entries(&numeric).join(",")
}

proptest! {
    #[test]
    fn encode_then_decode_is_the_identity(acl in arb_acl()) {
        prop_assert_eq!(Acl::decode(&acl.encode()), Ok(acl.clone()));
    }

    #[test]
    fn the_computed_mask_never_hides_a_named_right(
        u in 0u16..8, g in 0u16..8, o in 0u16..8,
        named in proptest::collection::btree_map(1000u32..1008, 0u16..8, 0..6),
    ) {
        let named: Vec<Entry> = named.into_iter().map(|(id, perm)| Entry { tag: Tag::Group, id, perm }).collect();
        let acl = Acl::with_computed_mask(u, g, o, &named);
        for e in acl.named() {
            prop_assert_eq!(acl.effective(e), e.perm);
        }
    }

    #[test]
    fn decode_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        let _ = Acl::decode(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn what_we_write_getfacl_reads_back_with_the_same_effective_rights(acl in arb_acl()) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "").unwrap();
        write_fd(&f, XATTR_ACCESS, &acl);
        let (entries, effective) = getfacl(&f, false);
        prop_assert_eq!(&entries, &acl.to_text_entries(&numeric));
        for e in acl.entries() {
            let text = bs_perms::acl::entry_text(e, &numeric);
            let eff = acl.effective(e);
            let noted = effective.iter().find(|(t, _)| *t == text).map(|(_, e)| e.clone());
            if eff != e.perm {
                prop_assert_eq!(noted, Some(bs_perms::acl::perm_text(eff)), "{}", text);
            } else {
                prop_assert_eq!(noted, None);
            }
        }
        // The mode shows the mask as its group bits.
        let mode = std::fs::metadata(&f).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777).unwrap();
        prop_assert_eq!(mode, acl.mode_bits());
    }

    #[test]
    fn what_setfacl_writes_we_decode_to_the_same_acl(acl in arb_acl(), default in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("d");
        std::fs::create_dir(&target).unwrap();
        let mut cmd = Command::new("setfacl");
        if default {
            cmd.arg("-d");
        }
        // -n: keep our mask, do not let setfacl recompute it.
        let out = cmd.args(["-n", "--set", &setfacl_text(&acl)]).arg(&target).output().unwrap();
        prop_assert!(out.status.success(), "{:?}", out);
        let xattr = if default { XATTR_DEFAULT } else { XATTR_ACCESS };
        let got = read_fd(&target, xattr);
        prop_assert_eq!(got, acl);
    }

    #[test]
    fn the_posix_acl_crate_reads_what_we_write_on_a_scratch_file(acl in arb_acl()) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("scratch");
        std::fs::write(&f, "").unwrap();
        write_fd(&f, XATTR_ACCESS, &acl);
        let theirs = posix_acl::PosixACL::read_acl(&f).unwrap();
        let mut theirs: Vec<(u16, u32, u16)> = theirs
            .entries()
            .into_iter()
            .map(|e| match e.qual {
                posix_acl::Qualifier::UserObj => (1, u32::MAX, e.perm as u16),
                posix_acl::Qualifier::User(id) => (2, id, e.perm as u16),
                posix_acl::Qualifier::GroupObj => (4, u32::MAX, e.perm as u16),
                posix_acl::Qualifier::Group(id) => (8, id, e.perm as u16),
                posix_acl::Qualifier::Mask => (0x10, u32::MAX, e.perm as u16),
                posix_acl::Qualifier::Other => (0x20, u32::MAX, e.perm as u16),
                posix_acl::Qualifier::Undefined => (0, 0, 0),
            })
            .collect();
        theirs.sort();
        let ours: Vec<(u16, u32, u16)> = acl.entries().iter().map(|e| (e.tag as u16, e.id, e.perm)).collect();
        prop_assert_eq!(theirs, ours);
    }
}
