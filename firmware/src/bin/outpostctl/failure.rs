//! Why a command failed, and the exit code each kind of failure ends the process with.
//!
//! Exit codes: 0 success, 1 the daemon refused the command, 2 usage or input error (nothing
//! was sent), 3 the daemon could not be reached or the connection broke.

use firmware::admin::proto::Reply;

/// Why the command failed, mapped to the exit code.
#[derive(Debug)]
pub enum Failure {
    /// The daemon replied with an error (or an unexpected reply): exit 1.
    Refused(String),
    /// Bad input detected before anything was sent: exit 2.
    Usage(String),
    /// The daemon could not be reached: exit 3.
    Unreachable(String),
    /// Already explained to the user; exit with this code.
    Shown(u8),
}

impl Failure {
    /// A reply the command did not expect (a daemon of another version, or a bug).
    pub fn unexpected(reply: &Reply) -> Failure {
        Failure::Refused(format!("unexpected reply from outpostd: {reply:?}"))
    }

    /// Prints the failure (unless already shown) and returns its exit code.
    pub fn report(self) -> u8 {
        let (code, message) = match self {
            Failure::Refused(m) => (1, m),
            Failure::Usage(m) => (2, m),
            Failure::Unreachable(m) => (3, m),
            Failure::Shown(code) => return code,
        };
        eprintln!("outpostctl: {message}");
        code
    }
}
