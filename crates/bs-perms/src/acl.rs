//! Our own codec for the `system.posix_acl_access` / `system.posix_acl_default`
//! extended attributes, so ACLs are read and written through file
//! descriptors only. (The posix-acl and exacl crates work on paths and
//! follow symlinks: writing an ACL through a planted link rewrites the
//! target's ACL.)
//!
//! Format (Linux `posix_acl_xattr`): a little-endian `u32` version (2), then
//! entries of `{u16 tag, u16 perm, u32 id}`, sorted by tag, then by id.
//! Unnamed entries carry id `0xFFFF_FFFF`. An ACL with named entries needs a
//! MASK entry, or the kernel answers EINVAL.

use std::fmt;

pub const XATTR_ACCESS: &str = "system.posix_acl_access";
pub const XATTR_DEFAULT: &str = "system.posix_acl_default";

const VERSION: u32 = 2;
pub const UNDEFINED_ID: u32 = 0xFFFF_FFFF;

pub const R: u16 = 4;
pub const W: u16 = 2;
pub const X: u16 = 1;

/// The kind of an entry; the discriminants are the on-disk tag values, and
/// their order is the order entries must be in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tag {
    UserObj = 0x01,
    User = 0x02,
    GroupObj = 0x04,
    Group = 0x08,
    Mask = 0x10,
    Other = 0x20,
}

impl Tag {
    fn from_raw(v: u16) -> Option<Tag> {
        Some(match v {
            0x01 => Tag::UserObj,
            0x02 => Tag::User,
            0x04 => Tag::GroupObj,
            0x08 => Tag::Group,
            0x10 => Tag::Mask,
            0x20 => Tag::Other,
            _ => return None,
        })
    }

    pub fn is_named(self) -> bool {
        matches!(self, Tag::User | Tag::Group)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Entry {
    pub tag: Tag,
    /// The uid or gid of a named entry; [`UNDEFINED_ID`] otherwise.
    pub id: u32,
    /// `rwx` bits: 4, 2, 1.
    pub perm: u16,
}

impl Entry {
    pub fn unnamed(tag: Tag, perm: u16) -> Entry {
        Entry {
            tag,
            id: UNDEFINED_ID,
            perm,
        }
    }
}

/// An ACL in canonical order (sorted by tag, then id).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Acl {
    entries: Vec<Entry>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum DecodeError {
    Length(usize),
    Version(u32),
    Tag(u16),
    Perm(u16),
    Order,
    MissingBase,
    MissingMask,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Length(n) => write!(f, "ACL xattr of {n} bytes is not 4 + 8*n"),
            DecodeError::Version(v) => write!(f, "ACL xattr version {v}, expected 2"),
            DecodeError::Tag(t) => write!(f, "unknown ACL tag {t:#x}"),
            DecodeError::Perm(p) => write!(f, "ACL permission {p:#x} has bits beyond rwx"),
            DecodeError::Order => write!(f, "ACL entries out of order or duplicated"),
            DecodeError::MissingBase => write!(f, "ACL lacks a user::, group:: or other:: entry"),
            DecodeError::MissingMask => write!(f, "ACL has named entries but no mask"),
        }
    }
}

impl Acl {
    /// Build from entries in any order: sorts them and drops exact repeats.
    pub fn from_entries(mut entries: Vec<Entry>) -> Acl {
        entries.sort();
        entries.dedup_by(|a, b| a.tag == b.tag && a.id == b.id);
        Acl { entries }
    }

    /// The three-entry ACL that a plain mode stands for.
    pub fn from_mode(mode: u32) -> Acl {
        Acl {
            entries: vec![
                Entry::unnamed(Tag::UserObj, ((mode >> 6) & 7) as u16),
                Entry::unnamed(Tag::GroupObj, ((mode >> 3) & 7) as u16),
                Entry::unnamed(Tag::Other, (mode & 7) as u16),
            ],
        }
    }

    /// An ACL with the given base permissions and named entries, and a
    /// mask that is the union of the group class (group:: and every named
    /// entry), so no named entry is silently masked.
    pub fn with_computed_mask(user_obj: u16, group_obj: u16, other: u16, named: &[Entry]) -> Acl {
        let mut entries = vec![
            Entry::unnamed(Tag::UserObj, user_obj),
            Entry::unnamed(Tag::GroupObj, group_obj),
            Entry::unnamed(Tag::Other, other),
        ];
        if !named.is_empty() {
            let mask = named.iter().fold(group_obj, |m, e| m | e.perm);
            entries.extend_from_slice(named);
            entries.push(Entry::unnamed(Tag::Mask, mask));
        }
        Acl::from_entries(entries)
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn get(&self, tag: Tag) -> Option<u16> {
        self.entries.iter().find(|e| e.tag == tag).map(|e| e.perm)
    }

    pub fn named(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.tag.is_named())
    }

