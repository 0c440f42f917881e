//! The control plane's executor: [`Control`] borrows exactly the parts of the daemon a
//! command reads or changes (the call core, the store, the firewall, the transports, the
//! relay) and turns one [`Command`] into one [`Reply`]. The daemon keeps only the commands
//! that re-plumb it (`config`), that read its own counters (`metrics`) and that run off its
//! loop (`backup`).

use base64::Engine as _;
use firewall::detect::Rule;
use pbx_core::endpoint::{pin_hash, Endpoint, Forwarding, MailboxMessage, MAX_FOLLOW_ME};
use pbx_core::lockout::TrustedSource;
use pbx_core::sip::auth::{DigestChoice, StoredSecret};
use pbx_core::Millis;

use crate::admin::proto::{
    validate_ext, validate_name, validate_password, CallInfo, CallMediaInfo, Command,
    ExtensionDetail, ExtensionInfo, RegistrationInfo, Reply, StatusInfo, VoicemailAudio,
    MAX_VM_AUDIO, PROTOCOL_VERSION,
};
use crate::chunk::MAX_CHUNK;
use crate::config::Config;
use crate::driver::Transports;
use crate::guard::Guard;
use crate::media::relay::{FastPathState, Relay};
use crate::pbx_config;
use crate::store::{ExtensionRecord, Store};

/// Most call records one `cdr list` or `cdr export` page returns.
const MAX_CDR_LIST: usize = 10_000;

/// The parts of the daemon an admin command works on, borrowed for one command.
pub struct Control<'a> {
    /// The daemon's clock now.
    pub now: Millis,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// The transports' listen addresses (`udp:ADDR`, ...).
    pub listen: &'a [String],
    /// The running configuration.
    pub cfg: &'a Config,
    /// The digest realm the box runs with (`daemon::boot::box_realm`).
    pub realm: &'a str,
    /// The store.
    pub store: &'a Store,
    /// The call core.
    pub endpoint: &'a mut Endpoint,
    /// The RTP relay, when media is anchored.
    pub relay: Option<&'a Relay>,
    /// The SIP firewall.
    pub guard: &'a mut Guard,
    /// The transports (for their connection counts).
    pub transports: &'a Transports,
    /// The clock's synchronisation.
    pub time: crate::timesync::TimeStatus,
}

impl Control<'_> {
    /// The call recordings on the box.
    fn recordings(&self) -> crate::recordings::Recordings {
        crate::recordings::Recordings::new(
            self.cfg.store.data_dir.join("recordings"),
            self.cfg.recording.max_stored as usize,
        )
    }
}

