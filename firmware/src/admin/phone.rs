//! The phone commands: `phone add|list|del`, and `phone fetch`, which the provisioning
//! listeners send for every request a desk phone makes. A fetch checks the phone's
//! provisioning password (HTTP Basic, user name = its MAC); a wrong one counts as a failed
//! login of its source for the firewall (`auth_failures`, service `provision`), and a
//! source the firewall bans now is refused unchecked.

use std::net::IpAddr;

use pbx_core::endpoint::Endpoint;
use pbx_core::provision::{self, Mac, Profile, Transport, Vendor, Wanted};
use pbx_core::Millis;
use rand::distributions::{Alphanumeric, DistString};

use crate::admin::proto::{validate_ext, Reply};
use crate::config::Config;
use crate::guard::Guard;
use crate::provision::{PhoneAdded, PhoneCommand, PhoneInfo, ProvisionAnswer};
use crate::store::{PhoneRecord, Store};

/// Length of the generated SIP and provisioning passwords (alphanumeric: ~143 bits).
const PASSWORD_LEN: usize = 24;

/// A phone's record is rewritten with its fetch time at most this often.
const FETCH_MARK_MS: u64 = 60_000;

/// What a phone command works on.
pub struct PhoneCtx<'a> {
    /// The daemon's clock now.
    pub now: Millis,
    /// The running configuration.
    pub cfg: &'a Config,
    /// The digest realm.
    pub realm: &'a str,
    /// The store.
    pub store: &'a Store,
    /// The call core (the extension's new password).
    pub endpoint: &'a mut Endpoint,
    /// The firewall (bans, failed fetches).
    pub guard: &'a mut Guard,
}

impl std::fmt::Debug for PhoneCtx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhoneCtx")
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

/// Carries out `cmd`; an error becomes the reply's message.
pub fn execute(ctx: PhoneCtx<'_>, cmd: PhoneCommand) -> anyhow::Result<Reply> {
    match cmd {
        PhoneCommand::Add {
            mac,
            model,
            ext,
            keys,
        } => add(ctx, &mac, &model, &ext, keys),
        PhoneCommand::List => Ok(Reply::Phones(
            ctx.store.phone_list()?.iter().map(info).collect(),
        )),
        PhoneCommand::Del { mac } => {
            let mac: Mac = mac.parse()?;
            if !ctx.store.phone_del(&mac.to_string())? {
                anyhow::bail!("phone {} is not provisioned", mac.colons());
            }
            Ok(Reply::done(format!(
                "phone {} deleted (its extension stays)",
                mac.colons()
            )))
        }
        PhoneCommand::Fetch {
            path,
            source,
            server,
            credentials,
        } => Ok(Reply::Provision(fetch(
            ctx,
            &path,
            source,
            server,
            credentials,
        )?)),
    }
}

fn info(r: &PhoneRecord) -> PhoneInfo {
    PhoneInfo {
        mac: r.mac.clone(),
        vendor: Vendor::of_model(&r.model)
            .map(Vendor::as_str)
            .unwrap_or("unknown")
            .to_owned(),
        model: r.model.clone(),
        ext: r.ext.clone(),
        keys: r.keys.clone(),
        created_ms: r.created_ms,
        fetched_ms: r.fetched_ms,
    }
}

fn add(
    ctx: PhoneCtx<'_>,
    mac: &str,
    model: &str,
    ext: &str,
    keys: Vec<String>,
) -> anyhow::Result<Reply> {
    let mac: Mac = mac.parse()?;
    let vendor = Vendor::of_model(model).map_err(anyhow::Error::msg)?;
    let Some(ext_rec) = ctx.store.ext_get(ext)? else {
        anyhow::bail!("extension {ext} does not exist (create it first: outpostctl ext add)");
    };
    if keys.len() > vendor.max_blf_keys() {
        anyhow::bail!(
            "{} BLF keys: a {vendor} phone is given at most {}",
            keys.len(),
            vendor.max_blf_keys()
        );
    }
    for (i, k) in keys.iter().enumerate() {
        validate_ext(k).map_err(|e| anyhow::anyhow!("BLF key {}: {e}", i + 1))?;
        if keys[..i].contains(k) {
            anyhow::bail!("BLF key {}: extension {k} is already on a key", i + 1);
        }
    }
    let key = mac.to_string();
    if ctx.store.phone_get(&key)?.is_none()
        && ctx.store.phone_count()? >= provision::MAX_PHONES as u64
    {
        anyhow::bail!(
            "{} phones are provisioned already, the most the box keeps (phone del one first)",
            provision::MAX_PHONES
        );
    }
    let mut rng = rand::rngs::OsRng;
    let rec = PhoneRecord {
        mac: key.clone(),
        model: model.to_owned(),
        ext: ext.to_owned(),
        keys,
        sip_password: Alphanumeric.sample_string(&mut rng, PASSWORD_LEN),
        prov_password: Alphanumeric.sample_string(&mut rng, PASSWORD_LEN),
        created_ms: ctx.now,
        fetched_ms: None,
    };
    // The phone is stored first: a failure after it leaves the old extension password in
    // force and a record `phone add` replaces.
    ctx.store.phone_put(&rec)?;
    crate::admin::control::put_extension(
        ctx.store,
        ctx.endpoint,
        ctx.realm,
        ctx.now,
        ext,
        ext_rec.name,
        &rec.sip_password,
    )?;
    tracing::info!(mac = %key, %vendor, ext, "phone provisioned");
    let file = match vendor {
        Vendor::Grandstream => format!("cfg{key}.xml"),
        Vendor::Snom => format!("{key}.xml"),
        Vendor::Yealink | Vendor::Poly | Vendor::Fanvil => format!("{key}.cfg"),
    };
    Ok(Reply::PhoneAdded(PhoneAdded {
        phone: info(&rec),
        username: key,
        password: rec.prov_password,
        file,
    }))
}

