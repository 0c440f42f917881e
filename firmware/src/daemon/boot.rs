//! Boot-time choices: which configuration revision runs (the boot file, the newest applied
//! revision, or the newest that still parses), and the alert for an update the boot loader
//! rolled back (read once from [`BOOT_INFO`], raised once per rollback).

use std::path::PathBuf;

use anyhow::Context;
use pbx_core::Millis;

use crate::config::Config;
use crate::store::Store;
use crate::update::bootenv::{BootEnv, LastOutcome, Outcome};

/// What the initramfs tells userland about this boot (a copy of boot.env, plus the slot).
pub const BOOT_INFO: &str = "/run/outpost-boot";
/// Meta key holding the box's digest realm once chosen.
const REALM_KEY: &str = "realm";
/// Meta key holding the `last=rolled-back ...` line already alerted.
const ROLLBACK_ALERTED_KEY: &str = "update_rollback_alerted";

/// The digest realm this box runs with: the configured one (`[sip] realm`) if set; else
/// the realm most stored extensions were made with (their HA1 digests only open that
/// realm, so a box upgraded from the fixed `outpost` default, or one a backup was restored
/// onto, keeps working with the phones' passwords); else the one chosen at an earlier
/// start; else a new one, `outpost-<16 hex digits>` from the system's random source, so
/// digests leaked from one box do not open another. The result is kept in the store.
pub(super) fn box_realm(configured: Option<&str>, store: &Store) -> anyhow::Result<String> {
    let realm = match configured {
        Some(r) => r.to_owned(),
        None => match extensions_realm(store)? {
            Some(r) => r,
            None => match store.meta_get(REALM_KEY)? {
                Some(r) if std::str::from_utf8(&r).is_ok_and(crate::names::valid_realm) => {
                    String::from_utf8_lossy(&r).into_owned()
                }
                _ => {
                    use rand::RngCore;
                    let mut id = [0u8; 8];
                    rand::rngs::OsRng.fill_bytes(&mut id);
                    format!("outpost-{}", hex::encode(id))
                }
            },
        },
    };
    if store.meta_get(REALM_KEY)?.as_deref() != Some(realm.as_bytes()) {
        store.meta_put(REALM_KEY, realm.as_bytes())?;
    }
    Ok(realm)
}

/// The realm most stored extensions were made with (the first of a tie, in extension
/// order), if any is a valid realm.
fn extensions_realm(store: &Store) -> anyhow::Result<Option<String>> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for rec in store.ext_list()? {
        match counts.iter_mut().find(|(r, _)| *r == rec.realm) {
            Some((_, n)) => *n += 1,
            None => counts.push((rec.realm, 1)),
        }
    }
    let mut best: Option<(String, usize)> = None;
    for (realm, n) in counts {
        if crate::names::valid_realm(&realm) && best.as_ref().is_none_or(|(_, m)| n > *m) {
            best = Some((realm, n));
        }
    }
    Ok(best.map(|(r, _)| r))
}

