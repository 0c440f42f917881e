//! Kernel modules: which files a set of module names needs (dependencies read from each
//! module's `.modinfo`), in load order, and the `modules.dep`/`modules.alias` that busybox
//! `modprobe` reads.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::elf;

/// Why the module set could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    /// Reading the module tree failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A module file is not a valid ELF object.
    #[error("{0} is not a kernel module")]
    Malformed(PathBuf),
}

/// The modules of one kernel release, by name (`-` normalised to `_`).
#[derive(Debug)]
pub struct ModuleTree {
    /// `lib/modules/<release>` of the unpacked kernel package.
    pub dir: PathBuf,
    files: BTreeMap<String, String>,
    builtin: BTreeSet<String>,
}

/// One selected module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Normalised name.
    pub name: String,
    /// Path relative to `lib/modules/<release>`.
    pub path: String,
    /// Normalised names of its direct dependencies.
    pub depends: Vec<String>,
    /// Its aliases.
    pub aliases: Vec<String>,
}

fn norm(name: &str) -> String {
    name.replace('-', "_")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KmodError + '_ {
    move |source| KmodError::Io {
        path: path.to_owned(),
        source,
    }
}

impl ModuleTree {
    /// Indexes every `.ko` under `dir/kernel` and the names in `modules.builtin`.
    pub fn open(dir: &Path) -> Result<Self, KmodError> {
        let mut files = BTreeMap::new();
        let mut stack = vec![dir.join("kernel")];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).map_err(io(&d))? {
                let entry = entry.map_err(io(&d))?;
                let path = entry.path();
                if entry.file_type().map_err(io(&path))?.is_dir() {
                    stack.push(path);
                } else if let Some(stem) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".ko"))
                {
                    let rel = path
                        .strip_prefix(dir)
                        .map_err(|_| KmodError::Malformed(path.clone()))?
                        .to_string_lossy()
                        .into_owned();
                    files.insert(norm(stem), rel);
                }
            }
        }
        let builtin_path = dir.join("modules.builtin");
        let builtin = std::fs::read_to_string(&builtin_path)
            .map_err(io(&builtin_path))?
            .lines()
            .filter_map(|l| l.rsplit('/').next()?.strip_suffix(".ko").map(norm))
            .collect();
        Ok(ModuleTree {
            dir: dir.to_owned(),
            files,
            builtin,
        })
    }

    /// `wanted` and everything they depend on, dependencies first. Built-in names are
    /// skipped; names neither built in nor present are returned as missing.
    pub fn resolve(&self, wanted: &[&str]) -> Result<(Vec<Module>, Vec<String>), KmodError> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        let mut missing = Vec::new();
        for name in wanted {
            self.visit(&norm(name), &mut done, &mut order, &mut missing, 0)?;
        }
        Ok((order, missing))
    }

    fn visit(
        &self,
        name: &str,
        done: &mut BTreeSet<String>,
        order: &mut Vec<Module>,
        missing: &mut Vec<String>,
        depth: usize,
    ) -> Result<(), KmodError> {
        if depth > 64 || !done.insert(name.to_owned()) || self.builtin.contains(name) {
            return Ok(());
        }
        let Some(rel) = self.files.get(name) else {
            missing.push(name.to_owned());
            return Ok(());
        };
        let path = self.dir.join(rel);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        let info = elf::modinfo(&bytes).map_err(|_| KmodError::Malformed(path.clone()))?;
        let depends: Vec<String> = info
            .iter()
            .filter(|(k, _)| k == "depends")
            .flat_map(|(_, v)| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(norm)
                    .collect::<Vec<_>>()
            })
            .collect();
        // Soft dependencies that the module needs to work (ext4 -> crc32c).
        let pre: Vec<String> = info
            .iter()
            .filter(|(k, _)| k == "softdep")
            .flat_map(|(_, v)| {
                v.split_whitespace()
                    .skip_while(|w| *w != "pre:")
                    .skip(1)
                    .take_while(|w| !w.ends_with(':'))
                    .map(norm)
                    .collect::<Vec<_>>()
            })
            .collect();
        for dep in &depends {
            self.visit(dep, done, order, missing, depth + 1)?;
        }
        // A soft dependency may name an alias (crc32c); only real module names are followed.
        for dep in pre.iter().filter(|d| self.files.contains_key(*d)) {
            self.visit(dep, done, order, missing, depth + 1)?;
        }
        order.push(Module {
            name: name.to_owned(),
            path: rel.clone(),
            depends,
            aliases: info
                .iter()
                .filter(|(k, _)| k == "alias")
                .map(|(_, v)| v.clone())
                .collect(),
        });
        Ok(())
    }
}

/// `modules.dep` text: each module with its transitive dependencies (the last is loaded
/// first, as kmod writes it).
pub fn modules_dep(mods: &[Module]) -> String {
    let by_name: BTreeMap<&str, &Module> = mods.iter().map(|m| (m.name.as_str(), m)).collect();
    let mut out = String::new();
    for m in mods {
        let mut deps = Vec::new();
        let mut stack: Vec<&str> = m.depends.iter().map(String::as_str).collect();
        let mut seen = BTreeSet::new();
        while let Some(d) = stack.pop() {
            if let Some(dm) = by_name.get(d) {
                if seen.insert(d) {
                    deps.push(dm.path.as_str());
                    stack.extend(dm.depends.iter().map(String::as_str));
                }
            }
        }
        out.push_str(&format!("{}:", m.path));
        for d in deps {
            out.push(' ');
            out.push_str(d);
        }
        out.push('\n');
    }
    out
}

/// `modules.alias` text.
pub fn modules_alias(mods: &[Module]) -> String {
    let mut lines: Vec<String> = mods
        .iter()
        .flat_map(|m| {
            m.aliases
                .iter()
                .map(move |a| format!("alias {a} {}", m.name))
        })
        .collect();
    lines.sort();
    lines.into_iter().map(|l| l + "\n").collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(name: &str, path: &str, depends: &[&str]) -> Module {
        Module {
            name: name.to_owned(),
            path: path.to_owned(),
            depends: depends.iter().map(|s| (*s).to_owned()).collect(),
            aliases: vec![format!("fs-{name}")],
        }
    }

    #[test]
    fn modules_dep_lists_transitive_dependencies() {
        let mods = [
            module("crc16", "kernel/lib/crc16.ko", &[]),
            module("jbd2", "kernel/fs/jbd2/jbd2.ko", &[]),
            module("mbcache", "kernel/fs/mbcache.ko", &["crc16"]),
            module("ext4", "kernel/fs/ext4/ext4.ko", &["jbd2", "mbcache"]),
        ];
        let dep = modules_dep(&mods);
        let ext4 = dep
            .lines()
            .find(|l| l.starts_with("kernel/fs/ext4"))
            .expect("ext4 line");
        assert!(ext4.contains("kernel/fs/jbd2/jbd2.ko"));
        assert!(ext4.contains("kernel/lib/crc16.ko"));
        assert!(dep.starts_with("kernel/lib/crc16.ko:\n"));
        assert!(modules_alias(&mods).contains("alias fs-ext4 ext4\n"));
    }

    #[test]
    fn names_are_normalised() {
        assert_eq!(norm("i2c-dev"), "i2c_dev");
    }
}
