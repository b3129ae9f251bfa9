//! JSON Lines on stdout: one object a line, every one with `"tool"` and
//! `"type"`, the last one always the summary (see `docs/json.md`).
//!
//! A consumer that goes away (`bs-users apply | head -1`) must not stop a
//! run half-way: a broken pipe only stops the records, the work goes on,
//! and the summary is then written to stderr so it is not lost.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::CoreError;
use crate::exit::Exit;
use crate::plan::Mode;

/// Version of the record format; bumped on incompatible changes.
pub const SCHEMA: u32 = 1;

/// The most of an error record's `message` or `target` written whole, in
/// bytes. Errors echo their input (a list line, a path, a server's answer),
/// and a 50 MB line must not become a 50 MB record that a terminal, a log
/// or `jq` chokes on (issue 12, item 10): the prefix is enough to find it.
pub const ERROR_TEXT_MAX: usize = 400;

/// `text` when it fits in `max` bytes, else its first `max` bytes (cut at
/// a character boundary) followed by `… (N bytes)`, N the whole length.
pub fn cut(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}… ({} bytes)", &text[..end], text.len()))
}

pub struct Output {
    tool: &'static str,
    sink: Box<dyn Write + Send>,
    broken: bool,
    mode: Option<Mode>,
    changed: u64,
    unchanged: u64,
    failed: u64,
    exit: Exit,
}

impl Output {
    pub fn stdout(tool: &'static str) -> Output {
        Output::to_writer(tool, Box::new(io::stdout()))
    }

    pub fn to_writer(tool: &'static str, sink: Box<dyn Write + Send>) -> Output {
        Output {
            tool,
            sink,
            broken: false,
            mode: None,
            changed: 0,
            unchanged: 0,
            failed: 0,
            exit: Exit::Ok,
        }
    }

    /// An output whose records a test can read back.
    pub fn capture(tool: &'static str) -> (Output, Captured) {
        let buf = Captured::default();
        (Output::to_writer(tool, Box::new(buf.clone())), buf)
    }

