//! `outpost-image`: host tool for Outpost firmware images.
//!
//! `build` assembles the A/B disk image for a board from our static aarch64 binaries and
//! Debian arm64 parts (see `build.rs`); `sbom` writes the CycloneDX SBOM of a Cargo.lock.

mod build;
mod cpio;
mod debian;
mod elf;
mod gpt;
mod kmod;
mod sbom;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

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
    /// Builds the firmware image: disk.img (GPT: boot data, root A, root B, data), vmlinuz,
    /// initramfs.cpio.gz, root.squashfs, sbom.json and manifest.json in the output directory.
    Build {
        /// Output directory.
        #[arg(long, default_value = "target/image")]
        out: PathBuf,
        /// Board profile.
        #[arg(long, value_enum, default_value = "qemu-virt")]
        profile: build::Profile,
        /// The workspace root.
        #[arg(long, default_value = ".")]
        workspace: PathBuf,
        /// TOML appended to the appliance configuration (test images: `[demo]`, `[auth]`).
        #[arg(long, value_name = "FILE")]
        config_extra: Option<PathBuf>,
        /// Use the aarch64 binaries already in target/ instead of running cargo build.
        #[arg(long)]
        no_cargo: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Cmd::Sbom { lock, out } => {
            let text = std::fs::read_to_string(&lock)
                .with_context(|| format!("cannot read {}", lock.display()))?;
            let doc = sbom::sbom(&text, &[])
                .with_context(|| format!("{} is not a Cargo.lock", lock.display()))?;
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
        Cmd::Build {
            out,
            profile,
            workspace,
            config_extra,
            no_cargo,
        } => {
            let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
                Ok(v) => v
                    .trim()
                    .parse()
                    .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number"))?,
                Err(_) => last_commit_time(&workspace).unwrap_or(0),
            };
            let config_extra = config_extra
                .map(|p| {
                    std::fs::read_to_string(&p)
                        .with_context(|| format!("cannot read {}", p.display()))
                })
                .transpose()?;
            let opts = build::BuildOptions {
                workspace,
                out,
                profile,
                epoch,
                config_extra,
                cargo: !no_cargo,
            };
            build::build(&opts)?;
        }
    }
    Ok(())
}

/// The time of the last commit (the usual SOURCE_DATE_EPOCH when none is set).
fn last_commit_time(workspace: &std::path::Path) -> Option<u64> {
    let out = std::process::Command::new("git")
        .current_dir(workspace)
        .args(["log", "-1", "--format=%ct"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}