impl std::fmt::Debug for Control<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl Control<'_> {
    /// Carries out `cmd`; an error becomes the reply's message.
    pub fn execute(&mut self, cmd: Command) -> anyhow::Result<Reply> {
        let now = self.now;
        Ok(match cmd {
            Command::Status => Reply::Status(StatusInfo {
                version: env!("CARGO_PKG_VERSION").to_string(),
                uptime_secs: self.uptime_secs,
                listen: self.listen.to_vec(),
                extensions: self.endpoint.user_count(),
                registrations: self
                    .endpoint
                    .registrar()
                    .all()
                    .iter()
                    .filter(|b| b.expires_at > now)
                    .count(),
                active_calls: self.endpoint.calls().len(),
                cdrs: self.store.cdr_count()?,
                data_dir: self.cfg.store.data_dir.display().to_string(),
                realm: self.realm.to_owned(),
                trunks: self.endpoint.trunk_status().len(),
                trunks_up: self
                    .endpoint
                    .trunk_status()
                    .iter()
                    .filter(|t| t.health == pbx_core::trunk::Health::Up)
                    .count(),
                survival: self.endpoint.survival(),
                last_backup_age_secs: crate::backup::last_backup_age_secs(
                    &self.cfg.backup,
                    &self.cfg.store.data_dir,
                    now,
                ),
                store_schema: self.store.schema_version(),
                hostname: crate::system::hostname(&self.cfg.system),
                last_restore: crate::backup::last_restore(&self.cfg.store.data_dir),
                protocol_version: PROTOCOL_VERSION,
                log: crate::log::installed().map(|p| p.status()),
                time: Some(Box::new(self.time.clone())),
                media_fast_path: self.relay.and_then(|r| match r.fast_path() {
                    FastPathState::Off => None,
                    FastPathState::On { directions } => {
                        Some(format!("on: {directions} call directions in the kernel"))
                    }
                    FastPathState::Unavailable(why) => Some(format!("unavailable: {why}")),
                }),
            }),
            Command::ExtList => {
                let exts = self.store.ext_list()?;
                Reply::Extensions(
                    exts.into_iter()
                        .map(|r| ExtensionInfo {
                            registered: self.endpoint.registrar().lookup(&r.ext, now).len(),
                            dnd: self.endpoint.dnd(&r.ext),
                            ext: r.ext,
                            name: r.name,
                        })
                        .collect(),
                )
            }
            Command::ExtShow { ext } => Reply::Extension(self.extension_detail(&ext, now)?),
            Command::ExtAdd {
                ext,
                name,
                password,
            } => {
                check(validate_ext(&ext))?;
                check(validate_password(&ext, &password))?;
                if let Some(n) = &name {
                    check(validate_name(n))?;
                }
                if self.endpoint.has_user(&ext) {
                    anyhow::bail!(
                        "extension {ext} already exists (use `ext passwd` to change its password)"
                    );
                }
                put_extension(
                    self.store,
                    self.endpoint,
                    self.realm,
                    now,
                    &ext,
                    name,
                    &password,
                )?;
                Reply::done(format!("extension {ext} created"))
            }
            Command::ExtDel { ext } => {
                if !self.store.ext_del(&ext)? {
                    anyhow::bail!("extension {ext} does not exist");
                }
                let _ = self.endpoint.remove_user(&ext);
                self.endpoint.set_forwarding(&ext, Forwarding::default());
                self.store.meta_put(&format!("fwd:{ext}"), b"{}")?;
                self.store.meta_put(&dnd_key(&ext), b"")?;
                self.endpoint.set_dnd(now, &ext, false);
                self.store.meta_put(&format!("cid:{ext}"), b"")?;
                self.store.meta_put(&format!("digest:{ext}"), b"default")?;
                self.endpoint.set_caller_id(&ext, None);
                Reply::done(format!("extension {ext} deleted"))
            }
            Command::ExtDigest { ext, digest } => {
                if !self.endpoint.has_user(&ext) {
                    anyhow::bail!("extension {ext} does not exist");
                }
                let choice: DigestChoice =
                    digest.parse().map_err(|e: String| anyhow::anyhow!(e))?;
                self.store
                    .meta_put(&format!("digest:{ext}"), choice.as_str().as_bytes())?;
                self.endpoint.set_user_digest(&ext, choice);
                Reply::done(describe_digest(&ext, choice))
            }
            Command::ExtForward { ext, forwarding } => {
                if !self.endpoint.has_user(&ext) {
                    anyhow::bail!("extension {ext} does not exist");
                }
                check(check_forwarding(&ext, &forwarding))?;
                let json = serde_json::to_vec(&forwarding)?;
                self.store.meta_put(&format!("fwd:{ext}"), &json)?;
                let text = describe_forwarding(&forwarding);
                self.endpoint.set_forwarding(&ext, forwarding);
                Reply::done(format!("extension {ext}: {text}"))
            }
            // Busy lamps, do-not-disturb (issue 20): kept together.
            Command::ExtDnd { ext, on } => {
                if !self.endpoint.has_user(&ext) {
                    anyhow::bail!("extension {ext} does not exist");
                }
                self.store
                    .meta_put(&dnd_key(&ext), if on { b"on" } else { b"" })?;
                self.endpoint.set_dnd(now, &ext, on);
                Reply::done(format!(
                    "extension {ext}: do-not-disturb {}",
                    if on { "on" } else { "off" }
                ))
            }
            Command::Trunks => Reply::Trunks(self.endpoint.trunk_status()),
            Command::ExtCallerId { ext, number } => {
                if !self.endpoint.has_user(&ext) {
                    anyhow::bail!("extension {ext} does not exist");
                }
                if let Some(n) = &number {
                    if !pbx_config::is_dial_string(n) {
                        anyhow::bail!("{n:?} is not a number");
                    }
                }
                let stored = number.clone().unwrap_or_default();
                self.store
                    .meta_put(&format!("cid:{ext}"), stored.as_bytes())?;
                let text = match &number {
                    Some(n) => format!("extension {ext} calls out as {n}"),
                    None => {
                        format!("extension {ext} calls out with the route's or trunk's caller-ID")
                    }
                };
                self.endpoint.set_caller_id(&ext, number);
                Reply::done(text)
            }
            Command::ExtName { ext, name } => {
                let name = name.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
                if let Some(n) = &name {
                    check(validate_name(n))?;
                }
                let Some(mut rec) = self.store.ext_get(&ext)? else {
                    anyhow::bail!("extension {ext} does not exist");
                };
                rec.name = name;
                self.store.ext_put(&rec)?;
                Reply::done(match &rec.name {
                    Some(n) => format!("extension {ext} is now called {n:?}"),
                    None => format!("extension {ext} has no name now"),
                })
            }
            Command::ExtPasswd { ext, password } => {
                check(validate_password(&ext, &password))?;
                let Some(rec) = self.store.ext_get(&ext)? else {
                    anyhow::bail!("extension {ext} does not exist");
                };
                put_extension(
                    self.store,
                    self.endpoint,
                    self.realm,
                    now,
                    &ext,
                    rec.name,
                    &password,
                )?;
                // A provisioned phone of the extension gets the new password at its next
                // fetch (the box keeps the one it serves).
                let mut phones = 0;
                for mut phone in self.store.phone_list()? {
                    if phone.ext == ext {
                        phone.sip_password.clone_from(&password);
                        self.store.phone_put(&phone)?;
                        phones += 1;
                    }
                }
                Reply::done(match phones {
                    0 => format!("password of extension {ext} changed"),
                    n => format!(
                        "password of extension {ext} changed; its {n} provisioned phone(s) get it at their next fetch"
                    ),
                })
            }
            Command::ExtImport { rows } => {
                for (i, row) in rows.iter().enumerate() {
                    let line = i + 1;
                    validate_ext(&row.ext).map_err(|e| anyhow::anyhow!("row {line}: {e}"))?;
                    validate_password(&row.ext, &row.password)
                        .map_err(|e| anyhow::anyhow!("row {line}: {e}"))?;
                    if let Some(n) = &row.name {
                        validate_name(n).map_err(|e| anyhow::anyhow!("row {line}: {e}"))?;
                    }
                }
                let realm = self.realm.to_owned();
                let recs: Vec<ExtensionRecord> = rows
                    .iter()
                    .map(|row| ExtensionRecord {
                        ext: row.ext.clone(),
                        name: row.name.clone(),
                        secret: StoredSecret::new(&row.ext, &realm, &row.password),
                        realm: realm.clone(),
                        created_ms: now,
                    })
                    .collect();
                tokio::task::block_in_place(|| self.store.ext_put_many(&recs))?;
                for rec in recs {
                    self.endpoint.set_user(&rec.ext, rec.secret);
                }
                Reply::done(format!("{} extensions imported", rows.len()))
            }
            Command::RegList => Reply::Registrations(
                self.endpoint
                    .registrar()
                    .all()
                    .into_iter()
                    .filter(|b| b.expires_at > now)
                    .map(|b| RegistrationInfo::of(b, now))
                    .collect(),
            ),
            Command::Calls => Reply::Calls(
                self.endpoint
                    .calls()
                    .into_iter()
                    .map(|c| CallInfo {
                        media: c.media_session.and_then(|session| {
                            let (a, b) = self.relay?.stats(session)?;
                            let (ca, cb) = c.codecs?;
                            Some(CallMediaInfo {
                                codec_a: ca.name().to_string(),
                                codec_b: cb.name().to_string(),
                                a,
                                b,
                            })
                        }),
                        duration_secs: now.saturating_sub(c.answer.unwrap_or(c.start)) / 1000,
                        state: match (c.parked, c.answered, c.on_hold) {
                            (Some(orbit), ..) => format!("parked on {orbit}"),
                            _ if c.conference.is_some() => format!(
                                "in conference ({} parties)",
                                c.conference.unwrap_or_default()
                            ),
                            (None, true, true) => "on hold".to_string(),
                            (None, true, false) => "answered".to_string(),
                            (None, false, _) => "ringing".to_string(),
                        },
                        call_id: c.call_id,
                        caller: c.caller,
                        callee: c.callee,
                        started_ms: c.start,
                        answered_ms: c.answer,
                    })
                    .collect(),
            ),
            Command::VmList { mailbox } => {
                Reply::Voicemail(self.store.vm_list(mailbox.as_deref())?)
            }
            Command::RecList { ext } => {
                let recs = self.recordings();
                Reply::Recordings(tokio::task::block_in_place(|| recs.list(ext.as_deref())))
            }
            Command::RecDel { id } => {
                let recs = self.recordings();
                match tokio::task::block_in_place(|| recs.delete(id))? {
                    Some(r) => Reply::done(format!(
                        "deleted recording {id} ({} to {})",
                        r.caller, r.callee
                    )),
                    None => anyhow::bail!("no recording {id}"),
                }
            }
            Command::RecAudio { id, offset, len } => {
                let recs = self.recordings();
                let Some((recording, path)) = recs.get(id) else {
                    anyhow::bail!("no recording {id}");
                };
                let piece = tokio::task::block_in_place(|| {
                    crate::chunk::read_file(&path, &format!("recording {id}"), offset, len)
                })?;
                Reply::RecAudio { recording, piece }
            }
            Command::VmPin { ext, pin } => {
                if !self.endpoint.has_user(&ext) {
                    anyhow::bail!("extension {ext} does not exist");
                }
                if !(4..=12).contains(&pin.len()) || !pin.chars().all(|c| c.is_ascii_digit()) {
                    anyhow::bail!("a voicemail PIN is 4 to 12 digits");
                }
                let hash = pin_hash(&ext, &pin);
                self.store
                    .meta_put(&format!("vm_pin:{ext}"), hash.as_bytes())?;
                self.endpoint.set_pin(&ext, Some(hash));
                Reply::done(format!("voicemail PIN of extension {ext} set"))
            }
            Command::VmDel { id } => {
                let Some(msg) = self.store.vm_delete(id)? else {
                    anyhow::bail!("no voicemail message {id}");
                };
                let _ = std::fs::remove_file(&msg.path);
                refresh_mailbox(self.store, self.endpoint, now, &msg.mailbox);
                Reply::done(format!("message {id} of mailbox {} deleted", msg.mailbox))
            }
            Command::VmAudio { id, offset, len } => {
                let Some(msg) = self.store.vm_get(id)? else {
                    anyhow::bail!("no voicemail message {id}");
                };
                tokio::task::block_in_place(|| voicemail_audio(msg, offset, len))?
            }
            Command::Fw(fw) => {
                let mut reply = super::firewall::reply(tokio::task::block_in_place(|| {
                    self.guard.admin(now, fw, self.store)
                }));
                if let Reply::FwStatus(st) = &mut reply {
                    st.connections = Some(Box::new(self.transports.conn_stats()));
                }
                self.describe_locks(now, reply)
            }
            Command::Backup(_)
            | Command::Config(_)
            | Command::Metrics
            | Command::Log(_)
            | Command::System
            | Command::Update(_)
            | Command::Phone(_)
            | Command::SbomRead { .. } => {
                anyhow::bail!("{} is handled by the daemon itself", cmd.name())
            }
            Command::CdrExport {
                from,
                to,
                after,
                limit,
            } => {
                let (cdrs, next) = tokio::task::block_in_place(|| {
                    self.store.cdr_page(
                        from.unwrap_or(0),
                        to.unwrap_or(u64::MAX),
                        after,
                        limit.clamp(1, MAX_CDR_LIST),
                    )
                })?;
                Reply::CdrPage { cdrs, next }
            }
            Command::CdrList { limit } => {
                Reply::Cdrs(self.store.cdr_list(limit.min(MAX_CDR_LIST), 0)?)
            }
            Command::Ssh(ssh) => tokio::task::block_in_place(|| {
                crate::admin::ssh::execute(self.cfg, self.store, now, ssh)
            })?,
            Command::Admin(admin) => tokio::task::block_in_place(|| {
                crate::admin::console::execute(self.store, self.guard, now, admin)
            })?,
        })
    }

    fn extension_detail(&self, ext: &str, now: Millis) -> anyhow::Result<ExtensionDetail> {
        let Some(rec) = self.store.ext_get(ext)? else {
            anyhow::bail!("extension {ext} does not exist");
        };
        let caller_id = self
            .store
            .meta_get(&format!("cid:{ext}"))?
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .filter(|n| !n.is_empty());
        let vm_pin_set = self
            .store
            .meta_get(&format!("vm_pin:{ext}"))?
            .is_some_and(|h| !h.is_empty());
        let digest = self
            .store
            .meta_get(&format!("digest:{ext}"))?
            .and_then(|v| String::from_utf8_lossy(&v).parse::<DigestChoice>().ok())
            .unwrap_or_default();
        Ok(ExtensionDetail {
            digest: digest.as_str().to_string(),
            dnd: self.endpoint.dnd(ext),
            forwarding: self.endpoint.forwarding(ext).cloned().unwrap_or_default(),
            caller_id,
            vm_pin_set,
            registrations: self
                .endpoint
                .registrar()
                .lookup(ext, now)
                .into_iter()
                .map(|b| RegistrationInfo::of(b, now))
                .collect(),
            ext: rec.ext,
            name: rec.name,
        })
    }

    /// Fills in, for `fw bans`, which sources each account lock does not apply to.
    fn describe_locks(&self, now: Millis, reply: Reply) -> Reply {
        let Reply::FwBans(mut info) = reply else {
            return reply;
        };
        for lock in &mut info.locks {
            if lock.rule == Rule::TollFraud.as_str() {
                continue;
            }
            let except = self.endpoint.trusted_sources(now, &lock.user);
            lock.blocks = describe_blocked(&except);
            lock.except = except.iter().map(ToString::to_string).collect();
        }
        Reply::FwBans(info)
    }
}

