//! Where the daemon's log lines go besides stderr: the persistent log on `/data`
//! ([`file`]) and remote syslog collectors ([`remote`], RFC 5424 messages built by
//! [`rfc5424`]), fed by one tracing layer ([`layer`]). See docs/logs.md.
//!
//! The pipeline is installed once per process with the global tracing subscriber, so its
//! handle is process-wide too ([`installed`]): the admin side reads its counters from there.

pub mod api;
pub mod config;
pub mod file;
pub mod layer;
pub mod remote;
pub mod rfc5424;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use self::api::LogStatus;
use self::config::{Collector, Transport};
use self::file::FileLog;
use self::remote::Remote;

/// The persistent log's directory under the data directory.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("log")
}

/// Why the pipeline could not start.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log directory or file cannot be made.
    #[error("cannot open the persistent log in {dir}: {source}")]
    File {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A collector's TLS settings (its CA file) do not load.
    #[error("log.remote {address}: {source}")]
    Tls {
        address: String,
        #[source]
        source: crate::driver::tls::TlsError,
    },
    /// A thread could not be started.
    #[error("cannot start the log thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// The running persistent log and collectors.
#[derive(Debug)]
pub struct Pipeline {
    file: Option<Arc<FileLog>>,
    remotes: Vec<Arc<Remote>>,
}

static PIPELINE: OnceLock<Arc<Pipeline>> = OnceLock::new();

impl Pipeline {
    /// Opens the persistent log in `file_dir` (when given, with its size and file count)
    /// and starts a thread per collector. What cannot start is left out and returned as an
    /// error, to be logged once logging runs: the daemon never stops for its logs.
    pub fn start(
        file_dir: Option<PathBuf>,
        file_bytes: u64,
        files: u32,
        collectors: &[Collector],
    ) -> (Pipeline, Vec<LogError>) {
        let mut errors = Vec::new();
        let file = file_dir.and_then(|dir| match FileLog::start(dir.clone(), file_bytes, files) {
            Ok(f) => Some(f),
            Err(source) => {
                errors.push(LogError::File { dir, source });
                None
            }
        });
        let mut remotes = Vec::with_capacity(collectors.len());
        for c in collectors {
            let tls = match c.transport {
                Transport::Tls => match crate::driver::tls::client_config(c.ca.as_deref()) {
                    Ok(config) => Some(Arc::new(config)),
                    Err(source) => {
                        errors.push(LogError::Tls {
                            address: c.address.clone(),
                            source,
                        });
                        continue;
                    }
                },
                _ => None,
            };
            match Remote::start(c.clone(), tls) {
                Ok(r) => remotes.push(r),
                Err(e) => errors.push(LogError::Thread(e)),
            }
        }
        (Pipeline { file, remotes }, errors)
    }

    /// The tracing layer writing to this pipeline as `hostname`.
    pub fn layer(&self, hostname: String) -> layer::LogLayer {
        layer::LogLayer::new(hostname, self.file.clone(), self.remotes.clone())
    }

    /// Makes this the process's pipeline (for [`installed`]); once only.
    pub fn install(self) -> Arc<Pipeline> {
        let me = Arc::new(self);
        let _ = PIPELINE.set(Arc::clone(&me));
        me
    }

    /// The counters now.
    pub fn status(&self) -> LogStatus {
        LogStatus {
            file: self.file.as_ref().map(|f| f.path().display().to_string()),
            file_dropped: self.file.as_ref().map_or(0, |f| f.dropped()),
            collectors: self.remotes.iter().map(|r| r.status()).collect(),
        }
    }

    /// Writes out the persistent log's queue and sends the reachable collectors' (at most
    /// `timeout` in all): at a clean stop.
    pub fn drain(&self, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        if let Some(f) = &self.file {
            f.drain(timeout);
        }
        for r in &self.remotes {
            r.drain(deadline);
        }
    }
}

/// The process's pipeline, once logging is set up.
pub fn installed() -> Option<&'static Arc<Pipeline>> {
    PIPELINE.get()
}
