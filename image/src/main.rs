//! `outpost-image`: host tool for Outpost firmware images.
//!
//! The disk image, rootfs and update bundles arrive with the image issue; what exists today
//! is the SBOM step every image will carry: the Rust crates compiled into the firmware,
//! read from `Cargo.lock`, as a CycloneDX 1.5 JSON document.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Deserialize;

/// Outpost image tool.
#[derive(Debug, Parser)]
#[command(name = "outpost-image", version, about)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Writes a CycloneDX 1.5 SBOM of the crates in a Cargo.lock.
    Sbom {
        /// The lock file to read.
        #[arg(long, default_value = "Cargo.lock")]
        lock: PathBuf,
        /// Output file (`-` for stdout).
        #[arg(long, short, default_value = "-")]
        out: PathBuf,
    },
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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Cmd::Sbom { lock, out } => {
            let text = std::fs::read_to_string(&lock)
                .with_context(|| format!("cannot read {}", lock.display()))?;
            let doc =
                sbom(&text).with_context(|| format!("{} is not a Cargo.lock", lock.display()))?;
            let json = serde_json::to_string_pretty(&doc)?;
            if out.as_os_str() == "-" {
                use std::io::Write;
                let mut stdout = std::io::stdout().lock();
                match writeln!(stdout, "{json}") {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                    other => other?,
                }
            } else {
                std::fs::write(&out, json + "\n")
                    .with_context(|| format!("cannot write {}", out.display()))?;
            }
        }
    }
    Ok(())
}

/// The CycloneDX document for a Cargo.lock's text. Workspace crates (no source) are the
/// firmware itself; every other package is a component with its registry checksum.
fn sbom(lock_text: &str) -> anyhow::Result<serde_json::Value> {
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
        let doc = sbom(lock).expect("valid lock");
        let comps = doc["components"].as_array().expect("array");
        assert_eq!(comps.len(), 1);
        assert_eq!(comps[0]["purl"], "pkg:cargo/rsip@0.4.0");
        assert_eq!(comps[0]["hashes"][0]["content"], "abc123");
        assert_eq!(doc["specVersion"], "1.5");
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(sbom("[[package]]\nname = 3").is_err());
    }
}
