//! The appliance configuration baked into an image: the base file with `--config-extra`
//! merged into it as TOML (so an extra can set one key of a table the base has already).

/// Why the configuration could not be merged.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The base or the extra is not TOML.
    #[error("{which} is not valid TOML: {error}")]
    Parse {
        /// `the base configuration` or `--config-extra`.
        which: &'static str,
        /// The parser's message.
        error: toml::de::Error,
    },
    /// The merged table did not serialize.
    #[error("cannot write the merged configuration: {0}")]
    Write(#[from] toml::ser::Error),
}

/// First line of a merged configuration.
const HEADER: &str = "# Outpost appliance configuration: the image's base configuration with \
                      `outpost-image build --config-extra` merged into it.\n\n";

/// The configuration text: `base` verbatim without an extra, else both parsed and merged
/// (the extra wins; tables merge key by key, recursively; arrays and values are replaced).
pub fn merge_config(base: &str, extra: Option<&str>) -> Result<String, ConfigError> {
    let Some(extra) = extra else {
        return Ok(base.to_owned());
    };
    let mut table: toml::Table = toml::from_str(base).map_err(|error| ConfigError::Parse {
        which: "the base configuration",
        error,
    })?;
    let extra: toml::Table = toml::from_str(extra).map_err(|error| ConfigError::Parse {
        which: "--config-extra",
        error,
    })?;
    merge(&mut table, extra);
    Ok(format!("{HEADER}{}", toml::to_string(&table)?))
}

/// Merges `extra` into `base`.
fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => merge(b, e),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
# comment kept only without an extra
profile = "qemu-virt"

[media]
port_first = 10000
port_last = 20000

[sip.tls]
enabled = false
ciphers = ["a", "b"]
"#;

    #[test]
    fn without_an_extra_the_base_is_kept_verbatim() {
        assert_eq!(merge_config(BASE, None).expect("merge"), BASE);
    }

    #[test]
    fn the_extra_wins_and_tables_merge_recursively() {
        let extra = r#"
[media]
port_first = 30000

[sip.tls]
ciphers = ["c"]

[demo]
enabled = true
"#;
        let text = merge_config(BASE, Some(extra)).expect("merge");
        assert!(text.starts_with("# Outpost appliance configuration"));
        let t: toml::Table = toml::from_str(&text).expect("output is TOML");
        assert_eq!(t["profile"].as_str(), Some("qemu-virt"));
        assert_eq!(t["media"]["port_first"].as_integer(), Some(30000));
        assert_eq!(
            t["media"]["port_last"].as_integer(),
            Some(20000),
            "keys the extra does not name stay"
        );
        assert_eq!(t["sip"]["tls"]["enabled"].as_bool(), Some(false));
        let ciphers = t["sip"]["tls"]["ciphers"].as_array().expect("array");
        assert_eq!(ciphers.len(), 1, "arrays are replaced, not appended");
        assert_eq!(t["demo"]["enabled"].as_bool(), Some(true));
    }

    #[test]
    fn a_value_may_replace_a_table_and_bad_toml_is_an_error() {
        let text = merge_config(BASE, Some("media = \"off\"\n")).expect("merge");
        let t: toml::Table = toml::from_str(&text).expect("TOML");
        assert_eq!(t["media"].as_str(), Some("off"));
        let err = merge_config(BASE, Some("[media\n")).expect_err("bad extra");
        assert!(err.to_string().contains("--config-extra"), "{err}");
    }
}
