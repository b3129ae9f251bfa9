//! How an output's bytes are shown: a CSV as a table with the disclosure
//! findings marked in place, images inline, HTML reports in a sandboxed
//! frame, text as text; and the raw bytes with headers that keep a browser
//! from running anything in them.

use bs_core::config::ReleaseConfig;

use super::html::esc;
use super::http::Response;
use crate::checks::{self, Finding};

/// The policy of raw output bytes: a sandbox (a unique origin, no script,
/// no forms, no plugins) that may load nothing from anywhere, so an HTML
/// report cannot reach the page or the network; only our own pages may
/// frame it.
pub const OUTPUT_CSP: &str = "sandbox; default-src 'none'; style-src 'unsafe-inline'; \
img-src data:; frame-ancestors 'self'";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Table(u8),
    Image(&'static str),
    Html,
    Text,
    /// Anything else (PDF, unknown): downloaded, never shown.
    Other,
}

fn kind(path: &str) -> Kind {
    match checks::extension(path).as_str() {
        "csv" => Kind::Table(b','),
        "tsv" => Kind::Table(b'\t'),
        "png" => Kind::Image("image/png"),
        "jpg" | "jpeg" => Kind::Image("image/jpeg"),
        "svg" => Kind::Image("image/svg+xml"),
        "html" | "htm" => Kind::Html,
        "txt" | "log" | "md" | "json" => Kind::Text,
        _ => Kind::Other,
    }
}

/// The raw bytes of an output. Shown inline only as what cannot run script
/// where it is shown (images in an `<img>`, text as text/plain, HTML under
/// the sandbox policy); everything else, and everything with `download`,
/// as an attachment.
pub fn raw(path: &str, bytes: Vec<u8>, download: bool) -> Response {
    let name: String = path
        .rsplit('/')
        .next()
        .unwrap_or("output")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let (mime, inline) = match kind(path) {
        Kind::Image(m) => (m, true),
        Kind::Html => ("text/html; charset=utf-8", true),
        Kind::Table(_) | Kind::Text => ("text/plain; charset=utf-8", true),
        Kind::Other => ("application/octet-stream", false),
    };
    let disposition = if inline && !download {
        "inline".to_string()
    } else {
        format!("attachment; filename=\"{name}\"")
    };
    Response {
        status: 200,
        headers: vec![
            ("Content-Type", mime.to_string()),
            ("Content-Disposition", disposition),
            ("Content-Security-Policy", OUTPUT_CSP.to_string()),
            ("X-Frame-Options", "SAMEORIGIN".to_string()),
            ("Cross-Origin-Resource-Policy", "same-origin".to_string()),
        ],
        body: bytes,
    }
}

/// The view of an output: its findings, then its content as fits its type.
/// `raw_url` serves its bytes; `sort` is the CSV column to sort by
/// (`Some((column, descending))`).
pub fn view(
    path: &str,
    bytes: &[u8],
    cfg: &ReleaseConfig,
    raw_url: &str,
    sort: Option<(usize, bool)>,
) -> String {
    let findings = checks::check(path, bytes.len() as u64, Some(bytes), cfg);
    let mut s = findings_list(&findings);
    let dl = format!("{raw_url}?download=1");
    s.push_str(&format!(
        "<p>{} bytes, sha256 <code>{}</code> · <a href=\"{}\">download</a></p>",
        bytes.len(),
        crate::hash::sha256_bytes(bytes),
        esc(&dl)
    ));
    match kind(path) {
        Kind::Table(sep) => s.push_str(&table(bytes, sep, &findings, cfg, sort)),
        Kind::Image(_) => s.push_str(&format!(
            "<p><img src=\"{}\" alt=\"{}\" style=\"max-width:100%\"></p>",
            esc(raw_url),
            esc(path)
        )),
        Kind::Html => s.push_str(&format!(
            "<iframe sandbox=\"\" referrerpolicy=\"no-referrer\" src=\"{}\" title=\"{}\"></iframe>",
            esc(raw_url),
            esc(path)
        )),
        Kind::Text => s.push_str(&format!(
            "<pre>{}</pre>",
            esc(&String::from_utf8_lossy(bytes))
        )),
        Kind::Other => s.push_str("<p>Not shown in the browser: download it to look at it.</p>"),
    }
    s
}

