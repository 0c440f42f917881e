//! Starting the daemon's parts from a configuration: the transports and TLS (each section
//! that cannot start is set aside through [`crate::fallback`] so the box stays reachable),
//! the RTP relay, the call core's trunks and the IVR menus. Also used when a configuration
//! change is applied live.

use std::net::SocketAddr;
use std::time::Duration;

use pbx_core::endpoint::{IvrMenu, RecordingSettings};
use tokio::sync::mpsc;

use crate::config::Config;
use crate::dns::TrunkDns;
use crate::driver::{Inbound, Transports};
use crate::media::relay::{self, Relay, RelayConfig};
use crate::pbx_config::TrunkSection;

/// The call core's trunks of a configuration with their hosts' last good addresses (never
/// waiting for DNS), and the trunks whose host has no address yet (name, reason): such a
/// trunk is Down until its host resolves, and a WAN that is down at boot does not stop the
/// office's local calls. TLS trunks tell the transports which name each of their
/// addresses' certificate must carry.
pub(super) fn core_trunks(
    cfg: &Config,
    dns: &TrunkDns,
    transports: &mut Transports,
) -> (Vec<pbx_core::trunk::TrunkConfig>, Vec<(String, String)>) {
    let mut trunks = Vec::new();
    let mut unresolved = Vec::new();
    for t in &cfg.trunk {
        let transport = t.transport_kind();
        let targets = dns.targets(&t.host, transport);
        if targets.is_empty() {
            let why = dns
                .failure(&t.host, transport)
                .unwrap_or_else(|| format!("{} has not resolved yet", t.host));
            unresolved.push((t.name.clone(), why));
        }
        trunk_tls_names(transports, t, &targets);
        let list: Vec<String> = targets.iter().map(ToString::to_string).collect();
        tracing::info!(trunk = %t.name, host = %t.host, targets = %list.join(", "), transport = transport.as_str(), register = t.register, "trunk configured");
        trunks.push(t.to_core(targets));
    }
    (trunks, unresolved)
}

/// A TLS trunk's addresses must present a certificate for the trunk's TLS name.
pub(super) fn trunk_tls_names(
    transports: &mut Transports,
    t: &TrunkSection,
    targets: &[SocketAddr],
) {
    if t.transport_kind() == pbx_core::sip::Transport::Tls {
        for &a in targets {
            transports.set_tls_name(a, t.tls_name());
        }
    }
}

/// The (host, transport) of every trunk, for [`TrunkDns`].
pub(super) fn trunk_hosts(cfg: &Config) -> Vec<crate::dns::HostKey> {
    let mut hosts: Vec<crate::dns::HostKey> = Vec::new();
    for t in &cfg.trunk {
        let key = (t.host.clone(), t.transport_kind());
        if !hosts.contains(&key) {
            hosts.push(key);
        }
    }
    hosts
}

/// Binds the SIP transports on `sip.listen`, else on the first fallback that works (see
/// [`crate::fallback`]), then TLS the same way; `cfg` is left holding what runs.
pub(super) async fn start_transports(
    cfg: &mut Config,
    fallbacks: &mut crate::fallback::Fallbacks,
    in_tx: mpsc::Sender<Inbound>,
) -> anyhow::Result<Transports> {
    let mut failures: Vec<String> = Vec::new();
    let mut bound = None;
    for (label, listen) in fallbacks.candidates(|c| c.sip.listen.clone()) {
        match Transports::bind(&listen, in_tx.clone()).await {
            Ok(t) => {
                if !failures.is_empty() {
                    let running = format!("{label} {}", addr_list(&listen));
                    fallbacks.fell_back("sip.listen", failures.join("; "), &running);
                }
                cfg.sip.listen = listen;
                bound = Some(t);
                break;
            }
            Err(err) => failures.push(format!("cannot listen on {}: {err}", addr_list(&listen))),
        }
    }
    let Some(mut transports) = bound else {
        anyhow::bail!("cannot listen for SIP: {}", failures.join("; "));
    };
    let mut failures: Vec<String> = Vec::new();
    for (label, tls) in fallbacks.candidates(|c| c.tls.clone()) {
        let started = crate::driver::tls::TlsContext::new(&tls, &cfg.store.data_dir)
            .map_err(|e| e.to_string())
            .and_then(|ctx| {
                transports
                    .enable_tls(&tls.listen, ctx)
                    .map_err(|e| format!("cannot listen on {}: {e}", addr_list(&tls.listen)))
            });
        match started {
            Ok(()) => {
                if !failures.is_empty() {
                    let running = if tls.listen.is_empty() {
                        format!("{label} (no TLS listener)")
                    } else {
                        label
                    };
                    fallbacks.fell_back("tls", failures.join("; "), &running);
                }
                cfg.tls = tls;
                return Ok(transports);
            }
            Err(err) => failures.push(err),
        }
    }
    anyhow::bail!("cannot set up TLS: {}", failures.join("; "))
}

