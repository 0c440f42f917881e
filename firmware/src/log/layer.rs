//! The tracing layer that feeds the persistent log and the remote collectors.
//!
//! Every event the global filter (`[log] level`) lets through becomes one line of the
//! persistent log and, for each collector whose `level` it meets, one RFC 5424 message.
//! An event with a field `sd` (e.g. `tracing::warn!(sd = "ban", src = %ip, secs, ...)`)
//! is a structured event: its other fields become the SD-PARAMs of an SD-ELEMENT named by
//! `sd`, which is also the MSGID; other events carry no structured data and the last part
//! of their module path as MSGID. The layer only formats and queues: the sending and
//! writing happen on the collectors' and the file's threads.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use super::file::FileLog;
use super::remote::Remote;
use super::rfc5424::{format, Header, SdElement, Severity, MAX_PARAMS};

/// The destinations of the box's log lines besides stderr.
#[derive(Debug, Clone)]
pub struct LogLayer {
    hostname: String,
    procid: u32,
    file: Option<Arc<FileLog>>,
    remotes: Vec<Arc<Remote>>,
}

impl LogLayer {
    /// A layer writing to `file` and sending to `remotes` as `hostname`.
    pub fn new(hostname: String, file: Option<Arc<FileLog>>, remotes: Vec<Arc<Remote>>) -> Self {
        LogLayer {
            hostname,
            procid: std::process::id(),
            file,
            remotes,
        }
    }
}

/// The fields of one event.
#[derive(Default)]
struct Fields {
    message: String,
    sd: Option<String>,
    params: Vec<(String, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record(field, format!("{value:?}"));
    }
}

impl Fields {
    fn record(&mut self, field: &Field, value: String) {
        match field.name() {
            "message" => self.message = value,
            "sd" => self.sd = Some(value),
            name if self.params.len() < MAX_PARAMS => self.params.push((name.to_owned(), value)),
            _ => {}
        }
    }

    /// The text: the message, then `name=value` for each field.
    fn text(&self) -> String {
        let mut out = self.message.clone();
        for (name, value) in &self.params {
            let _ = write!(out, " {name}={value}");
        }
        out
    }
}

impl<S: Subscriber> Layer<S> for LogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let level = meta.level();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let text = fields.text();
        if let Some(file) = &self.file {
            file.push(super::file::line(now, level, meta.target(), &text));
        }
        if self.remotes.iter().all(|r| !r.wants(level)) {
            return;
        }
        let sd: Vec<SdElement> = fields
            .sd
            .iter()
            .map(|id| SdElement {
                id: id.clone(),
                params: fields.params.clone(),
            })
            .collect();
        let msgid = match &fields.sd {
            Some(id) => id.as_str(),
            None => meta.target().rsplit("::").next().unwrap_or("-"),
        };
        for remote in self.remotes.iter().filter(|r| r.wants(level)) {
            let header = Header {
                facility: remote.facility(),
                severity: Severity::of(level),
                timestamp_ms: now,
                hostname: &self.hostname,
                app_name: "outpostd",
                procid: self.procid,
                msgid,
            };
            // A structured event's fields are in its SD-ELEMENT; the text need not repeat them.
            let msg = if sd.is_empty() {
                &text
            } else {
                &fields.message
            };
            remote.push(format(&header, &sd, msg));
        }
    }
}
