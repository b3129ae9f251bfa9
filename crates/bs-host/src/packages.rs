//! Debian packages present, purged and held, as the backend config says;
//! nothing else. An install never removes a package (`--no-remove`) and
//! brings no recommendations; a purge that would take other packages with it
//! (their dependants) is refused; apt's autoremove is never run. Each
//! package is its own item: one that cannot be found, or a dpkg lock another
//! process keeps, fails that item and the others still converge.

use serde_json::json;

use bs_core::Output;

use crate::dpkg::{self, Database};
use crate::{apt, decide, HostChange, RunCtx, Selection};

pub fn run(ctx: &RunCtx<'_>, out: &mut Output, sel: &mut Selection) {
    let host = &ctx.config.host;
    if host.packages.is_empty() && host.purge.is_empty() && host.hold.is_empty() {
        return;
    }
    let db = match Database::read(ctx.root) {
        Ok(Some(db)) => db,
        Ok(None) => {
            out.emit(
                "note",
                &json!({
                    "target": dpkg::STATUS,
                    "message": "no dpkg database under this root: packages are not planned",
                }),
            );
            return;
        }
        Err(e) => {
            out.core_error(&e);
            return;
        }
    };

    for name in &host.purge {
        let pkg = db.get(name);
        let change = HostChange::Purge {
            target: name.clone(),
        };
        let present = pkg.is_some_and(dpkg::Package::present);
        let record = json!({"installed": pkg.is_some_and(dpkg::Package::installed)});
        if decide(ctx, out, sel, &change, present, record) {
            purge(ctx, out, name);
        }
    }

    let mut updated = false;
    for name in &host.packages {
        let pkg = db.get(name);
        let change = HostChange::Install {
            target: name.clone(),
        };
        let installed = pkg.is_some_and(dpkg::Package::installed);
        let record = json!({
            "installed": installed,
            "version": pkg.map(|p| p.version.clone()).unwrap_or_default(),
        });
        if decide(ctx, out, sel, &change, !installed, record) {
            if !updated {
                // Fresh lists once a run, and only when something is to be
                // installed; a failed update is reported, and the install
                // still tried from the lists there are.
                apt::run(ctx, out, &apt::apt_get(ctx, &["update"]), "apt-get update");
                updated = true;
            }
            let cmd = apt::apt_get(
                ctx,
                &[
                    "install",
                    "-y",
                    "--no-install-recommends",
                    "--no-remove",
                    "--",
                    name,
                ],
            );
            apt::run(ctx, out, &cmd, name);
        }
    }

    // Holds after installs: a package installed just now is held in the same run.
    let db = if ctx.applying() {
        match Database::read(ctx.root) {
            Ok(Some(fresh)) => fresh,
            _ => db,
        }
    } else {
        db
    };
    for name in &host.hold {
        let pkg = db.get(name);
        let installed = pkg.is_some_and(dpkg::Package::installed);
        let held = pkg.is_some_and(dpkg::Package::held);
        let change = HostChange::Hold {
            target: name.clone(),
        };
        // A package that is not installed has nothing to hold back; if the
        // config installs it, it is held in the same run.
        let record = json!({"installed": installed, "held": held});
        if decide(ctx, out, sel, &change, installed && !held, record) {
            apt::run(ctx, out, &apt::apt_mark(&["hold", "--", name]), name);
        }
    }
}

/// The packages an `apt-get -s purge` would remove (`Purg NAME ...` and
/// `Remv NAME ...` lines).
pub fn simulated_removals(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match w.next() {
                Some("Purg") | Some("Remv") => w.next().map(|n| {
                    // apt prints an architecture-qualified name for some.
                    n.split(':').next().unwrap_or(n).to_string()
                }),
                _ => None,
            }
        })
        .collect()
}

fn purge(ctx: &RunCtx<'_>, out: &mut Output, name: &str) {
    let sim = apt::apt_get(ctx, &["-s", "purge", "--", name]);
    let Some(ran) = apt::run(ctx, out, &sim, name) else {
        return;
    };
    if ran.skipped {
        return;
    }
    let others: Vec<String> = simulated_removals(&ran.stdout)
        .into_iter()
        .filter(|n| n != name && !ctx.config.host.purge.contains(n))
        .collect();
    if !others.is_empty() {
        out.error(
            "purge_takes_others",
            name,
            &format!(
                "purging {name} would also remove {}, which the config does not name: not purged; purge them too in host.purge, or drop {name} from it",
                others.join(", ")
            ),
        );
        return;
    }
    let cmd = apt::apt_get(ctx, &["purge", "-y", "--", name]);
    apt::run(ctx, out, &cmd, name);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_removals_lists_every_package_a_purge_takes() {
        let sim = "Reading package lists...\nThe following packages will be REMOVED:\n  apport* python3-apport*\n\
Purg python3-apport [2.20]\nPurg apport [2.20]\nRemv libfoo:amd64 [1.0]\nInst x [1]\n";
        assert_eq!(
            simulated_removals(sim),
            vec!["python3-apport", "apport", "libfoo"]
        );
    }
}