/// Starts the relay with `[media]`, else with the first fallback that works, else runs
/// without anchoring media (calls still connect; voicemail and the auto attendant are off)
/// rather than not at all. `cfg.media` is left holding what runs.
pub(super) fn start_relay(
    cfg: &mut Config,
    fallbacks: &mut crate::fallback::Fallbacks,
) -> Option<Relay> {
    if !cfg.media.enabled {
        return None;
    }
    let mut failures: Vec<String> = Vec::new();
    let mut candidates = fallbacks.candidates(|c| c.media.clone());
    // An address the box no longer has (a moved box, a new DHCP lease) is the usual cause:
    // the same section on every address of the listen families comes first.
    if !cfg.media.addrs.is_empty() {
        let auto = crate::config::MediaConfig {
            addrs: Vec::new(),
            ..cfg.media.clone()
        };
        candidates.insert(1, ("the box's current addresses".to_owned(), auto));
    }
    let prompts = crate::media::PromptStore::load(&cfg.media.prompts_dir);
    for (label, media) in candidates.into_iter().filter(|(_, m)| m.enabled) {
        let addrs = media.effective_addrs(&cfg.sip.listen);
        let started = relay::start_with_options(
            RelayConfig {
                addrs: addrs.clone(),
                port_first: media.port_first,
                port_last: media.port_last,
                media_timeout: Duration::from_secs(media.timeout_secs),
            },
            prompts.clone(),
            relay::RelayOptions {
                io: relay::RelayIo::default(),
                kernel_fast_path: media.kernel_fast_path,
            },
        );
        match started {
            Ok(r) => {
                if !failures.is_empty() {
                    let running = format!(
                        "{label} ({} ports {}-{})",
                        ip_list(&addrs),
                        media.port_first,
                        media.port_last
                    );
                    fallbacks.fell_back("media", failures.join("; "), &running);
                }
                cfg.media = media;
                return Some(r);
            }
            Err(err) => failures.push(format!(
                "RTP relay on {} ports {}-{}: {err}",
                ip_list(&addrs),
                media.port_first,
                media.port_last
            )),
        }
    }
    fallbacks.fell_back(
        "media",
        failures.join("; "),
        "media not anchored (phones send audio to each other; no voicemail or auto attendant)",
    );
    cfg.media.enabled = false;
    None
}

fn addr_list(addrs: &[std::net::SocketAddr]) -> String {
    let v: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    v.join(", ")
}

fn ip_list(addrs: &[std::net::IpAddr]) -> String {
    let v: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    v.join(", ")
}

/// Call recording on demand as the call core runs it: `None` when no extension opted in.
pub(super) fn recording_settings(cfg: &Config) -> Option<RecordingSettings> {
    let r = &cfg.recording;
    (!r.extensions.is_empty()).then(|| RecordingSettings {
        extensions: r.extensions.clone(),
        code: r.code.clone(),
        dir: recordings_dir(cfg),
        max_ms: r.max_secs.saturating_mul(1000),
    })
}

/// Where call recordings (and their parts while a call records) are kept.
pub(super) fn recordings_dir(cfg: &Config) -> std::path::PathBuf {
    cfg.store.data_dir.join("recordings")
}

/// The auto-attendant menus of a configuration.
pub(super) fn ivr_menus(cfg: &Config) -> Vec<IvrMenu> {
    cfg.ivr
        .iter()
        .map(|m| IvrMenu {
            number: m.number.clone(),
            greeting: m.greeting.clone(),
            options: m
                .options
                .iter()
                .filter_map(|(k, v)| Some((k.chars().next()?, v.clone())))
                .collect(),
            timeout_ms: m.timeout_secs.saturating_mul(1000),
            retries: m.retries,
        })
        .collect()
}