/// Chooses the configuration to run: the boot file as a new revision when there is no
/// revision yet or (unless `factory_default`) it changed since the last start, else the
/// newest applied revision (one still pending at start-up was never confirmed: it is rolled
/// back). A revision that no longer parses gives way to the boot file.
pub(super) fn select_revision(
    boot: Config,
    boot_text: &str,
    source: &str,
    now: Millis,
    factory_default: bool,
) -> anyhow::Result<(Config, crate::revisions::Revisions, String)> {
    use sha2::{Digest, Sha256};
    let data_dir = boot.store.data_dir.clone();
    let mut revs = crate::revisions::Revisions::open(&data_dir)?;
    let hash_path = data_dir.join("config").join("boot.sha256");
    let hash = hex::encode(Sha256::digest(boot_text.as_bytes()));
    let seen = std::fs::read_to_string(&hash_path).unwrap_or_default();
    let changed = seen.trim() != hash;
    if let (true, true, Some(r)) = (factory_default, changed, revs.current()) {
        // Not recorded as seen: started without the flag, the changed file would win.
        tracing::info!(
            rev = r.rev,
            "{source} differs from the factory default last applied; it is only the factory default (--config-default): the stored revisions win"
        );
    }
    if revs.current().is_none() || (changed && !factory_default) {
        let rev = revs.add(
            boot_text,
            now,
            &format!("boot configuration ({source})"),
            None,
        )?;
        std::fs::write(&hash_path, &hash)
            .with_context(|| format!("cannot write {}", hash_path.display()))?;
        tracing::info!(rev, "configuration revision {rev}: {source}");
        return Ok((boot, revs, boot_text.to_string()));
    }
    let mut current = revs.current().cloned();
    if let Some(r) = current.clone().filter(|r| r.confirm_by.is_some()) {
        if let Some(back) = revs.previous_applied(r.rev).map(|p| p.rev) {
            tracing::warn!(
                rev = r.rev,
                back,
                "revision {} was not confirmed before the restart: rolling back to {back}",
                r.rev
            );
            let text = revs.text(back)?;
            revs.add(
                &text,
                now,
                &format!("rollback to {back}: revision {} not confirmed", r.rev),
                None,
            )?;
            revs.mark_rolled_back(r.rev)?;
            current = revs.current().cloned();
        }
    }
    let Some(current) = current else {
        return Ok((boot, revs, boot_text.to_string()));
    };
    let text = revs.text(current.rev)?;
    match Config::parse_named(&text, &format!("revision {}", current.rev)) {
        Ok(mut cfg) => {
            cfg.store.data_dir = data_dir;
            tracing::info!(
                rev = current.rev,
                "running configuration revision {}",
                current.rev
            );
            Ok((cfg, revs, text))
        }
        Err(err) => {
            tracing::error!(
                "revision {} no longer parses ({err}); running the boot configuration",
                current.rev
            );
            Ok((boot, revs, boot_text.to_string()))
        }
    }
}

/// With `--config-default`, when the boot file cannot be used (`boot_error`): the newest
/// stored revision, so a broken factory default does not stop a configured box. The data
/// directory is `data_dir` if given, else the boot file's `store.data_dir` if that much of
/// it reads, else the default. Fails (naming both problems) when there is no revision or
/// it does not parse either. Returns the configuration, its text and where it came from.
pub fn newest_revision_instead(
    boot_text: Option<&str>,
    boot_error: &anyhow::Error,
    data_dir: Option<&std::path::Path>,
) -> anyhow::Result<(Config, String, String)> {
    let data_dir = data_dir
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| {
            boot_text
                .and_then(|t| toml::from_str::<toml::Table>(t).ok())
                .and_then(|t| {
                    let dir = t.get("store")?.get("data_dir")?.as_str()?.to_owned();
                    Some(PathBuf::from(dir))
                })
                .unwrap_or_else(|| crate::config::StoreConfig::default().data_dir)
        });
    let revs = crate::revisions::Revisions::open(&data_dir)
        .with_context(|| format!("{boot_error:#}; and no stored revision to run instead"))?;
    let Some(current) = revs.current() else {
        anyhow::bail!(
            "{boot_error:#}; and {} holds no configuration revision to run instead",
            data_dir.display()
        );
    };
    let rev = current.rev;
    let text = revs
        .text(rev)
        .with_context(|| format!("{boot_error:#}; and revision {rev} is unreadable"))?;
    let mut cfg = Config::parse_named(&text, &format!("revision {rev}"))
        .with_context(|| format!("{boot_error:#}; and revision {rev} does not parse either"))?;
    cfg.store.data_dir = data_dir;
    Ok((cfg, text, format!("stored configuration revision {rev}")))
}

/// The alert text of a rolled-back update (`last=rolled-back ...` of [`BOOT_INFO`]).
fn rollback_message(last: &LastOutcome) -> String {
    let mut msg = format!(
        "firmware update to {} (build {}) failed and was rolled back at {} (slot {} left)",
        last.release.version,
        last.release.build,
        crate::backup::schedule::rfc3339(last.time.saturating_mul(1000)),
        last.slot
    );
    if !last.reason.is_empty() {
        msg.push_str(": ");
        msg.push_str(&last.reason);
    }
    msg
}

