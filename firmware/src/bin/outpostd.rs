//! `outpostd`: the Outpost daemon.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use firmware::config::Config;
use firmware::daemon;

/// mimalloc (without transparent huge pages), not the C library's malloc: the firmware is a
/// static musl build, and with musl's allocator it needed ~1.45x the CPU per REGISTER that
/// it needs with mimalloc, and reached half the REGISTER rate (bench/README.md,
/// "Allocator"). Huge pages are off (`no_thp`): with them mimalloc's idle RSS doubled.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Outpost IP-PBX daemon.
#[derive(Debug, Parser)]
#[command(name = "outpostd", version, about)]
struct Args {
    /// Configuration file (TOML). Without it: /etc/outpost/outpost.toml if present, else the
    /// embedded demo configuration (loopback, demo extensions).
    #[arg(long, short = 'c')]
    config: Option<PathBuf>,
    /// Use the embedded demo configuration even if /etc/outpost/outpost.toml exists.
    #[arg(long, conflicts_with = "config")]
    demo: bool,
    /// The configuration file is only the factory default: it becomes revision 1 when the
    /// data directory has no revision yet; afterwards the newest applied revision runs even
    /// when the file changed, and a file that does not load does not stop a configured box.
    #[arg(long)]
    config_default: bool,
    /// Override `store.data_dir`.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Check the configuration and exit.
    #[arg(long)]
    check: bool,
    /// Restore this backup into the data directory and exit (no daemon may be running;
    /// with a running one use `outpostctl backup restore`).
    #[arg(long, value_name = "FILE")]
    restore: Option<PathBuf>,
    /// With --restore: the age identity file of a backup encrypted to a recipient key.
    #[arg(
        long,
        value_name = "FILE",
        requires = "restore",
        conflicts_with = "passphrase_file"
    )]
    identity: Option<PathBuf>,
    /// With --restore: a file holding the passphrase (mode 0600) [default: `[backup]
    /// passphrase_file` of the configuration].
    #[arg(long, value_name = "FILE", requires = "restore")]
    passphrase_file: Option<PathBuf>,
    /// With --restore: also trust this backup-signing key (`outpost-backup-ed25519
    /// <base64>`, from `outpostctl backup key` on the box that made the backup).
    #[arg(long, value_name = "KEYLINE", requires = "restore")]
    signer: Option<String>,
    /// With --restore: accept a backup no trusted key signed (with a warning and an alert).
    #[arg(long, requires = "restore")]
    trust_unsigned: bool,
    /// What the image fixes and `config apply` cannot change (see firmware::fixed).
    #[command(flatten)]
    fixed: FixedArgs,
}

/// The settings the image fixes at start: the programs the daemon runs, who may use the
/// admin socket, how dropbear runs (command line only: `image/files/run-outpostd`).
#[derive(Debug, clap::Args)]
struct FixedArgs {
    /// The `nft` program (a name looked up in PATH, or a path).
    #[arg(long, default_value = "nft")]
    nft: String,
    /// The dropbear server, when the daemon runs it itself.
    #[arg(long, default_value = "/usr/sbin/dropbear")]
    dropbear: PathBuf,
    /// The dropbearkey program that makes the SSH host key.
    #[arg(long, default_value = "/usr/bin/dropbearkey")]
    dropbearkey: PathBuf,
    /// The outpostctl the SSH forced command runs [default: the one beside outpostd, else
    /// /usr/bin/outpostctl].
    #[arg(long)]
    outpostctl: Option<PathBuf>,
    /// Members of this group may use the admin socket (mode 0660, this group).
    #[arg(long)]
    admin_group: Option<String>,
    /// Init runs dropbear: publish its listen addresses in DIR/listen and read its log from
    /// the FIFO DIR/log instead of starting it (needs --authorized-keys-fd).
    #[arg(long, value_name = "DIR", requires = "authorized_keys_fd")]
    ssh_run_dir: Option<PathBuf>,
    /// The descriptor init opened read-write on the admin's authorized_keys.
    #[arg(long, value_name = "FD", requires = "ssh_run_dir")]
    authorized_keys_fd: Option<i32>,
    /// Own the system clock: step and slew it from `[time] servers` (needs
    /// CAP_SYS_TIME); without it the NTP client only watches.
    #[arg(long)]
    set_clock: bool,
    /// Read the image's own files (release, boot state, SBOM) under DIR instead of / (for
    /// tests; they are only read, for `system` and `sbom_read`).
    #[arg(long, value_name = "DIR", default_value = "/")]
    system_root: PathBuf,
    /// Where bundles uploaded through the web page wait for the installer agent
    /// [default: <data_dir>/update-spool].
    #[arg(long, value_name = "DIR")]
    update_spool: Option<PathBuf>,
}

