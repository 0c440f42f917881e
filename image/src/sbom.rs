//! The CycloneDX 1.5 SBOM every image carries: the Rust crates of Cargo.lock and the
//! Debian packages the image holds.

use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Lock {
    #[serde(default)]
    package: Vec<LockPackage>,
}

#[derive(Debug, Deserialize)]
struct LockPackage {
    name: String,
    version: String,
    source: Option<String>,
    checksum: Option<String>,
}

/// The CycloneDX document for a Cargo.lock's text and the Debian packages (name, version). Workspace crates (no source) are the
/// firmware itself; every other package is a component with its registry checksum.
pub fn sbom(lock_text: &str, debs: &[(String, String)]) -> anyhow::Result<serde_json::Value> {
    let lock: Lock = toml::from_str(lock_text)?;
    let mut components: Vec<serde_json::Value> = lock
        .package
        .iter()
        .filter(|p| p.source.is_some())
        .map(|p| {
            let mut c = serde_json::json!({
                "type": "library",
                "name": p.name,
                "version": p.version,
                "purl": format!("pkg:cargo/{}@{}", p.name, p.version),
            });
            if let Some(sum) = &p.checksum {
                c["hashes"] = serde_json::json!([{ "alg": "SHA-256", "content": sum }]);
            }
            c
        })
        .collect();
    components.extend(debs.iter().map(|(name, version)| {
        serde_json::json!({
            "type": "application",
            "name": name,
            "version": version,
            "purl": format!("pkg:deb/debian/{name}@{version}?arch=arm64"),
        })
    }));
    components.sort_by(|a, b| a["purl"].as_str().cmp(&b["purl"].as_str()));
    Ok(serde_json::json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "version": 1,
        "metadata": {
            "component": {
                "type": "firmware",
                "name": "outpost",
                "version": env!("CARGO_PKG_VERSION"),
            }
        },
        "components": components,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_crates_become_components_and_workspace_crates_do_not() {
        let lock = r#"
version = 4

[[package]]
name = "pbx-core"
version = "0.1.0"

[[package]]
name = "rsip"
version = "0.4.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "abc123"
"#;
        let doc = sbom(lock, &[]).expect("valid lock");
        let comps = doc["components"].as_array().expect("array");
        assert_eq!(comps.len(), 1);
        assert_eq!(comps[0]["purl"], "pkg:cargo/rsip@0.4.0");
        assert_eq!(comps[0]["hashes"][0]["content"], "abc123");
        assert_eq!(doc["specVersion"], "1.5");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(sbom("[[package]]\nname = 3", &[]).is_err());
    }

    #[test]
    fn debian_packages_are_components_with_deb_purls() {
        let debs = [("busybox-static".to_owned(), "1:1.35.0-4".to_owned())];
        let doc = sbom("version = 4\n", &debs).expect("valid lock");
        assert_eq!(
            doc["components"][0]["purl"],
            "pkg:deb/debian/busybox-static@1:1.35.0-4?arch=arm64"
        );
        assert_eq!(doc["components"][0]["version"], "1:1.35.0-4");
    }
}
