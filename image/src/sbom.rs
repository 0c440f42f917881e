//! The CycloneDX 1.5 SBOM every image carries: the Rust crates linked into the firmware
//! (the normal dependency closure of the `firmware` package for the appliance target, from
//! `cargo metadata`), each with its licence expression and Cargo.lock checksum, and the
//! Debian packages the image holds.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde::Deserialize;

/// Rust target of the appliance.
pub const TARGET: &str = "aarch64-unknown-linux-musl";

/// The workspace package whose binaries are the firmware.
const FIRMWARE_PACKAGE: &str = "firmware";

/// Why the crate list could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    /// cargo metadata could not run or failed.
    #[error("cargo metadata failed: {0}")]
    Cargo(String),
    /// Its output or Cargo.lock did not decode.
    #[error("cannot read {what}: {detail}")]
    Decode {
        /// `cargo metadata output`, `Cargo.lock`, ...
        what: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// The workspace has no `firmware` package.
    #[error("the workspace has no {FIRMWARE_PACKAGE} package")]
    NoFirmware,
}

/// A crate linked into the firmware.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crate {
    /// Crate name.
    pub name: String,
    /// Exact version.
    pub version: String,
    /// SPDX licence expression of its Cargo.toml (`None`: no `license` field).
    pub license: Option<String>,
    /// Its `license-file`, when it names one.
    pub license_file: Option<String>,
    /// SHA-256 of the registry package (Cargo.lock), when it has one.
    pub checksum: Option<String>,
    /// One of our workspace crates.
    pub workspace: bool,
}

#[derive(Debug, Deserialize)]
struct Metadata {
    packages: Vec<MetaPackage>,
    workspace_members: Vec<String>,
    resolve: Option<Resolve>,
}

