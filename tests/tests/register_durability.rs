//! What a crash can lose of the registrar (docs/registrar.md, "What a power cut can
//! lose"): a 200 OK for a new binding is sent only once the binding is on disk; a refresh
//! that changes nothing but the expiry is answered at once and its expiry written within
//! about a second, so a crash loses at most the extension of the last second's refreshes.
//!
//! A raw-socket phone bank registers new extensions while it refreshes others, the daemon
//! is killed with SIGKILL in the middle of it, restarted, and the bindings are counted.

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use outpost_tests::{json_str, Daemon};
use pbx_core::sip::auth::answer_challenge;

/// Extensions registered, refreshed, then refreshed under load (group A).
const REFRESHED: usize = 100;
/// Extensions registered for the first time under load (group B).
const NEW: usize = 300;
/// The daemon is killed once this many of group B have their 200.
const KILL_AFTER: usize = 120;
/// Outstanding registrations at a time while under load.
const WINDOW: usize = 48;
/// Expiry of a first registration; refreshes ask for `REFRESH_EXPIRES`.
const FIRST_EXPIRES: u64 = 600;
const REFRESH_EXPIRES: u64 = 3600;

fn password(ext: &str) -> String {
    format!("pw-{ext}-durable")
}

/// One phone: its extension, Call-ID and the CSeq of its next REGISTER.
#[derive(Debug)]
struct Phone {
    ext: String,
    call_id: String,
    cseq: u32,
    expires: u64,
    /// Sent and not answered with a final response yet (when, for retransmission).
    sent: Option<(Instant, Vec<u8>)>,
}

/// A bank of phones on one UDP socket, each a distinct contact.
struct Bank {
    sock: UdpSocket,
    server: SocketAddr,
    local: SocketAddr,
    phones: Vec<Phone>,
    by_call_id: HashMap<String, usize>,
    branch: u64,
}

/// What a received response finished.
enum Done {
    /// A 200 to the phone at this index.
    Ok(usize),
    /// A challenge was answered, or the message was not for us.
    Nothing,
}

impl Bank {
    fn new(server: SocketAddr, exts: &[String]) -> Bank {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind the phone bank");
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("read timeout");
        let local = sock.local_addr().expect("local address");
        let phones: Vec<Phone> = exts
            .iter()
            .map(|ext| Phone {
                ext: ext.clone(),
                call_id: format!("durable-{ext}@127.0.0.1"),
                cseq: 1,
                expires: FIRST_EXPIRES,
                sent: None,
            })
            .collect();
        let by_call_id = phones
            .iter()
            .enumerate()
            .map(|(i, p)| (p.call_id.clone(), i))
            .collect();
        Bank {
            sock,
            server,
            local,
            phones,
            by_call_id,
            branch: 0,
        }
    }

    /// Sends phone `i` a REGISTER (with `authorization`, if any) asking for `expires`.
    fn register(&mut self, i: usize, expires: u64, authorization: Option<&str>) {
        self.branch += 1;
        let (server, local) = (self.server, self.local);
        let p = &mut self.phones[i];
        p.expires = expires;
        let auth = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let msg = format!(
            "REGISTER sip:{server} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bKdur{}x{};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{ext}@{server}>;tag=t{ext}\r\n\
             To: <sip:{ext}@{server}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {cseq} REGISTER\r\n\
             Contact: <sip:{ext}@{local}>\r\n\
             Expires: {expires}\r\n\
             {auth}Content-Length: 0\r\n\r\n",
            self.branch,
            p.cseq,
            ext = p.ext,
            call_id = p.call_id,
            cseq = p.cseq,
        );
        p.cseq += 1;
        self.sock
            .send_to(msg.as_bytes(), server)
            .expect("send a REGISTER");
        p.sent = Some((Instant::now(), msg.into_bytes()));
    }

