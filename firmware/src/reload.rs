//! Which configuration keys a running daemon applies at once and which wait for a restart.
//!
//! [`KEYS`] names every key of the configuration (a dotted path; a section or an array of
//! tables such as `trunk` stands for everything under it) with when its change takes
//! effect. `config apply` changes the live keys at once; [`hold_back`] keeps the running
//! value of every restart-only key that changed, and the daemon says which ones take
//! effect at the next restart. A test enumerates the keys of the configuration and fails
//! for a key without a rule, so a new setting cannot silently do nothing until a restart.

use serde_json::Value;

use crate::config::Config;

/// When a change of a key takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    /// At once, on `config apply`.
    Live,
    /// At the next start of the daemon; until then the old value runs.
    Restart,
}

use Apply::{Live, Restart};

/// Every configuration key and when its change takes effect; the longest matching prefix
/// (on `.` boundaries) decides.
pub const KEYS: &[(&str, Apply)] = &[
    // The call core's plan: rebuilt on apply.
    ("auth.algorithms", Live),
    ("calls", Live),
    ("dialplan", Live),
    ("features", Live),
    ("inbound", Live),
    ("ivr", Live),
    ("ring_group", Live),
    ("paging", Live),
    ("route", Live),
    // Trunks apply live; a change of a trunk's address also needs a restart for the
    // firewall's trunk allow list (the daemon says so).
    ("trunk", Live),
    ("sip.user_agent", Live),
    ("voicemail.max_secs", Live),
    ("recording", Live),
    ("voicemail.access_number", Live),
    // Read where they are used, from the running configuration.
    ("backup", Live),
    ("firewall.policy", Live),
    // The daemon's connection caps and deadlines apply to new connections at once; the
    // kernel's caps are set when the table is installed.
    ("firewall.connections", Live),
    ("firewall.connections.kernel", Restart),
    ("firewall.connections.per_source", Restart),
    ("firewall.connections.per_source_authenticated", Restart),
    ("management.networks", Live),
    // Trunk hosts are looked up again with the new servers and TTL bounds.
    ("dns", Live),
    // The NTP client asks the new servers at once; `start_wait_secs` is read at start.
    ("time", Live),
    ("system.hostname", Live),
    // Read by each provisioning fetch from the running configuration.
    ("provision.transport", Live),
    ("provision.utc_offset_minutes", Live),
    ("provision.time_zone", Live),
    // Sockets, threads and tables made at start.
    ("admin", Restart),
    ("auth.nonce_lifetime_secs", Restart),
    ("demo", Restart),
    ("firewall.detect", Restart),
    ("firewall.enforce", Restart),
    ("firewall.feeds", Restart),
    ("firewall.kernel_flood_burst", Restart),
    ("firewall.kernel_flood_per_second", Restart),
    ("firewall.kernel_trunk_burst", Restart),
    ("firewall.kernel_trunk_per_second", Restart),
    ("firewall.monitor", Restart),
    ("firewall.rtp_closed", Restart),
    ("firewall.rtp_pinhole_secs", Restart),
    ("firewall.table", Restart),
    ("log", Restart),
    ("media", Restart),
    ("metrics", Restart),
    ("panel", Restart),
    ("provision.listen", Restart),
    ("registrar", Restart),
    ("sip.listen", Restart),
    ("sip.max_server_transactions", Restart),
    ("sip.realm", Restart),
    ("ssh", Restart),
    ("store", Restart),
    ("tls", Restart),
    ("voicemail.enabled", Restart),
    ("watchdog", Restart),
    ("web", Restart),
];

/// The rule for `key`: the longest entry of [`KEYS`] that is `key` or a section above it.
pub fn rule(key: &str) -> Option<Apply> {
    KEYS.iter()
        .filter(|(k, _)| {
            key == *k || (key.starts_with(k) && key.as_bytes().get(k.len()) == Some(&b'.'))
        })
        .max_by_key(|(k, _)| k.len())
        .map(|(_, a)| *a)
}

/// Every leaf key of a configuration as dotted paths with their values (tables are walked
/// into; arrays and scalars are leaves).
pub fn leaf_keys(value: &Value) -> Vec<(String, &Value)> {
    fn walk<'a>(prefix: &str, v: &'a Value, out: &mut Vec<(String, &'a Value)>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&path, v, out);
                }
            }
            _ => out.push((prefix.to_owned(), v)),
        }
    }
    let mut out = Vec::new();
    walk("", value, &mut out);
    out
}