/// The answer to `vm_audio`: the message's WAV file whole (up to [`MAX_VM_AUDIO`]) or the
/// piece `len` at `offset`.
fn voicemail_audio(
    msg: crate::store::VoicemailRecord,
    offset: u64,
    len: Option<u64>,
) -> anyhow::Result<Reply> {
    let name = format!("message {}", msg.id);
    let (size, offset, data) = match len {
        Some(len) => {
            let piece = crate::chunk::read_file(&msg.path, &name, offset, len)?;
            (piece.size, piece.offset, piece.data)
        }
        None => {
            if offset != 0 {
                anyhow::bail!("offset needs len (a piece of at most {MAX_CHUNK} bytes)");
            }
            let bytes = crate::chunk::read_whole(&msg.path, &name, MAX_VM_AUDIO).map_err(|e| {
                anyhow::anyhow!(
                    "{e}; a message above {MAX_VM_AUDIO} bytes is read in pieces (len, at most {MAX_CHUNK})"
                )
            })?;
            let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
            (
                size,
                0,
                base64::engine::general_purpose::STANDARD.encode(bytes),
            )
        }
    };
    Ok(Reply::VmAudio(VoicemailAudio {
        id: msg.id,
        mailbox: msg.mailbox,
        caller: msg.caller,
        at: msg.at,
        duration_ms: msg.duration_ms,
        content_type: "audio/wav".to_owned(),
        size,
        offset,
        data,
    }))
}

