//! The `log` admin command and its answer (re-exported by `crate::admin::proto`).

use serde::{Deserialize, Serialize};

use super::remote::CollectorStatus;

/// Most lines one `log` reply carries.
pub const MAX_PAGE_LINES: usize = 10_000;
/// Most bytes of lines one `log` reply carries (well under the admin line limit).
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;

/// Where a reader of the persistent log stopped: the file (its inode, which survives
/// rotation's renames, and a hash of its first bytes, because a deleted file's inode number
/// is soon given to a new file) and the byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCursor {
    /// The file's inode number.
    pub file: u64,
    /// Bytes of it already read.
    pub offset: u64,
    /// FNV-1a hash of the file's first `min(offset, 64)` bytes.
    #[serde(default)]
    pub head: u64,
}

/// A request for lines of the persistent log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogQuery {
    /// Only lines logged at or after this time (ms since the epoch).
    pub since: Option<u64>,
    /// Only lines at least this severe: `error`, `warn`, `info`, `debug` or `trace`.
    pub level: Option<String>,
    /// The newest this many matching lines at most; at most [`MAX_PAGE_LINES`]. 0: with
    /// `since`, every line since then, oldest first, a page at a time (continue with the
    /// cursor while `more`); without, the newest 100.
    pub lines: usize,
    /// Continue after this position instead (`--follow`): every matching line written
    /// since, oldest first, as far as one page holds.
    pub after: Option<LogCursor>,
}

/// Lines of the persistent log, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPage {
    /// The lines, without their newline.
    pub lines: Vec<String>,
    /// Where to continue for newer lines.
    pub cursor: Option<LogCursor>,
    /// Lines were lost between the cursor and this page (rotated away before they were
    /// read).
    #[serde(default)]
    pub missed: bool,
    /// More lines are waiting: ask again at once with the cursor.
    #[serde(default)]
    pub more: bool,
}

/// The state of the persistent log and the collectors, in `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogStatus {
    /// The persistent log's file, when it is on.
    pub file: Option<String>,
    /// Lines the persistent log dropped (its queue was full or the disk refused them).
    #[serde(default)]
    pub file_dropped: u64,
    /// The remote collectors.
    #[serde(default)]
    pub collectors: Vec<CollectorStatus>,
}