#[derive(Debug, Deserialize)]
struct MetaPackage {
    id: String,
    name: String,
    version: String,
    license: Option<String>,
    license_file: Option<String>,
    source: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Resolve {
    nodes: Vec<Node>,
}

#[derive(Debug, Deserialize)]
struct Node {
    id: String,
    #[serde(default)]
    deps: Vec<NodeDep>,
}

#[derive(Debug, Deserialize)]
struct NodeDep {
    pkg: String,
    #[serde(default)]
    dep_kinds: Vec<DepKind>,
}

#[derive(Debug, Deserialize)]
struct DepKind {
    kind: Option<String>,
}

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

/// The crates linked into the firmware: runs `cargo metadata` in `workspace` and reads its
/// Cargo.lock for checksums.
pub fn firmware_crates(workspace: &Path) -> Result<Vec<Crate>, SbomError> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .current_dir(workspace)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--filter-platform",
            TARGET,
        ])
        .output()
        .map_err(|e| SbomError::Cargo(e.to_string()))?;
    if !out.status.success() {
        return Err(SbomError::Cargo(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    let lock =
        std::fs::read_to_string(workspace.join("Cargo.lock")).map_err(|e| SbomError::Decode {
            what: "Cargo.lock",
            detail: e.to_string(),
        })?;
    let manifest =
        std::fs::read_to_string(workspace.join("Cargo.toml")).map_err(|e| SbomError::Decode {
            what: "Cargo.toml",
            detail: e.to_string(),
        })?;
    crates_from(&out.stdout, &lock, workspace_licence(&manifest).as_deref())
}

/// `[workspace.package] license` of the root Cargo.toml.
fn workspace_licence(manifest: &str) -> Option<String> {
    let t: toml::Table = toml::from_str(manifest).ok()?;
    t.get("workspace")?
        .get("package")?
        .get("license")?
        .as_str()
        .map(str::to_owned)
}

/// The firmware closure from `cargo metadata` JSON and Cargo.lock text, sorted by name and
/// version. Workspace crates without a licence get `workspace_licence`.
fn crates_from(
    metadata_json: &[u8],
    lock_text: &str,
    workspace_licence: Option<&str>,
) -> Result<Vec<Crate>, SbomError> {
    let meta: Metadata = serde_json::from_slice(metadata_json).map_err(|e| SbomError::Decode {
        what: "cargo metadata output",
        detail: e.to_string(),
    })?;
    let lock: Lock = toml::from_str(lock_text).map_err(|e| SbomError::Decode {
        what: "Cargo.lock",
        detail: e.to_string(),
    })?;
    let checksums: BTreeMap<(&str, &str, &str), &str> = lock
        .package
        .iter()
        .filter_map(|p| {
            Some((
                (p.name.as_str(), p.version.as_str(), p.source.as_deref()?),
                p.checksum.as_deref()?,
            ))
        })
        .collect();
    let members: BTreeSet<&str> = meta.workspace_members.iter().map(String::as_str).collect();
    let packages: BTreeMap<&str, &MetaPackage> =
        meta.packages.iter().map(|p| (p.id.as_str(), p)).collect();
    let root = meta
        .packages
        .iter()
        .find(|p| p.name == FIRMWARE_PACKAGE && members.contains(p.id.as_str()))
        .ok_or(SbomError::NoFirmware)?;
    let resolve = meta.resolve.as_ref().ok_or_else(|| SbomError::Decode {
        what: "cargo metadata output",
        detail: "no resolve graph".to_owned(),
    })?;
    let nodes: BTreeMap<&str, &Node> = resolve.nodes.iter().map(|n| (n.id.as_str(), n)).collect();

    let mut seen: BTreeSet<&str> = BTreeSet::new();
    let mut queue = vec![root.id.as_str()];
    while let Some(id) = queue.pop() {
        if !seen.insert(id) {
            continue;
        }
        let Some(node) = nodes.get(id) else {
            continue;
        };
        for dep in &node.deps {
            // Normal dependencies only: dev- and build-dependencies are not linked in.
            if dep.dep_kinds.iter().any(|k| k.kind.is_none()) {
                queue.push(dep.pkg.as_str());
            }
        }
    }
    let mut crates: Vec<Crate> = seen
        .iter()
        .filter_map(|id| packages.get(id))
        .map(|p| {
            let workspace = members.contains(p.id.as_str());
            let license = p
                .license
                .clone()
                .or_else(|| workspace.then(|| workspace_licence.map(str::to_owned))?);
            Crate {
                name: p.name.clone(),
                version: p.version.clone(),
                license,
                license_file: p.license_file.as_deref().map(|f| {
                    Path::new(f)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| f.to_owned())
                }),
                checksum: p.source.as_deref().and_then(|s| {
                    checksums
                        .get(&(p.name.as_str(), p.version.as_str(), s))
                        .map(|c| (*c).to_owned())
                }),
                workspace,
            }
        })
        .collect();
    crates.sort_by(|a, b| a.name.cmp(&b.name).then(a.version.cmp(&b.version)));
    Ok(crates)
}

/// A licence expression in SPDX form (the old `A/B` becomes `A OR B`).
fn spdx(expr: &str) -> String {
    expr.split('/')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" OR ")
}

