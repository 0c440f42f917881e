//! `outpostd`: the Outpost daemon.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use firmware::config::Config;
use firmware::daemon;

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
}

fn main() -> std::process::ExitCode {
    // Everything the daemon writes (the store, configuration revisions holding trunk
    // passwords, keys, voicemail, backups) and every program it starts is private to its
    // user, whatever umask it was started with.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let args = Args::parse();
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
        let c = firmware::backup::restore_offline(
            &cfg.store.data_dir,
            &cfg.ssh.host_key_path(&cfg.store.data_dir),
            &text,
            file,
            &key,
        )
        .with_context(|| format!("cannot restore {}", file.display()))?;
        println!(
            "restored the backup of {} made {} (format {}): {} extensions, {} call records, {} voicemail messages, {} configuration revisions",
            c.hostname,
            firmware::backup::schedule::rfc3339(c.created_ms),
            c.format,
            c.extensions,
            c.cdrs,
            c.voicemail,
            c.config_revisions
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
