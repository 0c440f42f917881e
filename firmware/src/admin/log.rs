//! The admin side of the persistent log: `log` requests are answered from the files on a
//! blocking thread, never on the daemon's loop (a `--since` may read every file).

use tokio::sync::oneshot;

use crate::admin::proto::{LogQuery, Reply};
use crate::config::Config;

/// Answers `query` off the daemon's loop; `reply` gets the wire reply.
pub fn execute(cfg: &Config, query: LogQuery, reply: oneshot::Sender<Reply>) {
    if !cfg.log.persist {
        let _ = reply.send(Reply::error(
            "the persistent log is off ([log] persist = false)",
        ));
        return;
    }
    let dir = crate::log::dir(&cfg.store.data_dir);
    tokio::task::spawn_blocking(move || {
        let answer = match crate::log::file::read(&dir, &query) {
            Ok(page) => Reply::Log(page),
            Err(message) => Reply::error(message),
        };
        let _ = reply.send(answer);
    });
}
