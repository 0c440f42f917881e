//! The admin plane: a typed command/reply protocol over a Unix socket, the daemon-side
//! listener, and a small blocking client for `outpostctl` and tests.

pub mod backup;
pub mod config;
pub mod console;
pub mod control;
pub mod export;
pub mod firewall;
pub mod log;
pub mod phone;
pub mod proto;
pub mod server;
pub mod ssh;
pub mod update;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use proto::{Command, Reply, MAX_LINE};

/// Why a request to the daemon failed below the protocol level.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Reading from or writing to the socket failed (including a timeout).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The daemon closed the connection before replying.
    #[error("the daemon closed the connection without replying")]
    Closed,
    /// The reply line exceeded [`MAX_LINE`].
    #[error("the daemon's reply is longer than {MAX_LINE} bytes")]
    TooLong,
    /// The reply was not a valid [`Reply`].
    #[error("the daemon's reply is not understood: {0}")]
    BadReply(serde_json::Error),
}

/// A blocking connection to the daemon's admin socket.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the socket at `path`; each later read or write waits at most `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> std::io::Result<Client> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let writer = stream.try_clone()?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends one command and waits for its reply.
    pub fn request(&mut self, command: &Command) -> Result<Reply, ClientError> {
        let mut line = serde_json::to_vec(command).map_err(std::io::Error::from)?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        self.writer.flush()?;

        let mut buf = Vec::new();
        let limit = u64::try_from(MAX_LINE + 1).expect("MAX_LINE fits in u64");
        (&mut self.reader).take(limit).read_until(b'\n', &mut buf)?;
        if buf.last() == Some(&b'\n') {
            buf.pop();
        } else if buf.len() > MAX_LINE {
            return Err(ClientError::TooLong);
        } else {
            return Err(ClientError::Closed);
        }
        serde_json::from_slice(&buf).map_err(ClientError::BadReply)
    }
}