    pub fn mask(&self) -> Option<u16> {
        self.get(Tag::Mask)
    }

    /// Only user::, group:: and other:: (what the mode bits say already).
    pub fn is_minimal(&self) -> bool {
        self.entries
            .iter()
            .all(|e| matches!(e.tag, Tag::UserObj | Tag::GroupObj | Tag::Other))
    }

    /// The permission bits the mode shows for this ACL: the group bits are
    /// the mask when there is one.
    pub fn mode_bits(&self) -> u32 {
        let u = self.get(Tag::UserObj).unwrap_or(0) as u32;
        let g = self.mask().or(self.get(Tag::GroupObj)).unwrap_or(0) as u32;
        let o = self.get(Tag::Other).unwrap_or(0) as u32;
        (u << 6) | (g << 3) | o
    }

    /// The rights an entry of the group class really grants: its
    /// permissions and the mask.
    pub fn effective(&self, e: &Entry) -> u16 {
        match (e.tag, self.mask()) {
            (Tag::User | Tag::GroupObj | Tag::Group, Some(mask)) => e.perm & mask,
            _ => e.perm,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 8 * self.entries.len());
        out.extend_from_slice(&VERSION.to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&(e.tag as u16).to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            out.extend_from_slice(&e.id.to_le_bytes());
        }
        out
    }

    /// Parse and check an xattr value as the kernel would.
    pub fn decode(bytes: &[u8]) -> Result<Acl, DecodeError> {
        if bytes.len() < 4 || (bytes.len() - 4) % 8 != 0 {
            return Err(DecodeError::Length(bytes.len()));
        }
        let version = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let mut entries = Vec::with_capacity((bytes.len() - 4) / 8);
        for chunk in bytes[4..].chunks_exact(8) {
            let raw_tag = u16::from_le_bytes([chunk[0], chunk[1]]);
            let perm = u16::from_le_bytes([chunk[2], chunk[3]]);
            let id = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
            let tag = Tag::from_raw(raw_tag).ok_or(DecodeError::Tag(raw_tag))?;
            if perm & !7 != 0 {
                return Err(DecodeError::Perm(perm));
            }
            // Unnamed entries may carry any id on disk; we normalise it.
            let id = if tag.is_named() { id } else { UNDEFINED_ID };
            entries.push(Entry { tag, id, perm });
        }
        let ordered = entries.windows(2).all(|w| {
            (w[0].tag, w[0].id) < (w[1].tag, w[1].id)
                && (w[0].tag.is_named() || w[0].tag != w[1].tag)
        });
        if !ordered {
            return Err(DecodeError::Order);
        }
        let acl = Acl { entries };
        if acl.get(Tag::UserObj).is_none()
            || acl.get(Tag::GroupObj).is_none()
            || acl.get(Tag::Other).is_none()
        {
            return Err(DecodeError::MissingBase);
        }
        if acl.named().next().is_some() && acl.mask().is_none() {
            return Err(DecodeError::MissingMask);
        }
        Ok(acl)
    }

    /// getfacl-style text, one entry a line, names from `name_of`.
    pub fn to_text_entries(&self, name_of: &dyn Fn(Tag, u32) -> String) -> Vec<String> {
        self.entries
            .iter()
            .map(|e| entry_text(e, name_of))
            .collect()
    }
}

pub fn perm_text(p: u16) -> String {
    let mut s = String::with_capacity(3);
    s.push(if p & R != 0 { 'r' } else { '-' });
    s.push(if p & W != 0 { 'w' } else { '-' });
    s.push(if p & X != 0 { 'x' } else { '-' });
    s
}

pub fn entry_text(e: &Entry, name_of: &dyn Fn(Tag, u32) -> String) -> String {
    let (tag, name) = match e.tag {
        Tag::UserObj => ("user", String::new()),
        Tag::User => ("user", name_of(Tag::User, e.id)),
        Tag::GroupObj => ("group", String::new()),
        Tag::Group => ("group", name_of(Tag::Group, e.id)),
        Tag::Mask => ("mask", String::new()),
        Tag::Other => ("other", String::new()),
    };
    format!("{tag}:{name}:{}", perm_text(e.perm))
}

