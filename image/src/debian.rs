//! Debian arm64 packages: the version apt offers now (never a hard-coded one), fetched with
//! `apt-get download` into a cache directory and unpacked with `dpkg-deb -x`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why a package step failed.
#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    /// A tool could not run or failed.
    #[error("{tool} failed: {detail}")]
    Tool {
        /// The command.
        tool: String,
        /// Its error output or the spawn error.
        detail: String,
    },
    /// apt knows no such arm64 package (the arm64 lists are missing?).
    #[error(
        "apt has no arm64 package {0} (run `dpkg --add-architecture arm64 && apt-get update`)"
    )]
    Unknown(String),
}

/// Debian architecture of the appliance.
pub const ARCH: &str = "arm64";

/// A downloaded package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Exact version.
    pub version: String,
    /// The .deb in the cache.
    pub deb: PathBuf,
    /// Direct dependencies (first alternative of Depends and Pre-Depends, names only).
    pub depends: Vec<String>,
}

/// Runs a command and returns its standard output.
pub fn run(cmd: &mut Command) -> Result<Vec<u8>, DebianError> {
    let tool = format!("{cmd:?}");
    let out = cmd.output().map_err(|e| DebianError::Tool {
        tool: tool.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(DebianError::Tool {
            tool,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out.stdout)
}

/// The candidate version and dependencies of an arm64 package, from `apt-cache show`.
fn show(name: &str) -> Result<(String, Vec<String>), DebianError> {
    let out = run(Command::new("apt-cache")
        .args(["show", "--no-all-versions"])
        .arg(format!("{name}:{ARCH}")))
    .map_err(|_| DebianError::Unknown(name.to_owned()))?;
    let text = String::from_utf8_lossy(&out);
    let fields = parse_stanza(&text);
    let version = fields
        .get("Version")
        .cloned()
        .ok_or_else(|| DebianError::Unknown(name.to_owned()))?;
    let mut depends = Vec::new();
    for key in ["Pre-Depends", "Depends"] {
        if let Some(v) = fields.get(key) {
            depends.extend(parse_depends(v));
        }
    }
    Ok((version, depends))
}

/// The fields of the first stanza of a Debian control text.
fn parse_stanza(text: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(": ") {
            if !line.starts_with(' ') {
                fields.insert(k.to_owned(), v.trim().to_owned());
            }
        }
    }
    fields
}

/// Package names of a Depends field: the first alternative, without version or arch.
fn parse_depends(field: &str) -> Vec<String> {
    field
        .split(',')
        .filter_map(|dep| {
            let first = dep.split('|').next()?.trim();
            let name = first.split([' ', '(', ':']).next()?.trim();
            (!name.is_empty()).then(|| name.to_owned())
        })
        .collect()
}

/// Downloads the candidate version of `name` into `cache` unless it is there already.
pub fn fetch(cache: &Path, name: &str) -> Result<Package, DebianError> {
    let (version, depends) = show(name)?;
    let file = format!("{name}_{}_{ARCH}.deb", version.replace(':', "%3a"));
    let deb = cache.join(&file);
    if !deb.exists() {
        eprintln!("outpost-image: apt-get download {name}:{ARCH}={version}");
        run(Command::new("apt-get")
            .current_dir(cache)
            .args(["download", "-q"])
            .arg(format!("{name}:{ARCH}={version}")))?;
        if !deb.exists() {
            return Err(DebianError::Tool {
                tool: "apt-get download".to_owned(),
                detail: format!("{file} did not appear in {}", cache.display()),
            });
        }
    }
    Ok(Package {
        name: name.to_owned(),
        version,
        deb,
        depends,
    })
}

/// `roots` and their library dependencies (packages named lib*, zlib*), fetched.
pub fn fetch_with_libraries(cache: &Path, roots: &[&str]) -> Result<Vec<Package>, DebianError> {
    let mut seen: BTreeSet<String> = roots.iter().map(|s| (*s).to_owned()).collect();
    let mut queue: VecDeque<String> = seen.iter().cloned().collect();
    let mut out = Vec::new();
    while let Some(name) = queue.pop_front() {
        let pkg = fetch(cache, &name)?;
        for dep in &pkg.depends {
            let library = dep.starts_with("lib") || dep.starts_with("zlib");
            if library && seen.insert(dep.clone()) {
                queue.push_back(dep.clone());
            }
        }
        out.push(pkg);
    }
    Ok(out)
}

/// Unpacks a package into `dir`.
pub fn extract(pkg: &Package, dir: &Path) -> Result<(), DebianError> {
    std::fs::create_dir_all(dir).map_err(|e| DebianError::Tool {
        tool: "mkdir".to_owned(),
        detail: format!("{}: {e}", dir.display()),
    })?;
    run(Command::new("dpkg-deb").arg("-x").arg(&pkg.deb).arg(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_keep_the_first_alternative_without_versions() {
        assert_eq!(
            parse_depends("libc6 (>= 2.34), libedit2 (>= 3.1) | libfoo, libgcc-s1:any"),
            ["libc6", "libedit2", "libgcc-s1"]
        );
    }

    #[test]
    fn stanza_fields_come_from_the_first_stanza_only() {
        let f = parse_stanza(
            "Package: nftables\nVersion: 1.0.6-2\nDescription: x\n more\n\nVersion: 9\n",
        );
        assert_eq!(f["Version"], "1.0.6-2");
        assert_eq!(f["Package"], "nftables");
    }
}
