//! The link to outpostd: one connection to its admin socket over which each request sends
//! one [`Command`] and reads its [`Reply`]; a broken or refused connection is a
//! [`Failure::Unreachable`] that names the socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use firmware::admin::proto::{Command, Reply};
use firmware::admin::{Client, ClientError};

use crate::failure::Failure;

/// How long to wait for the daemon to answer one request (an import of thousands of
/// extensions takes a while on slow flash).
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// A connection to outpostd's admin socket.
#[derive(Debug)]
pub struct Link {
    client: Client,
    socket: PathBuf,
}

impl Link {
    /// Connects to the admin socket at `socket`.
    pub fn connect(socket: &Path) -> Result<Link, Failure> {
        let client = Client::connect(socket, REPLY_TIMEOUT).map_err(|e| {
            Failure::Unreachable(format!(
                "cannot connect to outpostd at {}: {e} (is outpostd running? \
                 use --socket PATH or set OUTPOST_SOCKET)",
                socket.display()
            ))
        })?;
        Ok(Link {
            client,
            socket: socket.to_path_buf(),
        })
    }

    /// Sends `command` and reads the reply (which may be the daemon's `Reply::Error`).
    pub fn request(&mut self, command: &Command) -> Result<Reply, Failure> {
        self.client.request(command).map_err(|e| {
            Failure::Unreachable(format!(
                "talking to outpostd at {}: {e}",
                self.socket.display()
            ))
        })
    }

    /// [`Link::request`] with the transport error as it is, for callers that word it
    /// themselves (the console's restore dialogue).
    pub fn send(&mut self, command: &Command) -> Result<Reply, ClientError> {
        self.client.request(command)
    }
}