/// The CycloneDX document for the firmware's crates and the Debian packages (name,
/// version).
pub fn sbom(crates: &[Crate], debs: &[(String, String)]) -> serde_json::Value {
    let mut components: Vec<serde_json::Value> = crates
        .iter()
        .map(|c| {
            let mut v = serde_json::json!({
                "type": if c.workspace { "application" } else { "library" },
                "name": c.name,
                "version": c.version,
                "purl": format!("pkg:cargo/{}@{}", c.name, c.version),
            });
            if let Some(l) = &c.license {
                v["licenses"] = serde_json::json!([{ "expression": spdx(l) }]);
            } else if let Some(f) = &c.license_file {
                v["licenses"] = serde_json::json!([{ "license": {
                    "name": format!("no SPDX expression: see {f} in the crate")
                }}]);
            }
            if let Some(sum) = &c.checksum {
                v["hashes"] = serde_json::json!([{ "alg": "SHA-256", "content": sum }]);
            }
            v
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
    serde_json::json!({
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: &str = "registry+https://github.com/rust-lang/crates.io-index";

    /// A cargo metadata document: firmware -> pbx-core (workspace) -> rsip (normal),
    /// firmware -> tempfile (dev), pbx-core -> cc (build), rsip -> nom (normal).
    fn metadata() -> Vec<u8> {
        let pkg = |id: &str, name: &str, license: Option<&str>, source: Option<&str>| {
            serde_json::json!({
                "id": id, "name": name, "version": "1.0.0", "license": license,
                "license_file": if license.is_none() { Some("/x/LICENSE") } else { None },
                "source": source,
            })
        };
        let dep = |pkg: &str, kind: Option<&str>| serde_json::json!({ "pkg": pkg, "dep_kinds": [{ "kind": kind, "target": null }] });
        serde_json::to_vec(&serde_json::json!({
            "packages": [
                pkg("fw", "firmware", None, None),
                pkg("core", "pbx-core", Some("Apache-2.0"), None),
                pkg("rsip", "rsip", None, Some(REG)),
                pkg("nom", "nom", Some("MIT/Apache-2.0"), Some(REG)),
                pkg("tempfile", "tempfile", Some("MIT"), Some(REG)),
                pkg("cc", "cc", Some("MIT"), Some(REG)),
            ],
            "workspace_members": ["fw", "core"],
            "resolve": { "nodes": [
                { "id": "fw", "deps": [dep("core", None), dep("tempfile", Some("dev"))] },
                { "id": "core", "deps": [dep("rsip", None), dep("cc", Some("build"))] },
                { "id": "rsip", "deps": [dep("nom", None)] },
                { "id": "nom", "deps": [] },
                { "id": "tempfile", "deps": [] },
                { "id": "cc", "deps": [] },
            ]},
        }))
        .expect("json")
    }

    const LOCK: &str = r#"
version = 4

[[package]]
name = "nom"
version = "1.0.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
checksum = "abc123"

[[package]]
name = "rsip"
version = "1.0.0"
source = "registry+https://github.com/rust-lang/crates.io-index"
"#;

    #[test]
    fn the_closure_follows_normal_dependencies_only() {
        let crates = crates_from(&metadata(), LOCK, Some("Apache-2.0")).expect("closure");
        let names: Vec<&str> = crates.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["firmware", "nom", "pbx-core", "rsip"]);
        let fw = &crates[0];
        assert!(fw.workspace);
        assert_eq!(
            fw.license.as_deref(),
            Some("Apache-2.0"),
            "workspace licence"
        );
        assert_eq!(crates[1].checksum.as_deref(), Some("abc123"));
        assert_eq!(crates[3].license, None);
        assert_eq!(crates[3].license_file.as_deref(), Some("LICENSE"));
    }

    #[test]
    fn components_carry_licence_expressions_and_hashes() {
        let crates = crates_from(&metadata(), LOCK, Some("Apache-2.0")).expect("closure");
        let debs = [("busybox-static".to_owned(), "1:1.35.0-4".to_owned())];
        let doc = sbom(&crates, &debs);
        assert_eq!(doc["specVersion"], "1.5");
        let comps = doc["components"].as_array().expect("array");
        let by = |purl: &str| {
            comps
                .iter()
                .find(|c| c["purl"] == purl)
                .unwrap_or_else(|| panic!("{purl} in {comps:?}"))
        };
        let nom = by("pkg:cargo/nom@1.0.0");
        assert_eq!(nom["licenses"][0]["expression"], "MIT OR Apache-2.0");
        assert_eq!(nom["hashes"][0]["content"], "abc123");
        assert_eq!(
            by("pkg:cargo/pbx-core@1.0.0")["licenses"][0]["expression"],
            "Apache-2.0"
        );
        assert!(by("pkg:cargo/rsip@1.0.0")["licenses"][0]["license"]["name"]
            .as_str()
            .expect("name")
            .contains("LICENSE"));
        assert_eq!(
            by("pkg:deb/debian/busybox-static@1:1.35.0-4?arch=arm64")["version"],
            "1:1.35.0-4"
        );
        assert_eq!(comps.len(), 5);
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(crates_from(b"{}", LOCK, None).is_err());
        assert!(crates_from(&metadata(), "[[package]]\nname = 3", None).is_err());
    }

    #[test]
    fn the_real_workspace_closure_has_the_firmware_and_no_test_tools() {
        let ws = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("workspace");
        let crates = firmware_crates(ws).expect("cargo metadata");
        let has = |n: &str| crates.iter().any(|c| c.name == n);
        assert!(has("firmware") && has("pbx-core") && has("rsip"));
        assert!(
            !has("outpost-image"),
            "the host tool is not in the firmware"
        );
        assert!(!has("tempfile"), "a dev-dependency is not linked in");
        assert!(crates.iter().all(|c| c.workspace || c.checksum.is_some()));
    }
}
