//! Test kit: sandbox roots for bs-chrony and a real chronyd that never
//! touches the clock (`-x`), with its own config, socket and files in a
//! temp dir, optionally fed by a SOCK refclock named PHC0.
#![allow(dead_code)]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

pub const DEBIAN_CONF: &str = "# Welcome to the chrony configuration file.\n\
confdir /etc/chrony/conf.d\n\
pool 2.debian.pool.ntp.org iburst\n\
sourcedir /run/chrony-dhcp\n\
sourcedir /etc/chrony/sources.d\n\
keyfile /etc/chrony/chrony.keys\n\
driftfile /var/lib/chrony/chrony.drift\n\
ntsdumpdir /var/lib/chrony\n\
logdir /var/log/chrony\n\
maxupdateskew 100.0\n\
rtcsync\n\
makestep 1 3\n\
leapsectz right/UTC\n";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A sandbox root with chrony's config files.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new(chrony_conf: &str) -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        for d in ["etc/chrony/conf.d", "etc/bs", "run/lock", "var/lib"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        std::fs::write(dir.path().join("etc/chrony/chrony.conf"), chrony_conf).unwrap();
        Sandbox { dir }
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p.trim_start_matches('/'))
    }

    pub fn read(&self, p: &str) -> Option<String> {
        std::fs::read_to_string(self.path(p)).ok()
    }

    pub fn write(&self, p: &str, text: &str) {
        let path = self.path(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// A Hyper-V PTP clock in a fake sysfs, plus the udev link unless `link` is false.
    pub fn hyperv_clock(&self, link: bool) {
        self.write("/sys/class/ptp/ptp0/clock_name", "hyperv\n");
        if link {
            std::fs::create_dir_all(self.path("/dev")).unwrap();
            std::os::unix::fs::symlink("ptp0", self.path("/dev/ptp_hyperv")).unwrap();
        }
    }

    /// Host-local overrides of the backend's config.
    pub fn local_toml(&self, text: &str) {
        self.write("/etc/bs/local.toml", text);
    }

    pub fn cmd(&self, backend: &str) -> assert_cmd::Command {
        let mut cmd = assert_cmd::Command::cargo_bin("bs-chrony").unwrap();
        cmd.env("BS_ROOT", self.dir.path())
            .env("BS_REPO", repo())
            .env("BS_BACKEND", backend)
            .timeout(Duration::from_secs(60));
        cmd
    }

    /// Run a verb; returns (exit code, records).
    pub fn run(&self, backend: &str, args: &[&str]) -> (i32, Vec<Value>) {
        let output = self.cmd(backend).args(args).output().unwrap();
        let records = parse(&output.stdout);
        (output.status.code().unwrap_or(-1), records)
    }
}

pub fn parse(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect()
}

pub fn of_type<'a>(records: &'a [Value], t: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["type"] == t).collect()
}

pub fn summary(records: &[Value]) -> &Value {
    let last = records.last().expect("no records");
    assert_eq!(last["type"], "summary");
    last
}

pub fn error_kinds(records: &[Value]) -> Vec<String> {
    of_type(records, "error")
        .iter()
        .map(|r| r["kind"].as_str().unwrap().to_string())
        .collect()
}

/// A real chronyd in the foreground, `-x` (the clock is never touched),
/// everything in its own temp dir; killed when dropped.
pub struct Chronyd {
    pub dir: tempfile::TempDir,
    child: Child,
    feeder: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

impl Chronyd {
    /// `extra` is added to the config (`local stratum 3`, a refclock, ...).
    pub fn start(extra: &str) -> Chronyd {
        Chronyd::start_with(|_| extra.to_string())
    }

    /// Like `start`, with the extra config made from chronyd's directory.
    pub fn start_with(extra: impl Fn(&str) -> String) -> Chronyd {
        // chronyd refuses a command socket in a directory others can reach.
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        let d = dir.path().display().to_string();
        let extra = extra(&d);
        let conf = format!(
            "bindcmdaddress {d}/chronyd.sock\ncmdport 0\nport 0\npidfile {d}/chronyd.pid\ndriftfile {d}/drift\n{extra}\n"
        );
        std::fs::write(dir.path().join("chrony.conf"), conf).unwrap();
        let child = Command::new("/usr/sbin/chronyd")
            .args(["-x", "-d", "-u", "root", "-f"])
            .arg(dir.path().join("chrony.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("chronyd.log")).unwrap())
            .spawn()
            .expect("chronyd must be installed (apt-get install chrony)");
        let c = Chronyd {
            dir,
            child,
            feeder: None,
        };
        c.wait_until(Duration::from_secs(10), |t, _| !t.is_empty());
        c
    }

    pub fn socket(&self) -> String {
        self.dir.path().join("chronyd.sock").display().to_string()
    }

    pub fn refclock_socket(&self) -> String {
        self.dir.path().join("refclock.sock").display().to_string()
    }

    /// Feed the SOCK refclock a sample every 250 ms, the system clock `offset`
    /// seconds off the reference (positive: behind).
    pub fn feed(&mut self, offset: f64) {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let path = self.refclock_socket();
        let handle = std::thread::spawn(move || {
            let sock = UnixDatagram::unbound().unwrap();
            while !flag.load(Ordering::Relaxed) {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
                // struct sock_sample: timeval, double offset, int pulse, leap, pad, magic.
                let mut buf = Vec::with_capacity(40);
                buf.extend_from_slice(&(now.as_secs() as i64).to_ne_bytes());
                buf.extend_from_slice(&(i64::from(now.subsec_micros())).to_ne_bytes());
                buf.extend_from_slice(&offset.to_ne_bytes());
                for v in [0i32, 0, 0, 0x534f_434b] {
                    buf.extend_from_slice(&v.to_ne_bytes());
                }
                let _ = sock.send_to(&buf, &path);
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        self.feeder = Some((stop, handle));
    }

    pub fn chronyc(&self, what: &str) -> String {
        let out = Command::new("chronyc")
            .args(["-h", &self.socket(), "-n", "-c", what])
            .output()
            .unwrap();
        if out.status.success() {
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            String::new()
        }
    }

    /// Wait until `ok(tracking, sources)` holds; panics with chronyd's log if not.
    pub fn wait_until(&self, limit: Duration, ok: impl Fn(&str, &str) -> bool) {
        let started = Instant::now();
        loop {
            let (t, s) = (self.chronyc("tracking"), self.chronyc("sources"));
            if ok(&t, &s) {
                return;
            }
            if started.elapsed() > limit {
                let log = std::fs::read_to_string(self.dir.path().join("chronyd.log"))
                    .unwrap_or_default();
                panic!("chronyd did not get there in {limit:?}: tracking {t:?} sources {s:?}\nlog:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Chronyd {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.feeder.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = handle.join();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
