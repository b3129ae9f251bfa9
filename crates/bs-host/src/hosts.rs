//! The managed block of /etc/hosts: the core hosts every backend needs and
//! the backend's own, so they resolve without DNS. Everything outside the
//! block is left as it is. When cloud-init owns the file (its template
//! exists), it rewrites /etc/hosts from the template at boot and would drop
//! the block (backend-server #206, #225, #241): the block then goes into the
//! template too, so the next rewrite keeps it.

use bs_core::config::parse_hosts_line;
use bs_core::Output;
use serde_json::json;

use crate::files::{self, ManagedFile};
use crate::{RunCtx, Selection};

pub const BEGIN: &str = "# BEGIN bs-host managed hosts: edits inside this block are overwritten";
pub const END: &str = "# END bs-host managed hosts";

/// The block's lines (markers included), or nothing when no hosts are configured.
pub fn render_block(backend: &str, core: &[String], own: &[String]) -> String {
    if core.is_empty() && own.is_empty() {
        return String::new();
    }
    let mut text = format!("{BEGIN}\n");
    for (title, lines) in [
        ("core hosts (backends/defaults.toml)", core),
        ("this backend's hosts", own),
    ] {
        if lines.is_empty() {
            continue;
        }
        text.push_str(&format!("# {title}, backends/{backend}\n"));
        for line in lines {
            // Checked when the config loaded; normalised to one tab.
            if let Ok((addr, names)) = parse_hosts_line(line) {
                text.push_str(&format!("{addr}\t{}\n", names.join(" ")));
            }
        }
    }
    text.push_str(END);
    text.push('\n');
    text
}

pub fn has_block(text: &str) -> bool {
    text.lines().any(|l| l == BEGIN)
}

/// `current` with its block replaced by `block` (appended when there is
/// none; removed when `block` is empty). A BEGIN without its END is refused:
/// guessing where the block ends could eat the operator's lines.
pub fn edit(current: &str, block: &str) -> Result<String, String> {
    let lines: Vec<&str> = current.split_inclusive('\n').collect();
    let begin = lines.iter().position(|l| l.trim_end_matches('\n') == BEGIN);
    let Some(begin) = begin else {
        if block.is_empty() {
            return Ok(current.to_string());
        }
        let mut out = current.to_string();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        if !out.is_empty() && !out.ends_with("\n\n") {
            out.push('\n');
        }
        out.push_str(block);
        return Ok(out);
    };
    let end = lines[begin..]
        .iter()
        .position(|l| l.trim_end_matches('\n') == END)
        .map(|i| begin + i)
        .ok_or_else(|| {
            format!("the line {BEGIN:?} has no {END:?} after it: fix the file by hand")
        })?;
    let mut out: String = lines[..begin].concat();
    out.push_str(block);
    out.push_str(&lines[end + 1..].concat());
    Ok(out)
}

pub fn run(ctx: &RunCtx<'_>, out: &mut Output, sel: &mut Selection) {
    let host = &ctx.config.host;
    let block = render_block(&ctx.config.backend_dir, &host.hosts, &host.backend_hosts);
    let template = ctx.root.join(&host.cloud_hosts_template);
    let mut targets = vec![(&host.hosts_file, "hosts")];
    if template.is_file() {
        targets.push((&host.cloud_hosts_template, "cloud_hosts_template"));
    }
    for (path, kind) in targets {
        let target = path.display().to_string();
        let (current, mode) = match files::read_existing(&ctx.root.join(path)) {
            Ok(Some((bytes, st))) => (
                String::from_utf8_lossy(&bytes).into_owned(),
                st.st_mode & 0o7777,
            ),
            Ok(None) => (String::new(), 0o644),
            Err(e) => {
                out.error(e.kind(), &target, &e.to_string());
                continue;
            }
        };
        let edited = match edit(&current, &block) {
            Ok(t) => t,
            Err(message) => {
                out.error("hosts_block", &target, &message);
                continue;
            }
        };
        let file = ManagedFile {
            target,
            contents: edited.into_bytes(),
            mode,
            kind,
        };
        files::converge(ctx, out, sel, &file);
    }
    if !template.is_file() && ctx.root.join("/etc/cloud/cloud.cfg").is_file() {
        out.emit(
            "note",
            &json!({
                "target": host.cloud_hosts_template,
                "message": "cloud-init is installed but this template is missing: if cloud-init manages /etc/hosts with another template, the block may be lost at boot",
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block() -> String {
        render_block(
            "test",
            &["10.0.0.1 release.example.org  proxy.example.org".into()],
            &["10.0.0.2 db.example.org".into()],
        )
    }

    #[test]
    fn the_block_is_appended_once_and_replaced_in_place() {
        let original = "127.0.0.1\tlocalhost\n::1 localhost\n";
        let once = edit(original, &block()).unwrap();
        assert!(once.starts_with(original));
        assert!(once.contains("10.0.0.1\trelease.example.org proxy.example.org\n"));
        assert_eq!(edit(&once, &block()).unwrap(), once, "idempotent");
        let with_local = format!("{once}192.168.1.1 printer\n");
        let changed = render_block("test", &["10.0.0.9 release.example.org".into()], &[]);
        let again = edit(&with_local, &changed).unwrap();
        assert!(again.contains("10.0.0.9\trelease.example.org\n"));
        assert!(!again.contains("db.example.org"));
        assert!(
            again.ends_with("192.168.1.1 printer\n"),
            "lines after the block stay"
        );
        assert!(again.starts_with(original), "lines before the block stay");
    }

    #[test]
    fn an_empty_block_removes_ours_and_a_lone_begin_is_refused() {
        let once = edit("127.0.0.1 localhost\n", &block()).unwrap();
        let removed = edit(&once, "").unwrap();
        assert!(!removed.contains("bs-host"));
        assert!(edit(&format!("{BEGIN}\n10.0.0.1 x\n"), &block()).is_err());
    }
}