    pub fn tool(&self) -> &'static str {
        self.tool
    }

    /// The verb of this run: `check` turns changes into drift (exit 3), and
    /// every item record says which verb produced it.
    pub fn set_mode(&mut self, mode: Mode) {
        self.mode = Some(mode);
    }

    pub fn mode(&self) -> Option<Mode> {
        self.mode
    }

    /// Write one record of `record_type`; `body` must serialise to an object.
    pub fn emit<T: Serialize + ?Sized>(&mut self, record_type: &str, body: &T) {
        let mut obj = Map::new();
        obj.insert("tool".into(), Value::from(self.tool));
        obj.insert("type".into(), Value::from(record_type));
        match serde_json::to_value(body) {
            Ok(Value::Object(fields)) => {
                for (k, v) in fields {
                    if k != "tool" && k != "type" {
                        obj.insert(k, v);
                    }
                }
            }
            Ok(Value::Null) => {}
            Ok(other) => {
                obj.insert("value".into(), other);
            }
            Err(e) => {
                obj.insert("serialize_error".into(), Value::from(e.to_string()));
            }
        }
        self.write_line(&Value::Object(obj));
    }

    /// A record about one managed item: counted as changed or unchanged, and
    /// given `"changed"` (and `"mode"` when the verb is known).
    pub fn item<T: Serialize + ?Sized>(&mut self, record_type: &str, changed: bool, body: &T) {
        if changed {
            self.changed += 1;
        } else {
            self.unchanged += 1;
        }
        let mut value = match serde_json::to_value(body) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        value.insert("changed".into(), Value::from(changed));
        if let Some(mode) = self.mode {
            value.insert("mode".into(), Value::from(mode.as_str()));
        }
        self.emit(record_type, &value);
    }

    /// An error record; the run will exit 1 unless something worse happens.
    /// `target` and `message` are cut to [`ERROR_TEXT_MAX`] bytes.
    pub fn error(&mut self, kind: &str, target: &str, message: &str) {
        self.failed += 1;
        self.exit = self.exit.worst(Exit::Failed);
        #[derive(Serialize)]
        struct ErrorRecord<'a> {
            kind: &'a str,
            target: &'a str,
            message: &'a str,
        }
        self.emit(
            "error",
            &ErrorRecord {
                kind,
                target: &cut(target, ERROR_TEXT_MAX),
                message: &cut(message, ERROR_TEXT_MAX),
            },
        );
    }

    /// An error record for a [`CoreError`], with its exit code.
    pub fn core_error(&mut self, err: &CoreError) {
        self.error(err.kind(), &err.target(), &err.to_string());
        self.exit = self.exit.worst(err.exit());
    }

    /// Raise the exit code (e.g. to 2 for a usage error reported as a record).
    pub fn raise(&mut self, exit: Exit) {
        self.exit = self.exit.worst(exit);
    }

    pub fn counts(&self) -> (u64, u64, u64) {
        (self.changed, self.unchanged, self.failed)
    }

    /// Write the summary line and return the exit code. `extra` adds
    /// tool-specific counters to the summary.
    pub fn finish(mut self, extra: Map<String, Value>) -> Exit {
        let mut exit = self.exit;
        if self.failed > 0 {
            exit = exit.worst(Exit::Failed);
        }
        if self.mode == Some(Mode::Check) && self.changed > 0 {
            exit = exit.worst(Exit::Drift);
        }
        let mut obj = Map::new();
        obj.insert("tool".into(), Value::from(self.tool));
        obj.insert("type".into(), Value::from("summary"));
        if let Some(mode) = self.mode {
            obj.insert("mode".into(), Value::from(mode.as_str()));
        }
        obj.insert("changed".into(), Value::from(self.changed));
        obj.insert("unchanged".into(), Value::from(self.unchanged));
        obj.insert("failed".into(), Value::from(self.failed));
        obj.insert(
            "ok".into(),
            Value::from(matches!(exit, Exit::Ok | Exit::Drift) && self.failed == 0),
        );
        obj.insert("exit".into(), Value::from(exit.code()));
        obj.insert("schema".into(), Value::from(SCHEMA));
        for (k, v) in extra {
            obj.entry(k).or_insert(v);
        }
        let line = Value::Object(obj);
        self.write_line(&line);
        if self.broken {
            // stdout is gone: keep the outcome where a person can see it.
            let _ = writeln!(io::stderr(), "{line}");
        }
        exit
    }

    fn write_line(&mut self, value: &Value) {
        if self.broken {
            return;
        }
        let mut text = value.to_string();
        text.push('\n');
        let result = self
            .sink
            .write_all(text.as_bytes())
            .and_then(|()| self.sink.flush());
        if let Err(e) = result {
            self.broken = true;
            if e.kind() != io::ErrorKind::BrokenPipe {
                let _ = writeln!(io::stderr(), "{}: cannot write records: {e}", self.tool);
            }
        }
    }
}

/// Records written to an in-memory buffer, for tests.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    pub fn text(&self) -> String {
        match self.0.lock() {
            Ok(buf) => String::from_utf8_lossy(&buf).into_owned(),
            Err(_) => String::new(),
        }
    }

    /// Every record, parsed. A line that is not a JSON object is a bug in
    /// the writer, so it comes back as a string value to fail assertions.
    pub fn records(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|_| Value::from(l)))
            .collect()
    }
}