impl FixedArgs {
    fn settings(self) -> anyhow::Result<firmware::fixed::FixedSettings> {
        use firmware::fixed::{FixedSettings, SshRunner};
        let ssh = match (self.ssh_run_dir, self.authorized_keys_fd) {
            (Some(dir), Some(fd)) => SshRunner::Init {
                dir,
                keys: std::sync::Arc::new(inherited_file(fd)?),
            },
            _ => SshRunner::Daemon,
        };
        let settings = FixedSettings {
            nft: self.nft,
            dropbear: self.dropbear,
            dropbearkey: self.dropbearkey,
            outpostctl: self.outpostctl,
            admin_group: self.admin_group,
            ssh,
            set_clock: self.set_clock,
            system_root: self.system_root,
            update_spool: self.update_spool,
        };
        settings.check()?;
        Ok(settings)
    }
}

/// Takes over descriptor `fd`, opened by init for this process (read-write on a regular
/// file); it is closed on exec, so no program the daemon runs inherits it.
fn inherited_file(fd: i32) -> anyhow::Result<std::fs::File> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
    use std::os::fd::FromRawFd;
    anyhow::ensure!(
        fd > 2,
        "--authorized-keys-fd {fd}: must be an inherited descriptor (3 or above)"
    );
    // Only a descriptor that is open, and not one of ours: nothing has been opened yet.
    let flags = nix::fcntl::fcntl(
        // SAFETY: borrowed for this one call; fcntl(F_GETFL) on a closed descriptor fails
        // with EBADF and touches nothing.
        #[allow(unsafe_code)]
        unsafe {
            std::os::fd::BorrowedFd::borrow_raw(fd)
        },
        FcntlArg::F_GETFL,
    )
    .with_context(|| format!("--authorized-keys-fd {fd}: not an open descriptor"))?;
    let mode = OFlag::from_bits_truncate(flags) & OFlag::O_ACCMODE;
    anyhow::ensure!(
        mode == OFlag::O_RDWR || mode == OFlag::O_WRONLY,
        "--authorized-keys-fd {fd}: not open for writing"
    );
    // SAFETY: the descriptor is open (checked above), was inherited from init for this
    // purpose, and nothing else in this process refers to it: the File becomes its only
    // owner.
    #[allow(unsafe_code)]
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    fcntl(&file, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
        .with_context(|| format!("--authorized-keys-fd {fd}: cannot set close-on-exec"))?;
    let meta = file
        .metadata()
        .with_context(|| format!("--authorized-keys-fd {fd}"))?;
    anyhow::ensure!(
        meta.is_file(),
        "--authorized-keys-fd {fd}: not a regular file"
    );
    Ok(file)
}

