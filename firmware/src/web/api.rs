//! The web page's only way into the daemon: admin commands down the admin socket's queue.

use tokio::sync::mpsc;

use crate::admin::proto::{Command, Reply};
use crate::admin::server::{dispatch, AdminRequest};

/// A client of the control-plane API inside outpostd.
#[derive(Debug, Clone)]
pub struct Api {
    tx: mpsc::Sender<AdminRequest>,
}

impl Api {
    /// Sends commands to the loop behind `tx` (the one the admin socket feeds).
    pub fn new(tx: mpsc::Sender<AdminRequest>) -> Api {
        Api { tx }
    }

    /// Executes `cmd` and returns its reply.
    pub async fn call(&self, cmd: Command) -> Reply {
        dispatch(cmd, &self.tx).await
    }

    /// Executes a change: `Ok(message)` for `done`, `Err(message)` for an error or an
    /// unexpected reply.
    pub async fn change(&self, cmd: Command) -> Result<String, String> {
        match self.call(cmd).await {
            Reply::Done { message } => Ok(message),
            other => Err(unexpected(other)),
        }
    }
}

/// The message of an error reply, or a description of a reply the page did not expect.
pub fn unexpected(reply: Reply) -> String {
    match reply {
        Reply::Error { message } => message,
        other => format!(
            "unexpected answer from the daemon: {}",
            serde_json::to_value(&other)
                .ok()
                .and_then(|v| v.get("reply").and_then(|r| r.as_str()).map(str::to_owned))
                .unwrap_or_default()
        ),
    }
}
