//! The admin side of the console password: runs an [`AdminCommand`] and turns the typed
//! outcome into the wire [`Reply`]. A login that names its source (the web page's) meets
//! the firewall here: a banned source is refused unchecked, a refused one is reported.

use std::net::IpAddr;
use std::sync::Arc;

use pbx_core::Millis;
use tokio::sync::{mpsc, oneshot};

use crate::admin::proto::Reply;
use crate::console::api::{AdminCommand, ConsoleOutcome, LoginOutcome, LoginService};
use crate::console::ConsoleError;
use crate::guard::Guard;
use crate::store::Store;

/// A refused login of a network source, for the firewall (`Guard::login_failure`).
pub type LoginFailure = (IpAddr, LoginService);

/// Runs `cmd` against the password hash in `store` (blocking: one Argon2id run). A
/// `login` with a `source` the firewall bans now (`banned`) is refused without a check: a
/// ban must not leave the password open to guessing from a path the kernel does not drop.
/// Returns the reply and, for a refused login that named its source, the failure to report.
pub fn run(
    store: &Store,
    banned: bool,
    cmd: AdminCommand,
) -> Result<(Reply, Option<LoginFailure>), ConsoleError> {
    let AdminCommand::Login {
        source: Some(src),
        service,
        ..
    } = &cmd
    else {
        return crate::console::execute(store, cmd).map(|o| (to_reply(o), None));
    };
    let (src, service) = (*src, service.unwrap_or(LoginService::Web));
    if banned {
        tracing::warn!("admin login ({service}) from {src} refused: the source is banned");
        return Ok((Reply::Login(LoginOutcome::Refused), None));
    }
    let outcome = crate::console::execute(store, cmd)?;
    let failure =
        (outcome == ConsoleOutcome::Login(LoginOutcome::Refused)).then_some((src, service));
    Ok((to_reply(outcome), failure))
}

/// [`run`] with the firewall at hand (on the caller's thread).
pub fn execute(
    store: &Store,
    guard: &mut Guard,
    now: Millis,
    cmd: AdminCommand,
) -> Result<Reply, ConsoleError> {
    let banned = match &cmd {
        AdminCommand::Login {
            source: Some(src), ..
        } => guard.is_banned(now, *src),
        _ => false,
    };
    let (reply, failure) = run(store, banned, cmd)?;
    if let Some((src, service)) = failure {
        guard.login_failure(now, src, service);
    }
    Ok(reply)
}

/// [`run`] on a blocking thread, off the daemon's loop (an Argon2id run takes tens to
/// hundreds of milliseconds, during which SIP would wait): the reply goes to `reply`, a
/// refused network login to `failures` (the loop hands it to the firewall).
pub fn spawn(
    store: Arc<Store>,
    banned: bool,
    cmd: AdminCommand,
    failures: mpsc::Sender<LoginFailure>,
    reply: oneshot::Sender<Reply>,
) {
    tokio::task::spawn_blocking(move || {
        let answer = match run(&store, banned, cmd) {
            Ok((answer, failure)) => {
                if let Some(f) = failure {
                    // Sent before the reply, so the next attempt meets the count.
                    let _ = failures.blocking_send(f);
                }
                answer
            }
            Err(e) => Reply::error(e.to_string()),
        };
        let _ = reply.send(answer);
    });
}

/// The wire reply for a console-password outcome.
pub fn to_reply(outcome: ConsoleOutcome) -> Reply {
    match outcome {
        ConsoleOutcome::Info(info) => Reply::Admin(info),
        ConsoleOutcome::Login(login) => Reply::Login(login),
        ConsoleOutcome::Done(message) => Reply::done(message),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use crate::guard::config::{EnforceMode, FirewallConfig};

    use super::*;

    const T0: Millis = 1_700_000_000_000;
    const PASSWORD: &str = "branch-office-42";

    fn setup(allow: &[&str]) -> (tempfile::TempDir, Store, Guard) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut fw = FirewallConfig {
            enforce: EnforceMode::Off,
            ..FirewallConfig::default()
        };
        fw.detect.allow = allow.iter().map(|n| n.parse().unwrap()).collect();
        let site = crate::config::Config::default().firewall_surroundings();
        let guard = Guard::start(&fw, &site, &store, T0);
        crate::console::execute(
            &store,
            AdminCommand::Passwd {
                password: PASSWORD.into(),
            },
        )
        .unwrap();
        (dir, store, guard)
    }

    fn web_login(store: &Store, guard: &mut Guard, now: Millis, pw: &str, src: &str) -> Reply {
        let cmd = AdminCommand::Login {
            password: pw.into(),
            source: Some(src.parse().unwrap()),
            service: Some(LoginService::Web),
        };
        execute(store, guard, now, cmd).unwrap()
    }

    #[test]
    fn ten_refused_web_logins_ban_the_source_and_a_ban_refuses_the_right_password() {
        let (_dir, store, mut guard) = setup(&[]);
        let src: IpAddr = "192.0.2.7".parse().unwrap();
        let refused = Reply::Login(LoginOutcome::Refused);
        for i in 0..9 {
            assert_eq!(
                web_login(&store, &mut guard, T0 + i, "wrong", "192.0.2.7"),
                refused
            );
        }
        // The right password does not count and does not forgive.
        assert_eq!(
            web_login(&store, &mut guard, T0 + 9, PASSWORD, "192.0.2.7"),
            Reply::Login(LoginOutcome::Accepted)
        );
        assert!(!guard.is_banned(T0 + 10, src));
        assert_eq!(
            web_login(&store, &mut guard, T0 + 10, "wrong", "192.0.2.7"),
            refused
        );
        assert!(guard.is_banned(T0 + 11, src));
        // Banned: even the right password is refused.
        assert_eq!(
            web_login(&store, &mut guard, T0 + 12, PASSWORD, "192.0.2.7"),
            refused
        );
        // Another source is unaffected.
        assert_eq!(
            web_login(&store, &mut guard, T0 + 13, PASSWORD, "192.0.2.8"),
            Reply::Login(LoginOutcome::Accepted)
        );
    }

    #[test]
    fn allowed_and_local_logins_feed_nothing() {
        let (_dir, store, mut guard) = setup(&["10.0.0.0/8"]);
        for i in 0..11 {
            web_login(&store, &mut guard, T0 + i, "wrong", "10.1.2.3");
            let local = AdminCommand::Login {
                password: "wrong".into(),
                source: None,
                service: None,
            };
            assert_eq!(
                execute(&store, &mut guard, T0 + i, local).unwrap(),
                Reply::Login(LoginOutcome::Refused)
            );
        }
        assert!(!guard.is_banned(T0 + 30, "10.1.2.3".parse().unwrap()));
        assert_eq!(
            web_login(&store, &mut guard, T0 + 31, PASSWORD, "10.1.2.3"),
            Reply::Login(LoginOutcome::Accepted)
        );
    }
}