/// The newest `last=` value of a boot info text when it reports a rollback.
fn rolled_back_line(boot_info: &str) -> Option<String> {
    BootEnv::parse(boot_info)
        .get("last")
        .filter(|v| v.starts_with(Outcome::RolledBack.as_str()))
        .map(str::to_owned)
}

/// Largest boot info file read.
const MAX_BOOT_INFO: u64 = 64 * 1024;

/// At start: when `boot_info` (normally [`BOOT_INFO`]) reports an update rolled back that
/// was not alerted before, logs an error and stores an alert (shown by `fw alerts`, lights
/// the panel's alert LED). A missing file (not booted from an image) is silent. Returns
/// whether an alert was raised.
pub(super) fn alert_failed_update(store: &Store, boot_info: &std::path::Path, now: Millis) -> bool {
    use std::io::Read;
    let mut text = String::new();
    match std::fs::File::open(boot_info) {
        Ok(f) => {
            if let Err(err) = f.take(MAX_BOOT_INFO).read_to_string(&mut text) {
                tracing::warn!(path = %boot_info.display(), %err, "cannot read the boot information");
                return false;
            }
        }
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return false,
        Err(err) => {
            tracing::warn!(path = %boot_info.display(), %err, "cannot read the boot information");
            return false;
        }
    }
    let Some(line) = rolled_back_line(&text) else {
        return false;
    };
    match store.meta_get(ROLLBACK_ALERTED_KEY) {
        Ok(Some(seen)) if seen == line.as_bytes() => return false,
        Ok(_) => {}
        Err(err) => {
            tracing::error!(%err, "cannot read which update rollback was alerted");
        }
    }
    let message = match LastOutcome::parse(&line) {
        Some(last) => rollback_message(&last),
        None => format!("a firmware update failed and was rolled back ({line})"),
    };
    tracing::error!("{message}");
    let alert = firewall::detect::Alert {
        at: now,
        rule: firewall::detect::Rule::Manual,
        addr: None,
        user: None,
        message,
        enforced: true,
    };
    if let Err(err) = store.fw_apply(&[crate::store::FirewallChange::Alert(alert)]) {
        tracing::error!(%err, "cannot store the update alert");
        return false;
    }
    if let Err(err) = store.meta_put(ROLLBACK_ALERTED_KEY, line.as_bytes()) {
        tracing::error!(%err, "cannot record the update alert");
    }
    true
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use super::*;

    fn ext(store: &Store, ext: &str, realm: &str) {
        store
            .ext_put(&crate::store::ExtensionRecord {
                ext: ext.to_owned(),
                name: None,
                secret: pbx_core::sip::auth::StoredSecret::new(ext, realm, "correct horse"),
                realm: realm.to_owned(),
                created_ms: 0,
            })
            .unwrap();
    }

    #[test]
    fn each_new_box_makes_its_own_realm_and_keeps_it() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let realm_a = {
            let store = Store::open(a.path()).unwrap();
            box_realm(None, &store).unwrap()
        };
        let store_b = Store::open(b.path()).unwrap();
        let realm_b = box_realm(None, &store_b).unwrap();
        assert!(
            realm_a.starts_with("outpost-") && realm_a.len() == 24,
            "{realm_a}"
        );
        assert!(crate::names::valid_realm(&realm_a));
        assert_ne!(realm_a, realm_b, "two boxes share a realm");
        // The next start of box A finds the same realm, extensions or not.
        let store = Store::open(a.path()).unwrap();
        assert_eq!(box_realm(None, &store).unwrap(), realm_a);
        ext(&store, "100", &realm_a);
        assert_eq!(box_realm(None, &store).unwrap(), realm_a);
    }

    #[test]
    fn the_realm_of_the_stored_extensions_wins_over_a_new_one() {
        // A box upgraded from the fixed "outpost" default, or one a backup made elsewhere
        // was restored onto: its phones' digests only open the realm they were made with.
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let own = box_realm(None, &store).unwrap();
        ext(&store, "100", "outpost");
        ext(&store, "101", "outpost");
        ext(&store, "102", &own);
        assert_eq!(box_realm(None, &store).unwrap(), "outpost");
        // ... and is remembered when the extensions are gone.
        store.ext_del("100").unwrap();
        store.ext_del("101").unwrap();
        store.ext_del("102").unwrap();
        assert_eq!(box_realm(None, &store).unwrap(), "outpost");
    }

    #[test]
    fn a_configured_realm_is_used_as_given() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        ext(&store, "100", "outpost");
        assert_eq!(
            box_realm(Some("pbx.example"), &store).unwrap(),
            "pbx.example"
        );
    }

    const BOOT_INFO_TEXT: &str = "slot=a\nrelease_a=1.0.0 1700000000\nrelease_b=1.1.0 1700100000\nlast=rolled-back b 1.1.0 1700100000 1700200000 health check failed: sip not answering\nbooted=a\ntrial=0\n";

    #[test]
    fn rolled_back_lines_parse() {
        let line = rolled_back_line(BOOT_INFO_TEXT).unwrap();
        assert_eq!(
            line.as_str(),
            "rolled-back b 1.1.0 1700100000 1700200000 health check failed: sip not answering"
        );
        let r = LastOutcome::parse(&line).unwrap();
        assert_eq!(
            r,
            LastOutcome {
                outcome: Outcome::RolledBack,
                slot: crate::update::bootenv::Slot::B,
                release: outpost_bundle::Release {
                    version: "1.1.0".into(),
                    build: 1_700_100_000,
                },
                time: 1_700_200_000,
                reason: "health check failed: sip not answering".into(),
            }
        );
        assert_eq!(
            rollback_message(&r),
            "firmware update to 1.1.0 (build 1700100000) failed and was rolled back at 2023-11-17T05:46:40Z (slot b left): health check failed: sip not answering"
        );
        let bare = LastOutcome::parse("rolled-back a 2.0 5 6").unwrap();
        assert_eq!(bare.reason, "");
        assert!(!rollback_message(&bare).ends_with(": "));
        assert_eq!(LastOutcome::parse("rolled-back b 1.1.0 170"), None);
        assert_eq!(LastOutcome::parse("rolled-back b 1.1.0 170 soon"), None);
        // Other outcomes, and no last= line, are no alert.
        assert_eq!(rolled_back_line("last=committed b 1.1.0 1 2\n"), None);
        assert_eq!(rolled_back_line("last=installed b 1.1.0 1 2\n"), None);
        assert_eq!(rolled_back_line("slot=a\nbooted=a\n"), None);
        assert_eq!(rolled_back_line(""), None);
    }

    #[test]
    fn a_rolled_back_update_is_alerted_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("data")).unwrap();
        let info = dir.path().join("outpost-boot");
        assert!(
            !alert_failed_update(&store, &info, 1_000),
            "no file: not an image"
        );
        std::fs::write(&info, "slot=a\nbooted=a\ntrial=0\n").unwrap();
        assert!(!alert_failed_update(&store, &info, 1_000));
        assert_eq!(store.fw_alert_count().unwrap(), 0);

        std::fs::write(&info, BOOT_INFO_TEXT).unwrap();
        assert!(alert_failed_update(&store, &info, 2_000));
        let alerts = store.fw_alerts(10).unwrap();
        assert_eq!(alerts.len(), 1);
        assert_eq!(
            alerts[0].at, 2_000,
            "newer than any acknowledgement: lights the LED"
        );
        assert!(alerts[0]
            .message
            .starts_with("firmware update to 1.1.0 (build 1700100000) failed"));
        // The next start (same boot, or later boots of the same slot) says nothing new.
        assert!(!alert_failed_update(&store, &info, 3_000));
        assert_eq!(store.fw_alert_count().unwrap(), 1);

        // Another failed update is alerted again; a line that does not parse still alerts.
        std::fs::write(&info, "last=rolled-back b 1.2.0\n").unwrap();
        assert!(alert_failed_update(&store, &info, 4_000));
        assert_eq!(
            store.fw_alerts(1).unwrap()[0].message,
            "a firmware update failed and was rolled back (rolled-back b 1.2.0)"
        );
    }

    /// A data directory whose demo configuration runs with `data_dir` inside a temp dir.
    fn boot(dir: &std::path::Path, extra: &str) -> (Config, String) {
        let text = format!(
            "{}\n{extra}",
            Config::demo_text().replace("./outpost-data", &dir.display().to_string())
        );
        let mut cfg = Config::parse_named(&text, "boot").unwrap();
        cfg.store.data_dir = dir.to_owned();
        (cfg, text)
    }

    #[test]
    fn the_boot_file_as_factory_default_seeds_revision_1_only() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, text) = boot(dir.path(), "");
        let (_, revs, run) = select_revision(cfg, &text, "boot", 1, true).unwrap();
        assert_eq!(
            run, text,
            "no revision yet: the factory default is revision 1"
        );
        assert_eq!(revs.current().unwrap().rev, 1);

        // A new firmware brings a different factory default: revision 1 keeps running.
        let (cfg, changed) = boot(dir.path(), "# factory default of a newer image\n");
        let (_, revs, run) = select_revision(cfg.clone(), &changed, "boot", 2, true).unwrap();
        assert_eq!(run, text);
        assert_eq!(revs.list().len(), 1, "nothing added");

        // The admin applied revision 2: it runs, whatever the boot file says.
        let mut revs = revs;
        let applied = format!("{text}# applied by the admin\n");
        revs.add(&applied, 3, "outpostctl config apply", None)
            .unwrap();
        let (_, revs, run) = select_revision(cfg.clone(), &changed, "boot", 4, true).unwrap();
        assert_eq!(run, applied);
        assert_eq!(revs.current().unwrap().rev, 2);

        // Without the flag the changed boot file wins (as before).
        let (_, revs, run) = select_revision(cfg, &changed, "boot", 5, false).unwrap();
        assert_eq!(run, changed);
        assert_eq!(revs.current().unwrap().rev, 3);
    }

    #[test]
    fn a_stored_revision_that_no_longer_parses_gives_way_to_the_boot_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, text) = boot(dir.path(), "");
        drop(select_revision(cfg.clone(), &text, "boot", 1, true).unwrap());
        let mut revs = crate::revisions::Revisions::open(dir.path()).unwrap();
        revs.add(
            "[sip]\nno_such_key = 1\n",
            2,
            "written by newer firmware",
            None,
        )
        .unwrap();
        drop(revs);
        let (_, _, run) = select_revision(cfg, &text, "boot", 3, true).unwrap();
        assert_eq!(run, text);
    }

    #[test]
    fn a_broken_factory_default_runs_the_stored_revision() {
        let dir = tempfile::tempdir().unwrap();
        let broken = format!(
            "[store]\ndata_dir = {:?}\n[sip]\nno_such_key = 1\n",
            dir.path().display().to_string()
        );
        let err = anyhow::anyhow!("boot: unknown field `no_such_key`");
        // No revision yet: nothing to run, the error says why.
        let e = newest_revision_instead(Some(&broken), &err, None).unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("no_such_key") && e.contains("no configuration revision"),
            "{e}"
        );

        let (cfg, text) = boot(dir.path(), "");
        drop(select_revision(cfg, &text, "boot", 1, true).unwrap());
        // The data directory is found in the broken file.
        let (cfg, run, source) = newest_revision_instead(Some(&broken), &err, None).unwrap();
        assert_eq!(run, text);
        assert_eq!(cfg.store.data_dir, dir.path());
        assert_eq!(source, "stored configuration revision 1");
        // Unreadable as TOML (or missing): the data directory comes from --data-dir.
        let (_, run, _) =
            newest_revision_instead(Some("[[[ not toml"), &err, Some(dir.path())).unwrap();
        assert_eq!(run, text);
        let (_, run, _) = newest_revision_instead(None, &err, Some(dir.path())).unwrap();
        assert_eq!(run, text);
    }
}
