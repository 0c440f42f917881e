//! Logged-in sessions: random identifiers in a `__Host-` cookie, a CSRF token per session,
//! idle and absolute timeouts, and a one-shot message for the next page. Pure: the time is
//! an argument (milliseconds on any monotonic scale).
//!
//! Memory: at most [`MAX_SESSIONS`] sessions of about 300 bytes each; a login beyond that
//! ends the least recently used session.

use std::collections::HashMap;
use std::net::IpAddr;

use rand::RngCore;

/// Most sessions at once (an office has a handful of admins).
pub const MAX_SESSIONS: usize = 32;

/// Random bytes in a session identifier or CSRF token (hex-encoded: twice as many chars).
const TOKEN_BYTES: usize = 32;

/// What the next page shows once, after a form was handled (post/redirect/get).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flash {
    /// It worked; what was done.
    Done(String),
    /// It did not; why.
    Error(String),
}

/// One login.
#[derive(Debug, Clone)]
pub struct Session {
    /// The token every state-changing form must carry.
    pub csrf: String,
    /// Where the login came from (shown nowhere; logged on logout).
    pub source: IpAddr,
    created: u64,
    last: u64,
    flash: Option<Flash>,
}

/// The live sessions.
#[derive(Debug)]
pub struct Sessions {
    map: HashMap<String, Session>,
    idle_ms: u64,
    max_ms: u64,
}

/// A fresh random token, hex.
pub fn token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Compares two tokens in time that does not depend on where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    /// No sessions; each ends after `idle_ms` without use or `max_ms` after it began.
    pub fn new(idle_ms: u64, max_ms: u64) -> Sessions {
        Sessions {
            map: HashMap::new(),
            idle_ms,
            max_ms,
        }
    }

    /// Changes the timeouts (live configuration); they apply to existing sessions too.
    pub fn set_timeouts(&mut self, idle_ms: u64, max_ms: u64) {
        self.idle_ms = idle_ms;
        self.max_ms = max_ms;
    }

    /// Starts a session for a login from `source`; returns its identifier.
    pub fn create(&mut self, now: u64, source: IpAddr) -> String {
        self.expire(now);
        if self.map.len() >= MAX_SESSIONS {
            if let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, s)| s.last)
                .map(|(id, _)| id.clone())
            {
                self.map.remove(&oldest);
            }
        }
        let id = token();
        self.map.insert(
            id.clone(),
            Session {
                csrf: token(),
                source,
                created: now,
                last: now,
                flash: None,
            },
        );
        id
    }

    /// The live session `id`, marked used at `now`; `None` if unknown or timed out (then
    /// it is gone).
    pub fn touch(&mut self, id: &str, now: u64) -> Option<&mut Session> {
        let live = match self.map.get(id) {
            Some(s) => self.alive(s, now),
            None => return None,
        };
        if !live {
            self.map.remove(id);
            return None;
        }
        let s = self.map.get_mut(id)?;
        s.last = now;
        Some(s)
    }

    /// Ends session `id` (logout).
    pub fn remove(&mut self, id: &str) -> Option<Session> {
        self.map.remove(id)
    }

    /// Sessions alive now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no session is alive.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn alive(&self, s: &Session, now: u64) -> bool {
        now.saturating_sub(s.last) < self.idle_ms && now.saturating_sub(s.created) < self.max_ms
    }

    fn expire(&mut self, now: u64) {
        let (idle, max) = (self.idle_ms, self.max_ms);
        self.map.retain(|_, s| {
            now.saturating_sub(s.last) < idle && now.saturating_sub(s.created) < max
        });
    }
}

impl Session {
    /// Leaves a message for the next page.
    pub fn set_flash(&mut self, flash: Flash) {
        self.flash = Some(flash);
    }

    /// Takes the message left for this page.
    pub fn take_flash(&mut self) -> Option<Flash> {
        self.flash.take()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 5));

    #[test]
    fn idle_and_absolute_timeouts_end_a_session() {
        let mut s = Sessions::new(1_000, 5_000);
        let id = s.create(0, IP);
        assert!(s.touch(&id, 900).is_some());
        assert!(s.touch(&id, 1_800).is_some(), "used 900 ms ago");
        assert!(s.touch(&id, 2_800).is_none(), "idle for 1 s");
        assert!(s.is_empty());
        let id = s.create(10_000, IP);
        for t in (10_500..15_000).step_by(500) {
            assert!(s.touch(&id, t).is_some());
        }
        assert!(
            s.touch(&id, 15_000).is_none(),
            "5 s after login, used or not"
        );
    }

    #[test]
    fn tokens_are_random_and_compared_whole() {
        let mut s = Sessions::new(60_000, 600_000);
        let a = s.create(0, IP);
        let b = s.create(0, IP);
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        let csrf = s.touch(&a, 1).unwrap().csrf.clone();
        assert_ne!(csrf, a);
        assert!(same_token(&csrf, &csrf.clone()));
        assert!(!same_token(&csrf, &csrf[..63]));
        assert!(!same_token(&csrf, &b));
        assert!(s.touch("nope", 1).is_none());
        assert!(s.remove(&a).is_some());
        assert!(s.touch(&a, 2).is_none());
    }

    #[test]
    fn the_table_is_capped_and_drops_the_least_recently_used() {
        let mut s = Sessions::new(60_000, 600_000);
        let first = s.create(0, IP);
        let ids: Vec<String> = (1..MAX_SESSIONS as u64).map(|t| s.create(t, IP)).collect();
        assert!(s.touch(&first, 100).is_some());
        let newest = s.create(200, IP);
        assert_eq!(s.len(), MAX_SESSIONS);
        assert!(s.touch(&first, 201).is_some(), "recently used: kept");
        assert!(
            s.touch(&ids[0], 201).is_none(),
            "least recently used: ended"
        );
        assert!(s.touch(&newest, 201).is_some());
    }

    #[test]
    fn a_flash_is_shown_once() {
        let mut s = Sessions::new(60_000, 600_000);
        let id = s.create(0, IP);
        s.touch(&id, 1)
            .unwrap()
            .set_flash(Flash::Done("saved".into()));
        assert_eq!(
            s.touch(&id, 2).unwrap().take_flash(),
            Some(Flash::Done("saved".into()))
        );
        assert_eq!(s.touch(&id, 3).unwrap().take_flash(), None);
    }
}
