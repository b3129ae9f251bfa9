//! The one HTTP agent every tool uses: explicit connect and total timeouts
//! (ureq 3 has none by default), a body size cap (so a proxy error page or
//! a runaway server cannot fill memory), non-2xx statuses returned as data
//! rather than errors, and proxy support (`[http] proxy` or the usual
//! `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY`/`NO_PROXY` variables).

use std::time::Duration;

use crate::config::HttpSettings;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// No answer within the connect or total timeout.
    Timeout(String),
    /// Could not connect (refused, unreachable, DNS).
    Connect(String),
    /// The body was larger than the configured limit.
    TooLarge(u64),
    /// Anything else: a protocol error, a bad URL.
    Other(String),
}

impl HttpError {
    /// Whether trying again may help (a timeout or a refused connection).
    pub fn is_transient(&self) -> bool {
        matches!(self, HttpError::Timeout(_) | HttpError::Connect(_))
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Timeout(m) => write!(f, "timed out: {m}"),
            HttpError::Connect(m) => write!(f, "could not connect: {m}"),
            HttpError::TooLarge(n) => write!(f, "response body larger than {n} bytes"),
            HttpError::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for HttpError {}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Clone)]
pub struct Http {
    agent: ureq::Agent,
    max_body: u64,
}

impl Http {
    pub fn new(settings: &HttpSettings) -> Result<Http, HttpError> {
        let mut builder = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(settings.connect_timeout_secs)))
            .timeout_global(Some(Duration::from_secs(settings.timeout_secs)))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("bs/", env!("CARGO_PKG_VERSION")));
        if let Some(url) = &settings.proxy {
            let proxy = ureq::Proxy::new(url)
                .map_err(|e| HttpError::Other(format!("proxy {url:?}: {e}")))?;
            builder = builder.proxy(Some(proxy));
        }
        Ok(Http {
            agent: builder.build().into(),
            max_body: settings.max_body_bytes,
        })
    }

    pub fn max_body(&self) -> u64 {
        self.max_body
    }

    pub fn get(&self, url: &str, headers: &[(&str, &str)]) -> Result<Response, HttpError> {
        let mut req = self.agent.get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.finish(req.call())
    }

    /// POST raw bytes.
    pub fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, HttpError> {
        let mut req = self.agent.post(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.finish(req.send(body))
    }

    /// POST an `application/x-www-form-urlencoded` form.
    pub fn post_form(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        fields: &[(&str, &str)],
    ) -> Result<Response, HttpError> {
        let mut req = self.agent.post(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.finish(req.send_form(fields.iter().copied()))
    }

    fn finish(
        &self,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Response, HttpError> {
        let mut resp = result.map_err(map_err)?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = resp
            .body_mut()
            .with_config()
            .limit(self.max_body)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => HttpError::TooLarge(self.max_body),
                other => map_err(other),
            })?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

fn map_err(e: ureq::Error) -> HttpError {
    match e {
        ureq::Error::Timeout(t) => HttpError::Timeout(t.to_string()),
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
            HttpError::Connect(e.to_string())
        }
        ureq::Error::Io(io) => match io.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                HttpError::Timeout(io.to_string())
            }
            std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::UnexpectedEof => HttpError::Connect(io.to_string()),
            _ => HttpError::Other(io.to_string()),
        },
        ureq::Error::BodyExceedsLimit(n) => HttpError::TooLarge(n),
        other => HttpError::Other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    fn settings(timeout: u64, max: u64) -> HttpSettings {
        HttpSettings {
            connect_timeout_secs: 2,
            timeout_secs: timeout,
            max_body_bytes: max,
            proxy: None,
        }
    }

    /// A one-shot server on 127.0.0.1 that answers with `raw` after `delay`.
    fn serve_once(raw: &'static [u8], delay: Duration) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = listener.accept() {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                std::thread::sleep(delay);
                let _ = s.write_all(raw);
            }
        });
        format!("http://{addr}/x")
    }

    #[test]
    fn non_2xx_is_data_not_an_error() {
        let url = serve_once(
            b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 5\r\n\r\noops!",
            Duration::ZERO,
        );
        let r = Http::new(&settings(5, 1024))
            .unwrap()
            .get(&url, &[])
            .unwrap();
        assert_eq!(r.status, 502);
        assert_eq!(r.text(), "oops!");
        assert!(!r.is_success());
    }

    #[test]
    fn a_stalled_server_times_out() {
        let url = serve_once(
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            Duration::from_secs(4),
        );
        let err = Http::new(&settings(1, 1024))
            .unwrap()
            .get(&url, &[])
            .unwrap_err();
        assert!(matches!(err, HttpError::Timeout(_)), "{err:?}");
        assert!(err.is_transient());
    }

    #[test]
    fn an_oversized_body_is_refused() {
        let url = serve_once(
            b"HTTP/1.1 200 OK\r\ncontent-length: 64\r\n\r\naaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            Duration::ZERO,
        );
        let err = Http::new(&settings(5, 16))
            .unwrap()
            .get(&url, &[])
            .unwrap_err();
        assert_eq!(err, HttpError::TooLarge(16));
    }

    #[test]
    fn a_refused_connection_is_transient() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = Http::new(&settings(2, 16))
            .unwrap()
            .get(&format!("http://{addr}/"), &[])
            .unwrap_err();
        assert!(err.is_transient(), "{err:?}");
    }

    #[test]
    fn an_explicit_proxy_receives_the_request() {
        // The "proxy" is a local listener: the request line must carry the
        // absolute URL of the real target, which proves it went via the proxy.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let proxy = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
            String::from_utf8_lossy(&seen).into_owned()
        });
        let mut st = settings(5, 1024);
        st.proxy = Some(proxy);
        // The answer does not matter (ureq may tunnel with CONNECT first):
        // only that the request went to the proxy, naming the real host.
        let _ = Http::new(&st)
            .unwrap()
            .get("http://keys.invalid/alice.keys", &[]);
        let request = seen.join().unwrap();
        assert!(request.contains("keys.invalid"), "{request}");
    }
}
