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
fn show(apt: &Apt, name: &str) -> Result<(String, Vec<String>), DebianError> {
    let out = run(Command::new("apt-cache")
        .args(&apt.options)
        .args(["show", "--no-all-versions"])
        .arg(apt.spec(name)))
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

/// How apt is run: the host's configuration, or a private one with other components.
#[derive(Debug, Clone, Default)]
pub struct Apt {
    /// `-o` options of every apt command.
    options: Vec<String>,
    /// Whether the private configuration has arm64 as its native architecture (then
    /// names need no `:arm64`, and `Architecture: all` packages are found too).
    native_arm64: bool,
}

impl Apt {
    /// The host's apt (arm64 as a foreign architecture).
    pub fn host() -> Apt {
        Apt::default()
    }

    /// A private apt configuration under `dir` for `components` of the host's Debian
    /// release (e.g. `non-free-firmware`, which the host's sources lack): its own
    /// sources.list, lists and cache, updated when the lists are missing or a day old.
    pub fn private(dir: &Path, components: &[&str]) -> Result<Apt, DebianError> {
        // Absolute: downloads run in the package cache directory.
        let dir = &std::path::absolute(dir).map_err(|e| DebianError::Tool {
            tool: "apt configuration".to_owned(),
            detail: format!("{}: {e}", dir.display()),
        })?;
        let io = |e: std::io::Error| DebianError::Tool {
            tool: "apt configuration".to_owned(),
            detail: format!("{}: {e}", dir.display()),
        };
        let lists = dir.join("lists");
        let cache = dir.join("cache");
        for d in [lists.join("partial"), cache.join("archives/partial")] {
            std::fs::create_dir_all(&d).map_err(io)?;
        }
        let sources = dir.join("sources.list");
        let line = format!(
            "deb [arch={ARCH}] http://deb.debian.org/debian {} {}\n",
            host_codename(),
            components.join(" ")
        );
        let changed = std::fs::read_to_string(&sources).ok().as_deref() != Some(line.as_str());
        if changed {
            std::fs::write(&sources, &line).map_err(io)?;
        }
        let opt = |k: &str, v: &Path| format!("-o{k}={}", v.display());
        let apt = Apt {
            options: vec![
                opt("Dir::Etc::SourceList", &sources),
                "-oDir::Etc::SourceParts=/dev/null".to_owned(),
                opt("Dir::State::Lists", &lists),
                opt("Dir::Cache", &cache),
                "-oDir::State::status=/dev/null".to_owned(),
                format!("-oAPT::Architecture={ARCH}"),
                format!("-oAPT::Architectures={ARCH}"),
                "-oAcquire::Languages=none".to_owned(),
            ],
            native_arm64: true,
        };
        let fresh = std::fs::read_dir(&lists)
            .map_err(io)?
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains("_Packages"))
            .filter_map(|e| e.metadata().ok()?.modified().ok())
            .any(|t| t.elapsed().is_ok_and(|age| age.as_secs() < 24 * 3600));
        if changed || !fresh {
            eprintln!("outpost-image: apt-get update ({})", line.trim());
            run(Command::new("apt-get")
                .args(&apt.options)
                .args(["update", "-q"]))?;
        }
        Ok(apt)
    }

    fn spec(&self, name: &str) -> String {
        if self.native_arm64 {
            name.to_owned()
        } else {
            format!("{name}:{ARCH}")
        }
    }
}

/// The Debian release name of the host (`bookworm`), whose arm64 packages the image uses.
fn host_codename() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
                .map(|v| v.trim_matches('"').to_owned())
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "bookworm".to_owned())
}

/// Downloads the candidate version of `name` into `cache` unless it is there already.
pub fn fetch(cache: &Path, name: &str) -> Result<Package, DebianError> {
    fetch_with(&Apt::host(), cache, name)
}

/// [`fetch`] through a given apt configuration.
pub fn fetch_with(apt: &Apt, cache: &Path, name: &str) -> Result<Package, DebianError> {
    let (version, depends) = show(apt, name)?;
    let escaped = version.replace(':', "%3a");
    let find = || {
        [ARCH, "all"]
            .iter()
            .map(|arch| cache.join(format!("{name}_{escaped}_{arch}.deb")))
            .find(|p| p.exists())
    };
    let deb = match find() {
        Some(deb) => deb,
        None => {
            eprintln!("outpost-image: apt-get download {name}={version} ({ARCH})");
            run(Command::new("apt-get")
                .current_dir(cache)
                .args(&apt.options)
                .args(["download", "-q"])
                .arg(format!("{}={version}", apt.spec(name))))?;
            find().ok_or_else(|| DebianError::Tool {
                tool: "apt-get download".to_owned(),
                detail: format!(
                    "{name}_{escaped}_*.deb did not appear in {}",
                    cache.display()
                ),
            })?
        }
    };
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