impl Write for Captured {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self.0.lock() {
            Ok(mut buf) => {
                buf.extend_from_slice(data);
                Ok(data.len())
            }
            Err(_) => Err(io::Error::other("poisoned")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_record_has_tool_and_type_and_the_last_is_the_summary() {
        let (mut out, cap) = Output::capture("bs-test");
        out.set_mode(Mode::Apply);
        out.item(
            "user",
            true,
            &json!({"action": "create", "target": "alice"}),
        );
        out.item("user", false, &json!({"action": "none", "target": "bob"}));
        let exit = out.finish(Map::new());
        assert_eq!(exit, Exit::Ok);
        let recs = cap.records();
        assert_eq!(recs.len(), 3);
        for r in &recs {
            assert_eq!(r["tool"], "bs-test");
            assert!(r["type"].is_string());
        }
        assert_eq!(recs[0]["changed"], true);
        assert_eq!(recs[0]["mode"], "apply");
        let s = &recs[2];
        assert_eq!(s["type"], "summary");
        assert_eq!(
            (
                s["changed"].as_u64(),
                s["unchanged"].as_u64(),
                s["failed"].as_u64()
            ),
            (Some(1), Some(1), Some(0))
        );
        assert_eq!(s["ok"], true);
        assert_eq!(s["schema"], 1);
    }

    #[test]
    fn an_error_record_makes_the_run_exit_1_and_the_summary_not_ok() {
        let (mut out, cap) = Output::capture("bs-test");
        out.error("fetch_failed", "alice", "HTTP 500");
        assert_eq!(out.finish(Map::new()), Exit::Failed);
        let recs = cap.records();
        assert_eq!(recs[0]["type"], "error");
        assert_eq!(recs[0]["kind"], "fetch_failed");
        assert_eq!(recs[1]["ok"], false);
        assert_eq!(recs[1]["failed"], 1);
    }

    #[test]
    fn a_huge_message_and_target_are_cut_to_a_readable_prefix_with_their_size() {
        let (mut out, cap) = Output::capture("bs-test");
        // 50 MB of input echoed back, with a multi-byte character at the cut.
        let mut line = "x".repeat(ERROR_TEXT_MAX - 1);
        line.push('é');
        line.push_str(&"y".repeat(50 * 1024 * 1024));
        let message = format!("developers:1: not a login: {line}");
        out.error("bad_list", &line, &message);
        out.error("fetch_failed", "alice", "HTTP 500");
        assert_eq!(out.finish(Map::new()), Exit::Failed);
        let recs = cap.records();
        let target = recs[0]["target"].as_str().unwrap();
        let msg = recs[0]["message"].as_str().unwrap();
        assert!(target.len() < ERROR_TEXT_MAX + 32, "{}", target.len());
        assert!(msg.len() < ERROR_TEXT_MAX + 32, "{}", msg.len());
        // the prefix stops before the character that would straddle the cut
        assert_eq!(
            target,
            format!("{}… ({} bytes)", "x".repeat(ERROR_TEXT_MAX - 1), line.len())
        );
        assert!(msg.starts_with("developers:1: not a login: xxx"), "{msg}");
        assert!(
            msg.ends_with(&format!("… ({} bytes)", message.len())),
            "{msg}"
        );
        // short ones are untouched
        assert_eq!(recs[1]["target"], "alice");
        assert_eq!(recs[1]["message"], "HTTP 500");
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcd", 3), "abc… (4 bytes)");
    }

    #[test]
    fn check_with_changes_exits_3() {
        let (mut out, _cap) = Output::capture("bs-test");
        out.set_mode(Mode::Check);
        out.item("tree", true, &json!({"target": "/srv"}));
        assert_eq!(out.finish(Map::new()), Exit::Drift);
    }

    #[test]
    fn config_errors_exit_2() {
        let (mut out, _cap) = Output::capture("bs-test");
        out.core_error(&CoreError::Usage("bad flag".into()));
        assert_eq!(out.finish(Map::new()), Exit::Usage);
    }

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_broken_pipe_does_not_change_the_outcome() {
        let mut out = Output::to_writer("bs-test", Box::new(Broken));
        out.item("user", true, &json!({"target": "a"}));
        out.item("user", true, &json!({"target": "b"}));
        assert_eq!(out.counts(), (2, 0, 0));
        assert_eq!(out.finish(Map::new()), Exit::Ok);
    }
}
