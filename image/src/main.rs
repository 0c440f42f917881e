//! `outpost-image`: host tool for Outpost firmware images.
//!
//! `build` assembles the A/B disk image for a board from our static aarch64 binaries and
//! Debian arm64 parts (see `build.rs`); `bundle` signs an image's root filesystem as an
//! update bundle; `keygen` makes an update key pair; `sbom` writes the CycloneDX SBOM of the
//! crates linked into the firmware; `licences` checks their licences against
//! image/licences.toml.

mod build;
mod bundle;
mod config;
mod cpio;
mod debian;
mod elf;
mod fat;
mod gpt;
mod keys;
mod kmod;
mod licences;
mod sbom;

use std::io::Write;
use std::path::{Path, PathBuf};

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
    /// Writes a CycloneDX 1.5 SBOM of the crates linked into the firmware (cargo metadata).
    Sbom {
        /// The workspace root.
        #[arg(long, default_value = ".")]
        workspace: PathBuf,
        /// Output file (`-` for stdout).
        #[arg(long, short, default_value = "-")]
        out: PathBuf,
    },
    /// Checks the licences of the crates linked into the firmware against
    /// image/licences.toml and prints licence -> crate count.
    Licences {
        /// The workspace root.
        #[arg(long, default_value = ".")]
        workspace: PathBuf,
    },
    /// Generates an update signing key pair: PREFIX.key (secret, mode 0600) and PREFIX.pub.
    Keygen {
        /// Path prefix of the two files.
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
        /// Comment on the key lines.
        #[arg(long, default_value = "outpost update key")]
        comment: String,
    },
    /// Signs an image's root filesystem as an update bundle.
    Bundle {
        /// The image directory (manifest.json, root.squashfs).
        #[arg(long, default_value = "target/image")]
        image: PathBuf,
        /// The secret update key file.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The bundle file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Builds the firmware image: disk.img (GPT: [rpi4: Pi firmware FAT,] boot data, root A,
    /// root B, data), vmlinuz, initramfs.cpio.gz, root.squashfs, sbom.json and manifest.json
    /// in the output directory.
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
        /// TOML merged into the appliance configuration (test images: `[demo]`, `[auth]`).
        #[arg(long, value_name = "FILE")]
        config_extra: Option<PathBuf>,
        /// Use the aarch64 binaries already in target/ instead of running cargo build.
        #[arg(long)]
        no_cargo: bool,
        /// A public update key the image trusts (repeatable); none: the development key.
        #[arg(long = "update-key", value_name = "FILE")]
        update_keys: Vec<PathBuf>,
        /// An authorized_keys file for the admin account (repeatable).
        #[arg(long = "ssh-key", value_name = "FILE")]
        ssh_keys: Vec<PathBuf>,
        /// Seconds a newly installed slot has to pass its health check.
        #[arg(long, value_name = "SECS", default_value_t = 90)]
        health_timeout: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Cmd::Sbom { workspace, out } => {
            let crates = sbom::firmware_crates(&workspace)?;
            let json = serde_json::to_string_pretty(&sbom::sbom(&crates, &[]))?;
            if out.as_os_str() == "-" {
                print_stdout(&format!("{json}\n"))?;
            } else {
                std::fs::write(&out, json + "\n")
                    .with_context(|| format!("cannot write {}", out.display()))?;
            }
        }
        Cmd::Licences { workspace } => {
            let (crates, report) = build::checked_crates(&workspace)?;
            print_stdout(&licences::table(&report))?;
            print_stdout(&format!(
                "{} crates linked into the firmware: every licence is allowed by {}\n",
                crates.len(),
                build::LICENCE_POLICY
            ))?;
        }
        Cmd::Keygen { out, comment } => {
            let pair = keys::keygen(&out, &comment)?;
            println!(
                "key {}: secret {} (keep it off the box), public {}",
                pair.id,
                pair.secret.display(),
                pair.public.display()
            );
        }
        Cmd::Bundle { image, key, out } => {
            let w = bundle::make_bundle(&image, &key, &out)?;
            println!(
                "{}: release {} for {} (kernel {}), signed by key {}, {} bytes",
                out.display(),
                w.release,
                w.profile,
                w.kernel,
                w.key_id,
                w.bytes
            );
        }
        Cmd::Build {
            out,
            profile,
            workspace,
            config_extra,
            no_cargo,
            update_keys,
            ssh_keys,
            health_timeout,
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
                update_keys,
                ssh_keys,
                health_timeout,
            };
            build::build(&opts)?;
        }
    }
    Ok(())
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// The time of the last commit (the usual SOURCE_DATE_EPOCH when none is set).
fn last_commit_time(workspace: &Path) -> Option<u64> {
    let out = std::process::Command::new("git")
        .current_dir(workspace)
        .args(["log", "-1", "--format=%ct"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}
