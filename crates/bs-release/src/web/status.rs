//! Who is connected: the running server keeps a board of its open
//! connections and of the people it has served, and writes it next to its
//! socket (`<socket>.status`, atomically) whenever it changes;
//! `serve --status` reads it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bs_core::safefs::FileSpec;
use bs_core::Output;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::timefmt;

#[derive(Default, Serialize, Deserialize)]
struct State {
    pid: u32,
    started: String,
    /// Open connections: uid, person (once identified), since.
    connections: BTreeMap<u64, Connection>,
    /// People served since the start: their last request and how many.
    people: BTreeMap<String, Seen>,
}

#[derive(Serialize, Deserialize)]
struct Connection {
    uid: u32,
    user: Option<String>,
    since: String,
}

#[derive(Serialize, Deserialize)]
struct Seen {
    last: String,
    requests: u64,
}

pub(crate) struct Board {
    path: PathBuf,
    state: Mutex<(u64, State)>,
}

fn status_path(socket: &Path) -> PathBuf {
    let mut p = socket.as_os_str().to_owned();
    p.push(".status");
    PathBuf::from(p)
}

impl Board {
    pub fn new(socket: &Path) -> Board {
        Board {
            path: status_path(socket),
            state: Mutex::new((
                0,
                State {
                    pid: std::process::id(),
                    started: timefmt::now(),
                    ..State::default()
                },
            )),
        }
    }

    pub fn active(&self) -> usize {
        self.state
            .lock()
            .map(|s| s.1.connections.len())
            .unwrap_or(0)
    }

    pub fn connect(&self, uid: u32) -> u64 {
        let token = match self.state.lock() {
            Ok(mut s) => {
                s.0 += 1;
                let t = s.0;
                s.1.connections.insert(
                    t,
                    Connection {
                        uid,
                        user: None,
                        since: timefmt::now(),
                    },
                );
                t
            }
            Err(_) => 0,
        };
        self.publish();
        token
    }

    pub fn identified(&self, token: u64, user: &str) {
        if let Ok(mut s) = self.state.lock() {
            if let Some(c) = s.1.connections.get_mut(&token) {
                c.user = Some(user.to_string());
            }
            let seen = s.1.people.entry(user.to_string()).or_insert(Seen {
                last: String::new(),
                requests: 0,
            });
            seen.last = timefmt::now();
            seen.requests += 1;
        }
    }

    pub fn disconnect(&self, token: u64) {
        if let Ok(mut s) = self.state.lock() {
            s.1.connections.remove(&token);
        }
        self.publish();
    }

    /// Write the board; a failure is reported on stderr (the journal), never fatal.
    pub fn publish(&self) {
        let bytes = match self.state.lock() {
            Ok(s) => serde_json::to_vec_pretty(&s.1).unwrap_or_default(),
            Err(_) => return,
        };
        let spec = FileSpec {
            mode: 0o644,
            uid: rustix::process::geteuid().as_raw(),
            gid: rustix::process::getegid().as_raw(),
        };
        if let Err(e) = bs_core::safefs::write_atomic(&self.path, &bytes, &spec) {
            eprintln!("bs-release serve: {}: {e}", self.path.display());
        }
    }
}

/// `serve --status`: the running server and who is connected to it.
pub fn status(socket: &Path, out: &mut Output) -> Result<Map<String, Value>> {
    let path = status_path(socket);
    let bytes = std::fs::read(&path).map_err(|_| Error::NotFound {
        what: format!(
            "{} (no server has run on {})",
            path.display(),
            socket.display()
        ),
    })?;
    let state: State = serde_json::from_slice(&bytes).map_err(|e| Error::Manifest {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let running = Path::new(&format!("/proc/{}", state.pid)).exists() && socket.exists();
    out.emit(
        "server",
        &json!({"socket": socket.display().to_string(), "pid": state.pid, "running": running,
                "started": state.started, "connections": state.connections.len()}),
    );
    if running {
        for c in state.connections.values() {
            out.emit(
                "connection",
                &json!({"uid": c.uid, "user": c.user, "since": c.since}),
            );
        }
    }
    for (user, seen) in &state.people {
        out.emit(
            "person",
            &json!({"user": user, "last_request": seen.last, "requests": seen.requests}),
        );
    }
    Ok(Map::new())
}