fn main() -> std::process::ExitCode {
    // Everything the daemon writes (the store, configuration revisions holding trunk
    // passwords, keys, voicemail, backups) and every program it starts is private to its
    // user, whatever umask it was started with.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let mut args = Args::parse();
    let fixed = std::mem::replace(
        &mut args.fixed,
        FixedArgs {
            nft: String::new(),
            dropbear: PathBuf::new(),
            dropbearkey: PathBuf::new(),
            outpostctl: None,
            admin_group: None,
            ssh_run_dir: None,
            authorized_keys_fd: None,
            set_clock: false,
            system_root: PathBuf::new(),
            update_spool: None,
        },
    );
    match fixed.settings() {
        Ok(settings) => {
            firmware::fixed::set(settings);
        }
        Err(err) => {
            eprintln!("outpostd: {err:#}");
            return std::process::ExitCode::FAILURE;
        }
    }
    match run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("outpostd: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let load = |path: &std::path::Path| -> anyhow::Result<(Config, String, String)> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let shown = path.display().to_string();
        Ok((Config::parse_named(&text, &shown)?, text, shown))
    };
    let demo = || {
        (
            Config::demo(),
            Config::demo_text().to_string(),
            "embedded demo configuration".to_string(),
        )
    };
    let boot_path = match (&args.config, args.demo) {
        (Some(path), _) => Some(path.clone()),
        (None, false) => daemon::default_config_path(),
        (None, true) => None,
    };
    let loaded = match &boot_path {
        Some(path) => load(path),
        None => Ok(demo()),
    };
    // Logged once logging is set up.
    let mut boot_error = None;
    let (mut cfg, text, source) = match loaded {
        Ok(boot) => boot,
        Err(err) if args.config_default && !args.check => {
            let raw = boot_path
                .as_deref()
                .and_then(|p| std::fs::read_to_string(p).ok());
            let boot =
                daemon::newest_revision_instead(raw.as_deref(), &err, args.data_dir.as_deref())?;
            boot_error = Some(err);
            boot
        }
        Err(err) => return Err(err),
    };
    if let Some(dir) = args.data_dir {
        cfg.store.data_dir = dir;
    }
    cfg.validate()?;
    if args.check {
        println!("configuration OK ({source})");
        return Ok(());
    }
    if let Some(file) = &args.restore {
        use firmware::backup::crypto::{read_identity_file, read_passphrase_file, Decryption};
        let key = match (&args.identity, &args.passphrase_file) {
            (Some(id), _) => read_identity_file(id)?,
            (None, Some(p)) => Decryption::Passphrase(read_passphrase_file(p)?),
            (None, None) => {
                let kind = firmware::backup::crypto::header_kind(file).map_err(|e| {
                    anyhow::anyhow!("{}: not an encrypted Outpost backup ({e})", file.display())
                })?;
                cfg.backup.own_decryption(&cfg.store.data_dir, kind)?
            }
        };
        if args.trust_unsigned {
            eprintln!(
                "outpostd: warning: --trust-unsigned: a backup no trusted key signed is restored"
            );
        }
        let policy = cfg.backup.policy(
            &cfg.store.data_dir,
            args.signer.as_deref(),
            args.trust_unsigned,
        )?;
        let c = firmware::backup::restore_offline(
            &cfg.store.data_dir,
            &cfg.ssh.host_key_path(&cfg.store.data_dir),
            &text,
            file,
            &key,
            &policy,
        )
        .with_context(|| format!("cannot restore {}", file.display()))?;
        println!(
            "restored the backup of {} made {} (format {}): {} extensions, {} call records, {} voicemail messages, {} configuration revisions, {} desk phones",
            c.hostname,
            firmware::backup::schedule::rfc3339(c.created_ms),
            c.format,
            c.extensions,
            c.cdrs,
            c.voicemail,
            c.config_revisions,
            c.phones
        );
        return Ok(());
    }
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.log.level))
        .context("bad log level")?;
    let logs = init_logging(&cfg, filter)?;
    if let Some(err) = boot_error {
        tracing::error!(
            "the factory default configuration does not load ({err:#}); running the {source}"
        );
    }
    tracing::info!("configuration: {source}");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(daemon::run(cfg, text, source, args.config_default));
    // The persistent log's last lines ("outpostd stopped") reach the disk before exit.
    logs.drain(std::time::Duration::from_secs(2));
    result
}

/// stderr (text or JSON lines), the persistent log and the remote collectors
/// (`firmware::log`), plus the system log when `log.syslog` is set.
fn init_logging(
    cfg: &firmware::config::Config,
    filter: tracing_subscriber::EnvFilter,
) -> anyhow::Result<std::sync::Arc<firmware::log::Pipeline>> {
    let log = &cfg.log;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let json = log.format == "json";
    let stderr = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .boxed()
    };
    let syslog = match &log.syslog {
        Some(path) => {
            let writer = firmware::syslog::Syslog::new(path, "outpostd")
                .with_context(|| format!("cannot use the syslog socket {}", path.display()))?;
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(false)
                    .without_time()
                    .boxed(),
            )
        }
        None => None,
    };
    let (pipeline, errors) = firmware::log::Pipeline::start(
        log.persist.then(|| firmware::log::dir(&cfg.store.data_dir)),
        log.file_kib.saturating_mul(1024),
        log.files,
        &log.remote,
    );
    let pipeline = pipeline.install();
    let layer = pipeline.layer(firmware::system::hostname(&cfg.system));
    tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(syslog)
        .with(layer)
        .init();
    for err in errors {
        tracing::error!("{err}; running without it");
    }
    Ok(pipeline)
}