/// Compares two secrets in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn fetch(
    ctx: PhoneCtx<'_>,
    path: &str,
    source: IpAddr,
    server: IpAddr,
    credentials: Option<(String, String)>,
) -> anyhow::Result<ProvisionAnswer> {
    let Some(wanted) = provision::parse_path(path) else {
        return Ok(ProvisionAnswer::NotFound);
    };
    // The phone whose file it is, or for a common file, the one whose credentials came.
    let phone = match wanted {
        Wanted::Phone { mac, .. } => match ctx.store.phone_get(&mac.to_string())? {
            Some(p) => Some(p),
            None => return Ok(ProvisionAnswer::NotFound),
        },
        Wanted::Common(_) => None,
    };
    let Some((user, password)) = credentials else {
        // A phone asks without credentials first; that is no failure.
        return Ok(ProvisionAnswer::Unauthorized);
    };
    if ctx.guard.is_banned(ctx.now, source) {
        tracing::warn!(%source, "provisioning fetch refused: the source is banned");
        return Ok(ProvisionAnswer::Unauthorized);
    }
    let claimed = user.parse::<Mac>().ok().map(|m| m.to_string());
    let phone = match (phone, &claimed) {
        (Some(p), Some(c)) if *c == p.mac => Some(p),
        (Some(_), _) => None,
        (None, Some(c)) => ctx.store.phone_get(c)?,
        (None, None) => None,
    };
    let Some(phone) = phone.filter(|p| same_secret(&password, &p.prov_password)) else {
        tracing::warn!(%source, file = %crate::names::printable(path, 64), "provisioning fetch with wrong credentials");
        ctx.guard.login_failure(
            ctx.now,
            source,
            crate::console::api::LoginService::Provision,
        );
        return Ok(ProvisionAnswer::Unauthorized);
    };
    let file = match wanted {
        Wanted::Common(vendor) => provision::common_file(vendor),
        Wanted::Phone { file, .. } => {
            let vendor = Vendor::of_model(&phone.model).map_err(anyhow::Error::msg)?;
            let Some(profile) = profile(ctx.cfg, ctx.store, &phone, server)? else {
                return Ok(ProvisionAnswer::NotFound);
            };
            let Some(f) = provision::phone_file(vendor, file, &profile) else {
                return Ok(ProvisionAnswer::NotFound);
            };
            if phone
                .fetched_ms
                .is_none_or(|t| ctx.now.saturating_sub(t) >= FETCH_MARK_MS)
            {
                let mut marked = phone.clone();
                marked.fetched_ms = Some(ctx.now);
                ctx.store.phone_put(&marked)?;
            }
            tracing::info!(mac = %phone.mac, %source, "phone fetched its configuration");
            f
        }
    };
    Ok(ProvisionAnswer::File {
        content_type: file.content_type.to_owned(),
        body: file.body,
    })
}

/// What the phone's file says, from its record, its extension and the running config;
/// `None` when its extension was deleted since (the phone then gets nothing).
fn profile(
    cfg: &Config,
    store: &Store,
    phone: &PhoneRecord,
    server: IpAddr,
) -> anyhow::Result<Option<Profile>> {
    let transport = cfg
        .provision
        .sip_transport()
        .map_err(|(_, e)| anyhow::anyhow!(e))?;
    let (listen, default_port) = match transport {
        Transport::Tls => (&cfg.tls.listen, 5061),
        Transport::Udp | Transport::Tcp => (&cfg.sip.listen, 5060),
    };
    let port = listen
        .iter()
        .find(|a| a.is_ipv4() == server.is_ipv4() && (a.ip().is_unspecified() || a.ip() == server))
        .or_else(|| listen.first())
        .map_or(default_port, std::net::SocketAddr::port);
    let Some(ext) = store.ext_get(&phone.ext)? else {
        return Ok(None);
    };
    let name = ext.name;
    let (utc_offset_minutes, daylight) = cfg.provision.zone();
    Ok(Some(Profile {
        mac: phone.mac.parse()?,
        model: phone.model.clone(),
        ext: phone.ext.clone(),
        display_name: name.unwrap_or_else(|| phone.ext.clone()),
        password: phone.sip_password.clone(),
        server: match server {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("[{v6}]"),
        },
        port,
        transport,
        voicemail: cfg.voicemail.access_number.clone(),
        utc_offset_minutes,
        daylight,
        blf: phone.keys.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "a"));
    }
}
