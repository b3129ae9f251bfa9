//! Fetching `<key_source>/<login>.keys` for many logins at once.
//!
//! Concurrent (a fixed number of worker threads), retried on 5xx and
//! transient network errors with a short backoff, and strict about what
//! counts as an answer: a 200 whose body holds no key at all (an HTML
//! error page from a proxy) is a failure, so the caller keeps the last good
//! keys. An empty 200 is GitHub's answer for a login without keys: valid.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bs_core::http::Http;

use crate::keys::{self, BadLine, Key};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fetched {
    /// The keys the server listed (possibly none), and lines it sent that
    /// were not keys.
    Keys { keys: Vec<Key>, bad: Vec<BadLine> },
    /// No usable answer; the reason, for the error record.
    Failed { reason: String },
}

pub struct Fetcher<'a> {
    pub http: &'a Http,
    pub source: &'a str,
    pub concurrency: usize,
    pub retries: u32,
}

impl Fetcher<'_> {
    pub fn url(&self, login: &str) -> String {
        format!("{}/{}.keys", self.source.trim_end_matches('/'), login)
    }

    /// Fetch every login; the map holds one outcome per login.
    pub fn fetch_all(&self, logins: &[String]) -> BTreeMap<String, Fetched> {
        let next = AtomicUsize::new(0);
        let results = Mutex::new(BTreeMap::new());
        let workers = self.concurrency.clamp(1, logins.len().max(1));
        std::thread::scope(|scope| {
            for _ in 0..workers {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(login) = logins.get(i) else { break };
                    let outcome = self.fetch_one(login);
                    if let Ok(mut r) = results.lock() {
                        r.insert(login.clone(), outcome);
                    }
                });
            }
        });
        results.into_inner().unwrap_or_default()
    }

    pub fn fetch_one(&self, login: &str) -> Fetched {
        let url = self.url(login);
        let mut attempt = 0;
        loop {
            let (outcome, retry) = self.attempt(&url);
            if !retry || attempt >= self.retries {
                return outcome;
            }
            attempt += 1;
            std::thread::sleep(Duration::from_millis(200 << attempt.min(4)));
        }
    }

    /// One request: the outcome, and whether trying again may help.
    fn attempt(&self, url: &str) -> (Fetched, bool) {
        let failed = |reason: String| Fetched::Failed { reason };
        match self.http.get(url, &[("Accept", "text/plain")]) {
            Ok(resp) if resp.status == 200 => {
                let Ok(text) = String::from_utf8(resp.body) else {
                    return (failed("the answer is not text".into()), false);
                };
                let (keys, bad) = keys::parse(&text, url);
                if keys.is_empty() && !bad.is_empty() {
                    let first: String =
                        text.lines().next().unwrap_or("").chars().take(60).collect();
                    return (
                        failed(format!(
                            "the answer is not a list of keys (it starts {first:?})"
                        )),
                        false,
                    );
                }
                (Fetched::Keys { keys, bad }, false)
            }
            Ok(resp) => (failed(format!("HTTP {}", resp.status)), resp.status >= 500),
            Err(e) => {
                let retry = e.is_transient();
                (failed(e.to_string()), retry)
            }
        }
    }
}