/// Tells the call core a mailbox's counts (it notifies subscribed phones).
pub fn refresh_mailbox(store: &Store, endpoint: &mut Endpoint, now: Millis, mailbox: &str) {
    match store.vm_list(Some(mailbox)) {
        Ok(list) => {
            let msgs = list
                .into_iter()
                .map(|m| MailboxMessage {
                    id: m.id,
                    path: m.path,
                    new: m.new,
                })
                .collect();
            endpoint.set_mailbox(now, mailbox, msgs);
        }
        Err(err) => tracing::error!(%err, "cannot read the voicemail index"),
    }
}

/// Stores an extension with the digest of `password` and tells the call core.
pub fn put_extension(
    store: &Store,
    endpoint: &mut Endpoint,
    realm: &str,
    now: Millis,
    ext: &str,
    name: Option<String>,
    password: &str,
) -> anyhow::Result<()> {
    let realm = realm.to_owned();
    let rec = ExtensionRecord {
        ext: ext.to_string(),
        name,
        secret: StoredSecret::new(ext, &realm, password),
        realm,
        created_ms: now,
    };
    store.ext_put(&rec)?;
    endpoint.set_user(ext, rec.secret);
    Ok(())
}

fn check(r: Result<(), String>) -> anyhow::Result<()> {
    r.map_err(|e| anyhow::anyhow!(e))
}

