//! `bs-release serve`: the review UI in a browser, over the same library as
//! the CLI. It listens on a Unix socket; people reach it with `ssh -L
//! 8000:/run/bs-release/web.sock <backend>`, and who they are is what the
//! kernel says about the connecting process (SO_PEERCRED: their own SSH
//! session), mapped to their passwd entry and GitHub login. There is no
//! cookie to steal: every request is identified afresh. Each request opens
//! the store and the audit log as a CLI run does and runs the same command
//! through `dispatch::run_as`, so states, votes, blinding and refusals (and
//! their audit entries) are the CLI's. A vote is on disk before its
//! response is sent, so a restart loses none.

mod actions;
mod html;
mod http;
mod outputs;
mod pages;
mod render;
mod request_page;
mod routes;
mod status;

use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bs_core::config::Config;
use bs_core::{Output, Root};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};

pub use status::status;

/// More connections than this at once are answered 503 at once.
const MAX_CONNECTIONS: usize = 64;

pub(crate) struct Server {
    pub root: Root,
    pub config: Config,
    pub lock_timeout: Duration,
    /// Per server start: the CSRF tokens are derived from it and the uid.
    secret: [u8; 32],
    pub board: status::Board,
}

/// Listen on `socket` and serve until killed.
pub fn serve(
    root: Root,
    config: Config,
    socket: &Path,
    lock_timeout: u64,
    out: &mut Output,
) -> Result<Map<String, Value>> {
    let listener = bind(socket)?;
    let mut secret = [0u8; 32];
    rustix::rand::getrandom(&mut secret, rustix::rand::GetRandomFlags::empty())
        .map_err(|e| Error::io(socket.display().to_string(), e.into()))?;
    let server = Arc::new(Server {
        root,
        config,
        lock_timeout: Duration::from_secs(lock_timeout),
        secret,
        board: status::Board::new(socket),
    });
    server.board.publish();
    out.emit(
        "serve",
        &json!({"socket": socket.display().to_string(), "pid": std::process::id()}),
    );
    eprintln!("bs-release serve: listening on {}", socket.display());
    for conn in listener.incoming() {
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                eprintln!("bs-release serve: accept: {e}");
                continue;
            }
        };
        if server.board.active() >= MAX_CONNECTIONS {
            let mut s = stream;
            let _ = http::Response::text(503, "too many connections").write_to(&mut s);
            continue;
        }
        let server = Arc::clone(&server);
        std::thread::spawn(move || connection(&server, stream));
    }
    Ok(Map::new())
}

/// Bind the socket, replacing a stale one left by an earlier run (only a
/// socket: anything else at the path is refused), readable and writable by
/// everyone: who may do what is decided per request from the peer's uid.
fn bind(socket: &Path) -> Result<UnixListener> {
    match std::fs::symlink_metadata(socket) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(socket).map_err(|e| Error::io(socket.display().to_string(), e))?
        }
        Ok(_) => {
            return Err(Error::Usage(format!(
                "{} exists and is not a socket: refusing to replace it",
                socket.display()
            )))
        }
        Err(_) => {}
    }
    let listener =
        UnixListener::bind(socket).map_err(|e| Error::io(socket.display().to_string(), e))?;
    rustix::fs::chmod(socket, rustix::fs::Mode::from_raw_mode(0o666))
        .map_err(|e| Error::io(socket.display().to_string(), e.into()))?;
    Ok(listener)
}

/// One connection: one request, answered, closed.
fn connection(server: &Server, mut stream: UnixStream) {
    let uid = match rustix::net::sockopt::socket_peercred(&stream) {
        Ok(cred) => cred.uid.as_raw(),
        Err(e) => {
            eprintln!("bs-release serve: no peer credentials: {e}");
            return;
        }
    };
    let _ = stream.set_read_timeout(Some(http::IDLE));
    let _ = stream.set_write_timeout(Some(http::IDLE));
    let token = server.board.connect(uid);
    let response = match http::read_request(&mut stream) {
        Ok(req) => {
            let (who, resp) = routes::handle(server, &req, uid);
            server.board.identified(token, &who);
            eprintln!(
                "bs-release serve: uid {uid} ({who}) {} {} {}",
                req.method, req.path, resp.status
            );
            resp
        }
        Err(http::BadRequest(status, why)) => http::Response::text(status, why),
    };
    let _ = response.write_to(&mut stream);
    let _ = stream.flush();
    server.board.disconnect(token);
}

impl Server {
    /// The CSRF token of `uid` for this server run: only a page we served
    /// to that person carries it, so a page of another origin (a browser on
    /// the forwarded port) cannot post in their name.
    pub fn csrf_token(&self, uid: u32) -> String {
        let mut bytes = self.secret.to_vec();
        bytes.extend_from_slice(b"csrf");
        bytes.extend_from_slice(&uid.to_le_bytes());
        crate::hash::sha256_bytes(&bytes)
    }
}
