//! Detect and mend a torn set of account files: what a kill between two
//! renames left before the journal existed, or what a tool's change
//! between a kill and the next run mixed into an interrupted transaction.
//! The repairs are the ones `pwck`/`grpck` would ask for, limited to what
//! cannot lose a person's access: duplicates go (the first line is the one
//! every reader uses), orphan shadow lines go, a missing shadow line comes
//! back locked, gshadow follows group, and a missing private group of an
//! account the caller vouches for is created with that account's gid.

use std::collections::BTreeSet;

use serde::Serialize;

use super::{AccountDb, GroupEntry, GshadowEntry, Line, PasswdEntry, Record, ShadowEntry, Table};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Repair {
    /// The system path of the file changed.
    pub file: &'static str,
    /// The user or group name.
    pub name: String,
    /// `duplicate_entry`, `orphan_entry`, `missing_entry`, `members_differ`
    /// or `missing_private_group`.
    pub problem: &'static str,
    pub fix: String,
}

fn dedup<T: Record + Clone>(table: &mut Table<T>, file: &'static str, out: &mut Vec<Repair>) {
    let mut seen = BTreeSet::new();
    table.retain(|l| match l {
        Line::Entry(e) if !seen.insert(e.key().to_string()) => {
            out.push(Repair {
                file,
                name: e.key().to_string(),
                problem: "duplicate_entry",
                fix: "removed the later line; the first is the one in use".into(),
            });
            false
        }
        _ => true,
    });
}

fn remove_orphans<T: Record + Clone>(
    table: &mut Table<T>,
    file: &'static str,
    keep: &BTreeSet<String>,
    owner: &str,
    out: &mut Vec<Repair>,
) {
    table.retain(|l| match l {
        Line::Entry(e) if !keep.contains(e.key()) => {
            out.push(Repair {
                file,
                name: e.key().to_string(),
                problem: "orphan_entry",
                fix: format!("removed: no {owner} entry of that name"),
            });
            false
        }
        _ => true,
    });
}

impl AccountDb {
    /// Find and mend inconsistencies in memory (saved with the next
    /// [`AccountDb::save`]). `private_group_for` says which accounts may get
    /// a missing primary group created for them (bs's own accounts); other
    /// accounts with a dangling gid are left to their owner.
    pub fn repair(&mut self, private_group_for: &dyn Fn(&PasswdEntry) -> bool) -> Vec<Repair> {
        let mut out = Vec::new();
        // Lines move and members change below: rebuilt when next needed.
        self.memberships = std::cell::OnceCell::new();
        self.used_ids = std::cell::OnceCell::new();
        self.free_from.set((0, 0));
        dedup(&mut self.passwd, super::PASSWD, &mut out);
        dedup(&mut self.group, super::GROUP, &mut out);
        let users: BTreeSet<String> = self.passwd.entries().map(|u| u.name.clone()).collect();
        let groups_before: BTreeSet<String> =
            self.group.entries().map(|g| g.name.clone()).collect();

        // Missing private groups first, so gshadow below gets them too.
        let mut add: Vec<(String, u32)> = Vec::new();
        let gids: BTreeSet<u32> = self.group.entries().map(|g| g.gid).collect();
        for u in self.passwd.entries() {
            if !gids.contains(&u.gid) && !groups_before.contains(&u.name) && private_group_for(u) {
                add.push((u.name.clone(), u.gid));
            }
        }
        for (name, gid) in add {
            self.group.push(GroupEntry {
                name: name.clone(),
                password: "x".into(),
                gid,
                members: Vec::new(),
            });
            out.push(Repair {
                file: super::GROUP,
                name,
                problem: "missing_private_group",
                fix: format!("created with gid {gid}, the account's primary gid"),
            });
        }

        if self.shadow.present {
            dedup(&mut self.shadow, super::SHADOW, &mut out);
            remove_orphans(&mut self.shadow, super::SHADOW, &users, "passwd", &mut out);
            let have: BTreeSet<String> = self.shadow.entries().map(|s| s.name.clone()).collect();
            for name in users.iter().filter(|n| !have.contains(*n)) {
                // Locked: no password anyone knows; keys and the owner's
                // `passwd` still work as before for a bs account.
                self.shadow.push(ShadowEntry {
                    name: name.clone(),
                    hash: "!".into(),
                    last_change: String::new(),
                    min: String::new(),
                    max: String::new(),
                    warn: String::new(),
                    inactive: String::new(),
                    expire: String::new(),
                    reserved: String::new(),
                });
                out.push(Repair {
                    file: super::SHADOW,
                    name: name.clone(),
                    problem: "missing_entry",
                    fix: "added a locked shadow line".into(),
                });
            }
        }
        if self.gshadow.present {
            let groups: BTreeSet<String> = self.group.entries().map(|g| g.name.clone()).collect();
            dedup(&mut self.gshadow, super::GSHADOW, &mut out);
            remove_orphans(
                &mut self.gshadow,
                super::GSHADOW,
                &groups,
                "group",
                &mut out,
            );
            let have: BTreeSet<String> = self.gshadow.entries().map(|g| g.name.clone()).collect();
            let missing: Vec<GroupEntry> = self
                .group
                .entries()
                .filter(|g| !have.contains(&g.name))
                .cloned()
                .collect();
            // group is what every reader uses for membership; gshadow
            // follows it, as grpck asks.
            for g in self.group.entries() {
                if let Some(gs) = self.gshadow.get_mut(&g.name) {
                    let want: BTreeSet<&String> = g.members.iter().collect();
                    let have: BTreeSet<&String> = gs.members.iter().collect();
                    if want != have {
                        gs.members = g.members.clone();
                        out.push(Repair {
                            file: super::GSHADOW,
                            name: g.name.clone(),
                            problem: "members_differ",
                            fix: "members set to those of its group line".into(),
                        });
                    }
                }
            }
            for g in missing {
                self.gshadow.push(GshadowEntry {
                    name: g.name.clone(),
                    password: "!".into(),
                    admins: Vec::new(),
                    members: g.members.clone(),
                });
                out.push(Repair {
                    file: super::GSHADOW,
                    name: g.name,
                    problem: "missing_entry",
                    fix: "added, with the members of its group line".into(),
                });
            }
        }
        out
    }
}