/// What an account lock blocks, for `fw bans`: "all sources except 10.0.0.5, 10.0.0.6".
fn describe_blocked(except: &[TrustedSource]) -> String {
    if except.is_empty() {
        return "all sources".to_string();
    }
    let list: Vec<String> = except.iter().map(ToString::to_string).collect();
    format!("all sources except {}", list.join(", "))
}

/// The answer to `ext digest`.
fn describe_digest(ext: &str, choice: DigestChoice) -> String {
    match choice {
        DigestChoice::Default => {
            format!("extension {ext} uses the global digest algorithms ([auth] algorithms)")
        }
        choice => format!(
            "extension {ext}: its phones are challenged with {} once they have authenticated from their address (the first challenge from a new address offers the global algorithms, so that it tells a stranger nothing about which extensions exist)",
            choice
                .algorithms()
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .join(" then ")
        ),
    }
}

/// The store's meta key of an extension's do-not-disturb flag (`on`, or empty: off).
pub fn dnd_key(ext: &str) -> String {
    format!("dnd:{ext}")
}

/// What `ext` may forward to: numbers (an extension, a group, an outside number), never
/// itself; a follow-me list of at most [`MAX_FOLLOW_ME`] numbers with a first one and none
/// twice; a no-answer time of at most 600 s.
fn check_forwarding(ext: &str, f: &Forwarding) -> Result<(), String> {
    let no_answer = f.no_answer_list();
    if no_answer.len() > MAX_FOLLOW_ME {
        return Err(format!(
            "forward no-answer: {} numbers, at most {MAX_FOLLOW_ME} are tried",
            no_answer.len()
        ));
    }
    if f.no_answer.is_none() && !f.no_answer_then.is_empty() {
        return Err("forward no-answer: the list has no first number".to_string());
    }
    let others = [("always", &f.always), ("busy", &f.busy)];
    let targets = others
        .iter()
        .filter_map(|(what, t)| Some((*what, t.as_deref()?)))
        .chain(no_answer.iter().map(|t| ("no-answer", *t)));
    for (what, t) in targets {
        if !pbx_config::is_dial_string(t) && validate_ext(t).is_err() {
            return Err(format!("forward {what}: {t:?} is not a number"));
        }
        if t == ext {
            return Err(format!(
                "forward {what}: an extension cannot forward to itself"
            ));
        }
    }
    let twice = no_answer
        .iter()
        .enumerate()
        .find(|(i, t)| no_answer[..*i].contains(t));
    if let Some((i, t)) = twice {
        return Err(format!(
            "forward no-answer: {t} is in the list twice (number {})",
            i + 1
        ));
    }
    if f.no_answer_ms > 600_000 {
        return Err("no-answer time must be at most 600 s".to_string());
    }
    Ok(())
}

