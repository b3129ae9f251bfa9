//! HTML building: escaping, the page frame, and small form helpers. Every
//! piece of text that came from a person, a file or a manifest goes
//! through [`esc`]; the pages carry no script at all.

use super::http::encode;

/// Escape text for an element or a quoted attribute.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A relative path for a link, each segment encoded (`a/b c` → `a/b%20c`).
pub fn path_link(path: &str) -> String {
    path.split('/').map(encode).collect::<Vec<_>>().join("/")
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;max-width:80em}\
table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:.2em .5em;text-align:left}\
.flag{background:#fdd;font-weight:bold}.note{background:#ffc;padding:.3em}\
.err{background:#fcc;padding:.5em;border:1px solid #c00}nav a{margin-right:1em}\
pre{background:#f6f6f6;padding:.5em;overflow:auto}iframe{width:100%;height:40em;border:1px solid #999}\
form.inline{display:inline}fieldset{margin:.5em 0}";

/// A whole page for `user`.
pub fn page(title: &str, user: &str, body: &str) -> String {
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t} · bs-release</title>\
<style>{STYLE}</style></head><body><nav><a href=\"/\">Requests and workspaces</a>\
<a href=\"/audit\">Audit log</a><span>Signed in as <b>{u}</b></span></nav><h1>{t}</h1>{body}</body></html>",
        t = esc(title),
        u = esc(user),
    )
}

/// A form that POSTs to `action` with the CSRF token, `fields` as hidden
/// inputs, `inner` (visible inputs) and a button.
pub fn form(
    action: &str,
    csrf: &str,
    fields: &[(&str, &str)],
    inner: &str,
    button: &str,
) -> String {
    let mut s = format!(
        "<form class=\"inline\" method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(action),
        esc(csrf)
    );
    for (k, v) in fields {
        s.push_str(&format!(
            "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
            esc(k),
            esc(v)
        ));
    }
    s.push_str(inner);
    s.push_str(&format!(
        "<button type=\"submit\">{}</button></form>",
        esc(button)
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_text_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(path_link("out/a b.csv"), "out/a%20b.csv");
    }
}