    /// Reads one response (waits up to 20 ms); answers a challenge at once.
    fn receive(&mut self) -> Done {
        let mut buf = [0u8; 4096];
        let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
            return Done::Nothing;
        };
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        let status: u16 = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let header = |name: &str| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_string())
            })
        };
        let Some(&i) = header("Call-ID").and_then(|c| self.by_call_id.get(&c)) else {
            return Done::Nothing;
        };
        // Only the answer to the REGISTER last sent counts (not a late retransmission).
        let cseq: u32 = header("CSeq")
            .and_then(|c| c.split(' ').next().and_then(|n| n.parse().ok()))
            .unwrap_or(0);
        if cseq + 1 != self.phones[i].cseq || self.phones[i].sent.is_none() {
            return Done::Nothing;
        }
        match status {
            401 => {
                let challenge = header("WWW-Authenticate").expect("a 401 carries a challenge");
                let ext = self.phones[i].ext.clone();
                let auth = answer_challenge(
                    &challenge,
                    "REGISTER",
                    &format!("sip:{}", self.server),
                    &ext,
                    &password(&ext),
                    "0a4f113b",
                    1,
                )
                .expect("answer the challenge");
                let expires = self.phones[i].expires;
                self.register(i, expires, Some(&auth));
                Done::Nothing
            }
            200 => {
                self.phones[i].sent = None;
                Done::Ok(i)
            }
            other => panic!("unexpected {other} for {}:\n{text}", self.phones[i].ext),
        }
    }

    /// Sends again what has waited 500 ms for an answer (UDP on a loaded machine).
    fn retransmit(&mut self) {
        for p in &mut self.phones {
            if let Some((at, msg)) = &mut p.sent {
                if at.elapsed() > Duration::from_millis(500) {
                    let _ = self.sock.send_to(msg, self.server);
                    *at = Instant::now();
                }
            }
        }
    }

    /// Registers every phone in `range` (window `WINDOW`) and waits for every 200.
    fn register_all(&mut self, range: std::ops::Range<usize>, expires: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut next = range.start;
        let mut open = 0;
        let mut done = 0;
        while done < range.len() {
            assert!(Instant::now() < deadline, "registrations did not finish");
            while open < WINDOW && next < range.end {
                self.register(next, expires, None);
                next += 1;
                open += 1;
            }
            if let Done::Ok(_) = self.receive() {
                open -= 1;
                done += 1;
            }
            self.retransmit();
        }
    }
}

#[test]
fn a_crash_loses_no_new_binding_and_only_the_last_second_of_refreshes() {
    let mut daemon = Daemon::start();
    let exts: Vec<String> = (0..REFRESHED + NEW)
        .map(|i| (7000 + i).to_string())
        .collect();
    let csv = daemon.dir().join("durable.csv");
    let rows: String = exts
        .iter()
        .map(|e| format!("{e},{}\n", password(e)))
        .collect();
    std::fs::write(&csv, rows).expect("write the import file");
    daemon.ctl_ok(&["ext", "import", csv.to_str().expect("utf-8 path")]);

    let mut bank = Bank::new(daemon.sip_addr(), &exts);
    // Group A: registered, then refreshed with a longer expiry, which must be on disk
    // within a second.
    bank.register_all(0..REFRESHED, FIRST_EXPIRES);
    bank.register_all(0..REFRESHED, REFRESH_EXPIRES);
    std::thread::sleep(Duration::from_millis(2500));

    // Under load: group B registers for the first time while group A keeps refreshing.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next_new = REFRESHED;
    let mut next_refresh = 0;
    let mut open: HashSet<usize> = HashSet::new();
    let mut acked_new: HashSet<String> = HashSet::new();
    let mut refreshes_acked = 0usize;
    while acked_new.len() < KILL_AFTER {
        assert!(
            Instant::now() < deadline,
            "only {} new registrations answered in 60 s",
            acked_new.len()
        );
        while open.len() < WINDOW {
            // Two new registrations for each refresh.
            let i = if next_new < exts.len() && (next_new + next_refresh) % 3 != 2 {
                next_new += 1;
                next_new - 1
            } else {
                next_refresh = (next_refresh + 1) % REFRESHED;
                if open.contains(&next_refresh) {
                    break;
                }
                next_refresh
            };
            let expires = if i < REFRESHED {
                REFRESH_EXPIRES
            } else {
                FIRST_EXPIRES
            };
            bank.register(i, expires, None);
            open.insert(i);
        }
        if let Done::Ok(i) = bank.receive() {
            open.remove(&i);
            if i >= REFRESHED {
                acked_new.insert(exts[i].clone());
            } else {
                refreshes_acked += 1;
            }
        }
        bank.retransmit();
    }
    daemon.kill9();
    // Answers already on their way were sent before the kill: they count too.
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        if let Done::Ok(i) = bank.receive() {
            if i >= REFRESHED {
                acked_new.insert(exts[i].clone());
            }
        }
    }
    let unanswered_new = open.iter().filter(|&&i| i >= REFRESHED).count();
    eprintln!(
        "killed with {} new registrations answered, {unanswered_new} in flight, \
         {refreshes_acked} refreshes answered under load",
        acked_new.len()
    );

    daemon.restart();
    let regs = daemon.registrations();
    let stored: HashMap<&str, u64> = regs
        .iter()
        .filter_map(|r| Some((json_str(r, "ext")?, r["expires_in_secs"].as_u64()?)))
        .collect();

    // Every new binding whose 200 was sent is there.
    let mut lost: Vec<&String> = acked_new
        .iter()
        .filter(|e| !stored.contains_key(e.as_str()))
        .collect();
    lost.sort();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged new bindings lost: {lost:?}",
        lost.len(),
        acked_new.len()
    );
    // Every refreshed binding is there, with at least the expiry of the refresh answered
    // seconds before the crash (a lost refresh would leave the first 600 s).
    for ext in &exts[..REFRESHED] {
        let left = stored
            .get(ext.as_str())
            .unwrap_or_else(|| panic!("refreshed binding {ext} lost"));
        assert!(
            *left > REFRESH_EXPIRES - 120,
            "{ext}: {left} s left: the refresh answered 2.5 s before the crash was not written"
        );
    }
}
