//! A minimal HTTP/1.1 server side, over a Unix socket: one request per
//! connection (`Connection: close`), bounded headers and bodies, no
//! chunked uploads. Hand-rolled because the identity of the caller is the
//! connecting socket's peer credentials, which the small HTTP server crates
//! do not hand to their handlers for Unix sockets; what a review UI needs
//! of HTTP (GET, and form POSTs from our own pages) is small.

use std::io::{Read, Write};
use std::time::Duration;

/// Headers larger than this are refused (431).
const MAX_HEAD: usize = 16 * 1024;
/// Form bodies larger than this are refused (413): comments and context are text.
pub const MAX_BODY: usize = 256 * 1024;
/// A client that sends nothing for this long is dropped.
pub const IDLE: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path, percent-decoded per segment later (see [`segments`]).
    pub path: String,
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The form fields of a urlencoded body.
    pub fn form(&self) -> Vec<(String, String)> {
        parse_query(&String::from_utf8_lossy(&self.body))
    }

    pub fn query_value(&self, name: &str) -> Option<String> {
        parse_query(&self.query)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// Why a request could not be read: the status to answer with.
#[derive(Debug)]
pub struct BadRequest(pub u16, pub &'static str);

/// Read one request from `stream`.
pub fn read_request(stream: &mut impl Read) -> Result<Request, BadRequest> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(BadRequest(431, "request headers too large"));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err(BadRequest(400, "connection closed mid-request")),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(BadRequest(408, "request timed out")),
        }
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| BadRequest(400, "request headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(BadRequest(400, "malformed request line"));
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(BadRequest(400, "malformed request line"));
    }
    let mut headers = Vec::new();
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            return Err(BadRequest(400, "malformed header"));
        };
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut req = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body: Vec::new(),
    };
    if req.header("transfer-encoding").is_some() {
        return Err(BadRequest(411, "send a Content-Length, not a chunked body"));
    }
    let len: usize = match req.header("content-length") {
        None => 0,
        Some(v) => v
            .parse()
            .map_err(|_| BadRequest(400, "bad Content-Length"))?,
    };
    if len > MAX_BODY {
        return Err(BadRequest(413, "request body too large"));
    }
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        match stream.read(&mut chunk) {
            Ok(0) => return Err(BadRequest(400, "connection closed mid-body")),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(BadRequest(408, "request timed out")),
        }
    }
    body.truncate(len);
    req.body = body;
    Ok(req)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decode `%XX` and `+` (form encoding). Invalid escapes stay as they are;
/// the bytes are then read as UTF-8, lossily.
pub fn percent_decode(s: &str, plus_is_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' if plus_is_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// Encode a path segment (or a query value) for a link.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The path's segments, each percent-decoded. An encoded `/` stays inside
/// its segment and is then refused where a segment is a name.
pub fn segments(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s, false))
        .collect()
}

pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

/// The policy of our own pages: no script at all, nothing from elsewhere,
/// forms only to us, frames only of our own output views.
const PAGE_CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; \
frame-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

impl Response {
    pub fn html(status: u16, body: String) -> Response {
        Response {
            status,
            headers: vec![
                ("Content-Type", "text/html; charset=utf-8".into()),
                ("Content-Security-Policy", PAGE_CSP.into()),
                ("X-Frame-Options", "DENY".into()),
            ],
            body: body.into_bytes(),
        }
    }

    pub fn redirect(to: &str) -> Response {
        Response {
            status: 303,
            headers: vec![("Location", to.to_string())],
            body: Vec::new(),
        }
    }

    pub fn text(status: u16, message: &str) -> Response {
        Response {
            status,
            headers: vec![("Content-Type", "text/plain; charset=utf-8".into())],
            body: format!("{message}\n").into_bytes(),
        }
    }

    /// Write the response; every one carries nosniff, no caching (outputs
    /// and votes are not for a shared cache) and no referrer.
    pub fn write_to(&self, stream: &mut impl Write) -> std::io::Result<()> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (k, v) in &self.headers {
            // Values are ours, but a newline in one must never split the head.
            let v: String = v.chars().filter(|c| !c.is_control()).collect();
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("X-Content-Type-Options: nosniff\r\n");
        head.push_str("Cache-Control: no-store\r\n");
        head.push_str("Referrer-Policy: no-referrer\r\n");
        head.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        head.push_str("Connection: close\r\n\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(&self.body)?;
        stream.flush()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        303 => "See Other",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_post_is_read_with_its_body() {
        let raw =
            b"POST /a/b%2Fc?x=1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 9\r\n\r\nk=v+w%21&";
        let r = read_request(&mut &raw[..]).unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/a/b%2Fc"));
        assert_eq!(r.form(), vec![("k".to_string(), "v w!".to_string())]);
        assert_eq!(segments(&r.path), vec!["a", "b/c"]);
        assert_eq!(r.query_value("x").as_deref(), Some("1"));
    }

    #[test]
    fn oversized_or_chunked_requests_are_refused() {
        let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(read_request(&mut &raw[..]).unwrap_err().0, 411);
        let raw = format!(
            "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert_eq!(read_request(&mut raw.as_bytes()).unwrap_err().0, 413);
        assert_eq!(percent_decode("%zz%4", false), "%zz%4");
    }
}