/// A named entry as configured: `X` stays symbolic until we know what the
/// entry is applied to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NamedSpec {
    pub tag: Tag,
    pub id: u32,
    /// r, w, x bits.
    pub perm: u16,
    /// `X`: execute for directories, and for files someone may execute.
    pub cond_x: bool,
}

impl NamedSpec {
    /// Parse setfacl-style permissions (`r-X`, `rw`, `-`).
    pub fn perms_from_text(text: &str) -> (u16, bool) {
        let mut perm = 0;
        let mut cond_x = false;
        for c in text.chars() {
            match c {
                'r' => perm |= R,
                'w' => perm |= W,
                'x' => perm |= X,
                'X' => cond_x = true,
                _ => {}
            }
        }
        (perm, cond_x)
    }

    /// The concrete entry for an object: `X` becomes `x` on a directory or
    /// on a file whose mode has any execute bit.
    pub fn resolve(&self, is_dir: bool, mode: u32) -> Entry {
        let x = if self.cond_x && (is_dir || mode & 0o111 != 0) {
            X
        } else {
            0
        };
        Entry {
            tag: self.tag,
            id: self.id,
            perm: self.perm | x,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tag: Tag, id: u32) -> String {
        match tag {
            Tag::User => format!("u{id}"),
            _ => format!("g{id}"),
        }
    }

    #[test]
    fn a_minimal_acl_encodes_as_the_kernel_expects() {
        let acl = Acl::from_mode(0o640);
        assert_eq!(
            acl.encode(),
            vec![
                2, 0, 0, 0, //
                1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff, //
                4, 0, 4, 0, 0xff, 0xff, 0xff, 0xff, //
                0x20, 0, 0, 0, 0xff, 0xff, 0xff, 0xff,
            ]
        );
        assert_eq!(Acl::decode(&acl.encode()), Ok(acl.clone()));
        assert!(acl.is_minimal());
        assert_eq!(acl.mode_bits(), 0o640);
    }

    #[test]
    fn the_mask_is_the_union_of_the_group_class_and_effective_rights_use_it() {
        let named = [Entry {
            tag: Tag::Group,
            id: 10010,
            perm: R | X,
        }];
        let acl = Acl::with_computed_mask(R | W, R, 0, &named);
        assert_eq!(acl.mask(), Some(R | X));
        assert_eq!(acl.mode_bits(), 0o650);
        let text = acl.to_text_entries(&names);
        assert_eq!(
            text,
            [
                "user::rw-",
                "group::r--",
                "group:g10010:r-x",
                "mask::r-x",
                "other::---"
            ]
        );
        // A chmod g-x later narrows the mask: the effective rights show it.
        let mut narrowed = acl.clone();
        for e in &mut narrowed.entries {
            if e.tag == Tag::Mask {
                e.perm = R;
            }
        }
        assert_eq!(narrowed.effective(&named[0]), R);
    }

    #[test]
    fn named_entries_without_a_mask_and_bad_bytes_are_refused() {
        let acl = Acl::from_entries(vec![
            Entry::unnamed(Tag::UserObj, 6),
            Entry::unnamed(Tag::GroupObj, 4),
            Entry {
                tag: Tag::User,
                id: 5,
                perm: 4,
            },
            Entry::unnamed(Tag::Other, 0),
        ]);
        assert_eq!(Acl::decode(&acl.encode()), Err(DecodeError::MissingMask));
        assert_eq!(Acl::decode(&[2, 0, 0]), Err(DecodeError::Length(3)));
        assert_eq!(Acl::decode(&[1, 0, 0, 0]), Err(DecodeError::Version(1)));
        let mut bad = Acl::from_mode(0o600).encode();
        bad[4] = 0x40;
        assert_eq!(Acl::decode(&bad), Err(DecodeError::Tag(0x40)));
        let mut swapped = Acl::from_mode(0o600).encode();
        swapped[4] = 0x20;
        swapped[20] = 0x01;
        assert_eq!(Acl::decode(&swapped), Err(DecodeError::Order));
    }

    #[test]
    fn capital_x_is_execute_only_for_directories_and_executables() {
        let (perm, cond_x) = NamedSpec::perms_from_text("r-X");
        let spec = NamedSpec {
            tag: Tag::Group,
            id: 1,
            perm,
            cond_x,
        };
        assert_eq!(spec.resolve(true, 0o750).perm, R | X);
        assert_eq!(spec.resolve(false, 0o640).perm, R);
        assert_eq!(spec.resolve(false, 0o750).perm, R | X);
    }
}