/// Call forwarding in words, for the admin.
fn describe_forwarding(f: &Forwarding) -> String {
    let mut parts = Vec::new();
    if let Some(t) = &f.always {
        parts.push(format!("always to {t}"));
    }
    if let Some(t) = &f.busy {
        parts.push(format!("when busy to {t}"));
    }
    if f.no_answer.is_some() {
        // A follow-me list: each number rings the same time, one after the other.
        let t = f.no_answer_list().join(", then ");
        let secs = f.no_answer_ms / 1000;
        if secs > 0 {
            parts.push(format!("after {secs} s without answer to {t}"));
        } else {
            parts.push(format!("without answer to {t}"));
        }
    }
    if parts.is_empty() {
        "call forwarding off".to_string()
    } else {
        format!("calls forwarded {}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follow_me(list: &str) -> Forwarding {
        let mut f = Forwarding {
            no_answer_ms: 20_000,
            ..Forwarding::default()
        };
        f.set_no_answer_list(Some(list));
        f
    }

    #[test]
    fn a_follow_me_list_is_checked_and_described_in_order() {
        let ok = follow_me("0301234567, 01701234567,102");
        assert_eq!(ok.no_answer.as_deref(), Some("0301234567"));
        assert_eq!(ok.no_answer_then, vec!["01701234567", "102"]);
        assert_eq!(check_forwarding("101", &ok), Ok(()));
        assert_eq!(
            describe_forwarding(&ok),
            "calls forwarded after 20 s without answer to 0301234567, then 01701234567, then 102"
        );
        for (list, why) in [
            ("1,2,3,4,5", "5 numbers, at most 4"),
            ("0301,,0302", "\"\" is not a number"),
            ("0301,0302,0301", "0301 is in the list twice (number 3)"),
            ("0301,101", "cannot forward to itself"),
            ("0301,x;y", "\"x;y\" is not a number"),
        ] {
            let err = check_forwarding("101", &follow_me(list)).expect_err(list);
            assert!(err.contains(why), "{list}: {err}");
        }
        let headless = Forwarding {
            no_answer_then: vec!["0301".into()],
            ..Forwarding::default()
        };
        assert!(check_forwarding("101", &headless).is_err());
        // A record stored before lists reads as a list of one.
        let old: Forwarding = serde_json::from_str(
            r#"{"always":null,"busy":null,"no_answer":"0301","no_answer_ms":0}"#,
        )
        .expect("an old record reads");
        assert_eq!(old.no_answer_list(), vec!["0301"]);
        assert!(!serde_json::to_string(&old)
            .expect("serialises")
            .contains("no_answer_then"));
    }
}