pub fn findings_list(findings: &[Finding]) -> String {
    if findings.is_empty() {
        return "<p>No disclosure findings.</p>".into();
    }
    let mut s = String::from("<div class=\"note\"><b>Disclosure findings</b><ul>");
    for f in findings {
        s.push_str(&format!(
            "<li class=\"finding\" data-check=\"{}\">{}</li>",
            esc(&f.check),
            esc(&f.message)
        ));
    }
    s.push_str("</ul></div>");
    s
}

/// A table with the original row numbers, sortable by a column (links: no
/// script), low counts and a patient_id column marked in place.
fn table(
    bytes: &[u8],
    sep: u8,
    findings: &[Finding],
    cfg: &ReleaseConfig,
    sort: Option<(usize, bool)>,
) -> String {
    let mut records = checks::table(bytes, sep);
    if records.is_empty() {
        return "<p>(empty table)</p>".into();
    }
    let header = records.remove(0);
    let flagged_columns: Vec<&str> = findings
        .iter()
        .filter(|f| f.check == "patient_id_column")
        .filter_map(|f| f.column.as_deref())
        .collect();
    let mut rows: Vec<(usize, Vec<String>)> = records
        .into_iter()
        .enumerate()
        .map(|(i, r)| (i + 1, r))
        .collect();
    if let Some((col, desc)) = sort {
        rows.sort_by(|a, b| {
            let (x, y) = (a.1.get(col), b.1.get(col));
            let num = |v: Option<&String>| v.and_then(|s| s.trim().parse::<f64>().ok());
            let ord = match (num(x), num(y)) {
                (Some(p), Some(q)) => p.partial_cmp(&q).unwrap_or(std::cmp::Ordering::Equal),
                _ => x.cmp(&y),
            };
            if desc {
                ord.reverse()
            } else {
                ord
            }
        });
    }
    let mut s = String::from("<table class=\"csv\"><thead><tr><th>row</th>");
    for (i, h) in header.iter().enumerate() {
        let desc = sort == Some((i, false));
        let class = if flagged_columns.contains(&h.trim()) {
            " class=\"flag\""
        } else {
            ""
        };
        s.push_str(&format!(
            "<th{class}><a href=\"?sort={i}{}\">{}</a></th>",
            if desc { "&amp;desc=1" } else { "" },
            esc(h)
        ));
    }
    s.push_str("</tr></thead><tbody>");
    for (n, r) in rows {
        s.push_str(&format!("<tr><td>{n}</td>"));
        for cell in &r {
            if checks::low_count_cell(cell, cfg.low_count_threshold) {
                s.push_str(&format!(
                    "<td class=\"flag\" title=\"low count\">{}</td>",
                    esc(cell)
                ));
            } else {
                s.push_str(&format!("<td>{}</td>", esc(cell)));
            }
        }
        s.push_str("</tr>");
    }
    s.push_str("</tbody></table>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_counts_are_marked_and_markup_escaped() {
        let cfg = ReleaseConfig::default();
        let html = view("t.csv", b"group,n\n<b>,3\nb,100\n", &cfg, "/raw", None);
        assert!(
            html.contains("<td class=\"flag\" title=\"low count\">3</td>"),
            "{html}"
        );
        assert!(html.contains("<td>100</td>"));
        assert!(html.contains("&lt;b&gt;") && !html.contains("<b>,"));
        assert!(html.contains("data-check=\"low_count\""));
    }

    #[test]
    fn what_a_browser_could_run_is_sandboxed_or_downloaded() {
        let r = raw("r.html", b"<script>".to_vec(), false);
        let get = |r: &Response, k: &str| {
            r.headers
                .iter()
                .find(|(h, _)| *h == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert!(get(&r, "Content-Security-Policy").starts_with("sandbox;"));
        let r = raw("x.pdf", Vec::new(), false);
        assert!(get(&r, "Content-Disposition").starts_with("attachment"));
        let r = raw("a b\".svg", Vec::new(), true);
        assert_eq!(
            get(&r, "Content-Disposition"),
            "attachment; filename=\"a_b_.svg\""
        );
    }
}