/// `new` with every restart-only key that differs from `old` set back to `old`'s value
/// (what runs keeps the old value until the restart), and those keys. A key without a rule
/// is held back too: nothing changes silently.
pub fn hold_back(old: &Config, new: &Config) -> Result<(Config, Vec<String>), serde_json::Error> {
    let old_v = serde_json::to_value(old)?;
    let mut new_v = serde_json::to_value(new)?;
    let mut held = Vec::new();
    let old_leaves: Vec<(String, Value)> = leaf_keys(&old_v)
        .into_iter()
        .map(|(k, v)| (k, v.clone()))
        .collect();
    for (key, old_value) in old_leaves {
        let pointer = format!("/{}", key.replace('.', "/"));
        let changed = new_v.pointer(&pointer) != Some(&old_value);
        if changed && rule(&key) != Some(Live) {
            if let Some(slot) = new_v.pointer_mut(&pointer) {
                *slot = old_value;
            }
            held.push(key);
        }
    }
    Ok((serde_json::from_value(new_v)?, held))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A configuration with a value in every optional key and an entry in every list, so
    /// that every key appears.
    fn full() -> Config {
        let text = r#"
            [[trunk]]
            name = "p"
            host = "192.0.2.1"
            username = "u"
            password = "secret-pw"
            [[route]]
            name = "r"
            patterns = ["0X."]
            trunks = ["p"]
            [[ring_group]]
            number = "600"
            members = ["100"]
            [[ivr]]
            number = "500"
            greeting = "main-menu"
            options = { "1" = "100" }
            [metrics]
            listen = "127.0.0.1:9100"
        "#;
        Config::from_toml_str(text).unwrap()
    }

    #[test]
    fn every_configuration_key_is_applied_live_or_named_as_needing_a_restart() {
        for cfg in [Config::default(), full()] {
            let v = serde_json::to_value(&cfg).unwrap();
            let keys = leaf_keys(&v);
            assert!(keys.len() > 140, "{} keys", keys.len());
            let missing: Vec<&str> = keys
                .iter()
                .filter(|(k, _)| rule(k).is_none())
                .map(|(k, _)| k.as_str())
                .collect();
            assert!(missing.is_empty(), "keys without a rule: {missing:?}");
        }
        // Every rule names a real key or section (no stale entries).
        let v = serde_json::to_value(full()).unwrap();
        let keys = leaf_keys(&v);
        for (rule_key, _) in KEYS {
            assert!(
                keys.iter()
                    .any(|(k, _)| k == rule_key || k.starts_with(&format!("{rule_key}."))),
                "rule {rule_key} matches no key"
            );
        }
    }

    #[test]
    fn restart_only_changes_are_held_back_and_named_live_ones_pass() {
        let old = full();
        let mut new = old.clone();
        new.firewall.kernel_flood_per_second += 1;
        new.firewall.connections.per_source += 1;
        new.firewall.connections.idle_secs += 1;
        new.registrar.max_expires += 60;
        new.sip.user_agent = "Office PBX".into();
        new.calls.ring_timeout_secs += 5;
        let (kept, held) = hold_back(&old, &new).unwrap();
        assert_eq!(
            held,
            [
                "firewall.connections.per_source",
                "firewall.kernel_flood_per_second",
                "registrar.max_expires"
            ]
        );
        assert_eq!(
            kept.firewall.kernel_flood_per_second,
            old.firewall.kernel_flood_per_second
        );
        assert_eq!(
            kept.firewall.connections.per_source,
            old.firewall.connections.per_source
        );
        assert_eq!(kept.registrar, old.registrar);
        assert_eq!(
            kept.firewall.connections.idle_secs,
            new.firewall.connections.idle_secs
        );
        assert_eq!(kept.sip.user_agent, "Office PBX");
        assert_eq!(kept.calls.ring_timeout_secs, new.calls.ring_timeout_secs);
        let (same, none) = hold_back(&old, &old).unwrap();
        assert_eq!((same, none.len()), (old, 0));
    }

    #[test]
    fn the_longest_rule_decides() {
        assert_eq!(rule("firewall.connections.idle_secs"), Some(Live));
        assert_eq!(rule("firewall.connections.kernel"), Some(Restart));
        assert_eq!(rule("registrar.max_expires"), Some(Restart));
        assert_eq!(rule("trunk"), Some(Live));
        assert_eq!(rule("sipx"), None);
        assert_eq!(rule("firewall"), None);
    }
}
