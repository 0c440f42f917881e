//! Persistent state in one redb database, `<data_dir>/outpost.redb`.
//!
//! redb is ACID and crash-safe; every write here commits with `Durability::Immediate`, so
//! a write that returned `Ok` survives kill -9 and power loss. The daemon groups the
//! registrar's binding changes and finished calls into one [`Batch`] per cycle and
//! acknowledges REGISTERs only after [`Store::commit`] returned (group commit: one fsync for
//! many requests).
//!
//! The firewall's state lives here too: bans (with their end time, so a reboot re-applies
//! the remaining time), account locks, and the newest [`MAX_ALERTS`] alerts. Firewall
//! changes travel in the same [`Batch`] as the registrar's, so they share its fsync.
//!
//! Values are JSON. A row that no longer decodes (a bug or a disk fault) is skipped by the
//! listing calls, logged, and counted in [`Store::corrupt_rows`]; single-row lookups return
//! [`StoreError::Corrupt`]. Nothing panics on stored data.
//!
//! The layout has a version, [`SCHEMA_VERSION`], kept in the meta table (absent = 0, the
//! layout before versioning). Opening an older store first copies the file to
//! `outpost.redb.schema-<old>` (what a rollback to the old firmware restores), then runs the
//! migrations old+1..=current in one write transaction: all of them or none. Opening a store
//! written by newer firmware (the firmware was rolled back) restores that copy and moves the
//! newer file aside, or refuses with [`StoreError::NewerSchema`] when there is no copy.

use std::fmt::Display;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rand::RngCore;
use redb::{Database, Durability, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use firewall::detect::{Alert, Rule};
use firewall::Millis;
use pbx_core::cdr::Cdr;
use pbx_core::endpoint::{MwiChange, MwiRecord};
use pbx_core::lockout::TrustedSource;
use pbx_core::registrar::{Binding, BindingChange};
use pbx_core::sip::auth::StoredSecret;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "outpost.redb";

/// Meta key under which the digest nonce key is kept.
const NONCE_KEY: &str = "nonce_key";

/// Layout version this firmware reads and writes. A change of layout adds a migration to
/// [`MIGRATIONS`] and raises this by one.
pub const SCHEMA_VERSION: u32 = 1;

/// Meta key holding the schema version as decimal text (absent = 0).
const SCHEMA_KEY: &str = "schema_version";

/// One migration: brings the store from schema `n - 1` to `n` inside the given write
/// transaction (it must not commit; an error aborts every migration of the run).
type Migration = fn(&redb::WriteTransaction) -> Result<(), StoreError>;

/// The migrations; entry `i` brings schema `i` to `i + 1`, so there are [`SCHEMA_VERSION`].
const MIGRATIONS: &[Migration] = &[migrate_0_to_1];

const _: () = assert!(MIGRATIONS.len() == SCHEMA_VERSION as usize);

/// 0 -> 1: the tables were already there; the version is recorded from now on.
fn migrate_0_to_1(_txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    Ok(())
}

const EXTENSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("extensions");
const REGISTRATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("registrations");
const CDRS: TableDefinition<u64, &[u8]> = TableDefinition::new("cdrs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const BANS: TableDefinition<&str, &[u8]> = TableDefinition::new("bans");
const ALERTS: TableDefinition<u64, &[u8]> = TableDefinition::new("alerts");
const LOCKS: TableDefinition<&str, &[u8]> = TableDefinition::new("locks");
const VOICEMAIL: TableDefinition<u64, &[u8]> = TableDefinition::new("voicemail");
/// Message-waiting subscriptions by Call-ID (bounded by the call core's table,
/// `pbx_core::endpoint` `MAX_MWI`).
/// Provisioned desk phones, keyed by MAC (12 lowercase hex digits).
const PHONES: TableDefinition<&str, &[u8]> = TableDefinition::new("phones");
const MWI: TableDefinition<&str, &[u8]> = TableDefinition::new("mwi");

/// One voicemail message: the audio is a WAV file, this is its index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoicemailRecord {
    /// Message number (unique, increasing).
    pub id: u64,
    /// The extension whose mailbox holds it.
    pub mailbox: String,
    /// Who called.
    pub caller: String,
    /// When the call came in (ms since the epoch).
    pub at: u64,
    pub duration_ms: u32,
    /// The WAV file.
    pub path: PathBuf,
    /// Not listened to yet.
    pub new: bool,
}

/// Alerts kept; older ones are deleted as new ones arrive.
pub const MAX_ALERTS: u64 = 10_000;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// redb failed (I/O error, database locked by another process, ...).
    #[error("database: {0}")]
    Db(Box<redb::Error>),
    /// A value could not be encoded.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// What was being written.
        what: &'static str,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// A stored row does not decode.
    #[error("corrupt row {key} in table {table}: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The row's key.
        key: String,
        /// The decoding error.
        reason: String,
    },
    /// The store was written by a newer firmware and no copy in this firmware's layout exists.
    #[error("the store was written by newer firmware (schema {found}); this firmware reads schema {supported}: restore a backup or reinstall the newer firmware")]
    NewerSchema {
        /// The schema of the file.
        found: u32,
        /// The newest schema this firmware reads.
        supported: u32,
    },
    /// A migration failed; its transaction was aborted, so the file is as it was.
    #[error("migrating the store from schema {from} to {to} failed (the database is unchanged): {source}")]
    Migration {
        /// The schema the store had.
        from: u32,
        /// The migration that failed brings the store to this schema.
        to: u32,
        /// What went wrong.
        source: Box<StoreError>,
    },
    /// A file next to the database (the pre-migration copy, a rollback) could not be written.
    #[error("{what} {path}: {source}")]
    File {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(Box::new(e.into()))
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// One extension as stored: digests only, never the password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExtensionRecord {
    /// Extension number (the digest username).
    pub ext: String,
    /// Display name.
    pub name: Option<String>,
    /// HA1 digests for MD5 and SHA-256.
    pub secret: StoredSecret,
    /// Realm the digests were computed for (a realm change needs new passwords).
    pub realm: String,
    /// When the extension was created (ms since the epoch).
    pub created_ms: u64,
}

/// A provisioned desk phone (`outpostctl phone add`). It holds the SIP password it is
/// served in plain: the phone needs it, and the box keeps only digests of extension
/// passwords otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhoneRecord {
    /// MAC address, 12 lowercase hex digits.
    pub mac: String,
    /// Model as the admin gave it.
    pub model: String,
    /// Extension it registers as.
    pub ext: String,
    /// Extensions its BLF keys watch.
    pub keys: Vec<String>,
    /// The extension's SIP password, generated by `phone add`.
    pub sip_password: String,
    /// The phone's provisioning password (HTTP Basic, user name = MAC).
    pub prov_password: String,
    /// When it was added (ms since the epoch).
    pub created_ms: u64,
    /// When it last fetched its own file (ms since the epoch).
    #[serde(default)]
    pub fetched_ms: Option<u64>,
}

/// A ban as stored (keyed by the banned address).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBan {
    /// When the ban ends, ms since the epoch.
    pub until: Millis,
    /// The rule that banned.
    pub rule: Rule,
    /// Human-readable cause.
    pub reason: String,
    /// Bans of this address within the repeat-offender window, this one included.
    pub count_today: u32,
}

/// An account lock as stored (keyed by the account).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredLock {
    /// When the lock ends, ms since the epoch.
    pub until: Millis,
    /// The rule that locked it.
    pub rule: Rule,
    /// The sources that had authenticated as the account when it was locked: the lock
    /// does not apply to them (restored with the lock after a restart).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<TrustedSource>,
}

/// One change to the firewall's persistent state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirewallChange {
    /// Create or replace the ban of an address.
    Ban(IpAddr, StoredBan),
    /// Delete the ban of an address (fine if there is none).
    Unban(IpAddr),
    /// Create or replace an account lock.
    Lock(String, StoredLock),
    /// Delete an account lock (fine if there is none).
    Unlock(String),
    /// Append an alert (the oldest beyond [`MAX_ALERTS`] are deleted).
    Alert(Alert),
    /// Delete bans and locks that ended at or before this time.
    PurgeExpired(Millis),
}

/// Everything one daemon cycle needs persisted, written in a single transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// Registrar changes, applied in order.
    pub bindings: Vec<BindingChange>,
    /// Finished calls, appended in order.
    pub cdrs: Vec<Cdr>,
    /// Firewall bans, locks and alerts, applied in order.
    pub firewall: Vec<FirewallChange>,
    /// New voicemail messages (their `id` is assigned at commit).
    pub voicemail: Vec<VoicemailRecord>,
    /// Message-waiting subscription changes, applied in order.
    pub mwi: Vec<MwiChange>,
}

impl Batch {
    /// Moves everything of `other` to the end of this batch.
    pub fn append(&mut self, mut other: Batch) {
        self.bindings.append(&mut other.bindings);
        self.cdrs.append(&mut other.cdrs);
        self.firewall.append(&mut other.firewall);
        self.voicemail.append(&mut other.voicemail);
        self.mwi.append(&mut other.mwi);
    }

    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
            && self.cdrs.is_empty()
            && self.firewall.is_empty()
            && self.voicemail.is_empty()
            && self.mwi.is_empty()
    }
}

/// The daemon's database. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
    corrupt: AtomicU64,
    /// The schema the store was opened at.
    schema: u32,
}

impl Store {
    /// Opens (or creates) `<dir>/outpost.redb`, creating `dir` if missing. After an unclean
    /// shutdown redb repairs the file here, which can take a moment on a large database.
    /// An older store is copied aside and migrated to [`SCHEMA_VERSION`]; a newer one is
    /// replaced by its pre-migration copy, or refused (see the module documentation).
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with_migrations(dir, MIGRATIONS)
    }

    /// [`Store::open`] with the migration list given (tests add their own).
    fn open_with_migrations(dir: &Path, migrations: &[Migration]) -> Result<Store, StoreError> {
        let current = u32::try_from(migrations.len()).unwrap_or(u32::MAX);
        std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let fresh = !path.exists();
        let mut db = Database::create(&path)?;
        // A store an older firmware wrote with the default modes is made private (the
        // daemon's umask covers what it creates now).
        private(dir, 0o700);
        private(&path, 0o600);
        let mut stored = if fresh { current } else { read_schema(&db)? };
        if stored > current {
            // The firmware was rolled back after a newer one migrated the store.
            drop(db);
            restore_pre_migration_copy(dir, stored, current)?;
            db = Database::create(&path)?;
            stored = read_schema(&db)?;
            if stored > current {
                return Err(StoreError::NewerSchema {
                    found: stored,
                    supported: current,
                });
            }
        }
        if stored < current {
            // The copy is taken with the database closed, so it is a clean file.
            drop(db);
            let copy = dir.join(format!("{DB_FILE}.schema-{stored}"));
            copy_durably(&path, &copy)?;
            tracing::info!(copy = %copy.display(), "store schema {stored}: copy kept for a rollback of the firmware");
            db = Database::create(&path)?;
            migrate(&db, stored, migrations)?;
        }
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        {
            txn.open_table(EXTENSIONS)?;
            txn.open_table(REGISTRATIONS)?;
            txn.open_table(CDRS)?;
            txn.open_table(BANS)?;
            txn.open_table(ALERTS)?;
            txn.open_table(LOCKS)?;
            txn.open_table(VOICEMAIL)?;
            txn.open_table(MWI)?;
            txn.open_table(PHONES)?;
            let mut meta = txn.open_table(META)?;
            if fresh {
                meta.insert(SCHEMA_KEY, current.to_string().as_bytes())?;
            }
        }
        txn.commit()?;
        Ok(Store {
            db,
            path,
            corrupt: AtomicU64::new(0),
            schema: current,
        })
    }

    /// The schema version of the open store (always [`SCHEMA_VERSION`] once open).
    pub fn schema_version(&self) -> u32 {
        self.schema
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows skipped so far because they did not decode.
    pub fn corrupt_rows(&self) -> u64 {
        self.corrupt.load(Ordering::Relaxed)
    }

    /// Creates or replaces an extension.
    pub fn ext_put(&self, rec: &ExtensionRecord) -> Result<(), StoreError> {
        self.ext_put_many(std::slice::from_ref(rec))
    }

    /// Creates or replaces many extensions in one transaction (one fsync for an import).
    pub fn ext_put_many(&self, recs: &[ExtensionRecord]) -> Result<(), StoreError> {
        let encoded = recs
            .iter()
            .map(|r| Ok((r.ext.as_str(), encode("extension", r)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        let txn = self.begin_write()?;
        {
            let mut table = txn.open_table(EXTENSIONS)?;
            for (ext, bytes) in &encoded {
                table.insert(*ext, bytes.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// One extension, if it exists.
    pub fn ext_get(&self, ext: &str) -> Result<Option<ExtensionRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(EXTENSIONS)?;
        let Some(row) = table.get(ext)? else {
            return Ok(None);
        };
        serde_json::from_slice(row.value())
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                table: "extensions",
                key: ext.to_owned(),
                reason: e.to_string(),
            })
    }

    /// Deletes an extension and all its registrations; false if it did not exist.
    pub fn ext_del(&self, ext: &str) -> Result<bool, StoreError> {
        let txn = self.begin_write()?;
        let existed = {
            let mut exts = txn.open_table(EXTENSIONS)?;
            let existed = exts.remove(ext)?.is_some();
            let mut regs = txn.open_table(REGISTRATIONS)?;
            let (lo, hi) = ext_range(ext);
            let keys = regs
                .range(lo.as_str()..hi.as_str())?
                .map(|row| row.map(|(k, _)| k.value().to_owned()))
                .collect::<Result<Vec<_>, _>>()?;
            for key in &keys {
                regs.remove(key.as_str())?;
            }
            existed
        };
        txn.commit()?;
        Ok(existed)
    }

    /// All extensions, ordered by extension number as text; corrupt rows are skipped.
    pub fn ext_list(&self) -> Result<Vec<ExtensionRecord>, StoreError> {
        self.all_rows(EXTENSIONS, "extensions")
    }

    /// Creates or replaces a phone.
    pub fn phone_put(&self, rec: &PhoneRecord) -> Result<(), StoreError> {
        let bytes = encode("phone", rec)?;
        let txn = self.begin_write()?;
        txn.open_table(PHONES)?
            .insert(rec.mac.as_str(), bytes.as_slice())?;
        txn.commit()?;
        Ok(())
    }

    /// One phone, if provisioned.
    pub fn phone_get(&self, mac: &str) -> Result<Option<PhoneRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PHONES)?;
        let Some(row) = table.get(mac)? else {
            return Ok(None);
        };
        Ok(self.decode("phones", mac, row.value()))
    }

    /// Deletes a phone; false if it was not there.
    pub fn phone_del(&self, mac: &str) -> Result<bool, StoreError> {
        let txn = self.begin_write()?;
        let existed = txn.open_table(PHONES)?.remove(mac)?.is_some();
        txn.commit()?;
        Ok(existed)
    }

    /// Every phone, by MAC; corrupt rows are skipped.
    pub fn phone_list(&self) -> Result<Vec<PhoneRecord>, StoreError> {
        self.all_rows(PHONES, "phones")
    }

    /// Number of phones.
    pub fn phone_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(PHONES)?.len()?)
    }

    /// Number of extensions.
    pub fn ext_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(EXTENSIONS)?.len()?)
    }

    /// Writes a batch atomically and durably: when this returns `Ok`, every change in it
    /// survives a crash; when it returns `Err`, none was applied.
    pub fn commit(&self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let txn = self.begin_write()?;
        {
            let mut regs = txn.open_table(REGISTRATIONS)?;
            for change in &batch.bindings {
                match change {
                    BindingChange::Upsert(b) | BindingChange::Refresh(b) => {
                        let bytes = encode("binding", b)?;
                        regs.insert(binding_key(&b.ext, &b.contact).as_str(), bytes.as_slice())?;
                    }
                    BindingChange::Remove { ext, contact } => {
                        regs.remove(binding_key(ext, contact).as_str())?;
                    }
                }
            }
            let mut cdrs = txn.open_table(CDRS)?;
            let mut seq = match cdrs.last()? {
                Some((k, _)) => k.value().saturating_add(1),
                None => 1,
            };
            for cdr in &batch.cdrs {
                let bytes = encode("cdr", cdr)?;
                cdrs.insert(seq, bytes.as_slice())?;
                seq = seq.saturating_add(1);
            }
            if !batch.firewall.is_empty() {
                apply_firewall(&txn, &batch.firewall)?;
            }
            let mut vm = txn.open_table(VOICEMAIL)?;
            let mut next = match vm.last()? {
                Some((k, _)) => k.value().saturating_add(1),
                None => 1,
            };
            for msg in &batch.voicemail {
                let mut msg = msg.clone();
                msg.id = next;
                let bytes = encode("voicemail", &msg)?;
                vm.insert(next, bytes.as_slice())?;
                next = next.saturating_add(1);
            }
            if !batch.mwi.is_empty() {
                let mut mwi = txn.open_table(MWI)?;
                for change in &batch.mwi {
                    match change {
                        MwiChange::Upsert(r) => {
                            let bytes = encode("mwi", r)?;
                            mwi.insert(r.call_id.as_str(), bytes.as_slice())?;
                        }
                        MwiChange::Remove(call_id) => {
                            mwi.remove(call_id.as_str())?;
                        }
                    }
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Every stored ban, ended or not (the caller skips ended ones), by address text.
    pub fn fw_bans(&self) -> Result<Vec<(IpAddr, StoredBan)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(BANS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            let Ok(addr) = k.value().parse::<IpAddr>() else {
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(table = "bans", key = %k.value(), "skipping row with a bad address");
                continue;
            };
            if let Some(ban) = self.decode("bans", k.value(), v.value()) {
                out.push((addr, ban));
            }
        }
        Ok(out)
    }

    /// Every stored account lock, ended or not, by account.
    pub fn fw_locks(&self) -> Result<Vec<(String, StoredLock)>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(LOCKS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            if let Some(lock) = self.decode("locks", k.value(), v.value()) {
                out.push((k.value().to_owned(), lock));
            }
        }
        Ok(out)
    }

    /// Up to `limit` alerts, newest first.
    pub fn fw_alerts(&self, limit: usize) -> Result<Vec<Alert>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(ALERTS)?;
        let mut out = Vec::new();
        for row in table.iter()?.rev().take(limit) {
            let (k, v) = row?;
            if let Some(alert) = self.decode("alerts", k.value(), v.value()) {
                out.push(alert);
            }
        }
        Ok(out)
    }

    /// Number of stored alerts (at most [`MAX_ALERTS`]).
    pub fn fw_alert_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(ALERTS)?.len()?)
    }

    /// Applies firewall changes in one durable transaction (the admin's path; the daemon's
    /// cycle sends them in its [`Batch`]).
    pub fn fw_apply(&self, changes: &[FirewallChange]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        let txn = self.begin_write()?;
        apply_firewall(&txn, changes)?;
        txn.commit()?;
        Ok(())
    }

    /// Every stored binding (the registrar reloads these at start and drops expired ones).
    pub fn bindings_all(&self) -> Result<Vec<Binding>, StoreError> {
        self.all_rows(REGISTRATIONS, "registrations")
    }

    /// Every stored message-waiting subscription (ended ones included: the call core
    /// drops those at restore).
    pub fn mwi_all(&self) -> Result<Vec<MwiRecord>, StoreError> {
        self.all_rows(MWI, "mwi")
    }

    /// Up to `limit` call records, newest first, after skipping the `offset` newest.
    pub fn cdr_list(&self, limit: usize, offset: usize) -> Result<Vec<Cdr>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CDRS)?;
        let mut out = Vec::new();
        for row in table.iter()?.rev().skip(offset).take(limit) {
            let (k, v) = row?;
            if let Some(cdr) = self.decode("cdrs", k.value(), v.value()) {
                out.push(cdr);
            }
        }
        Ok(out)
    }

    /// Voicemail messages, oldest first; only `mailbox`'s when given.
    pub fn vm_list(&self, mailbox: Option<&str>) -> Result<Vec<VoicemailRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(VOICEMAIL)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            if let Some(msg) = self.decode::<VoicemailRecord>("voicemail", k.value(), v.value()) {
                if mailbox.is_none_or(|m| m == msg.mailbox) {
                    out.push(msg);
                }
            }
        }
        Ok(out)
    }

    /// Voicemail message `id`'s index entry, if it exists.
    pub fn vm_get(&self, id: u64) -> Result<Option<VoicemailRecord>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(VOICEMAIL)?;
        let row = table.get(id)?;
        Ok(row.and_then(|v| self.decode::<VoicemailRecord>("voicemail", id, v.value())))
    }

    /// Marks message `id` as heard; returns its mailbox when it existed.
    pub fn vm_mark_heard(&self, id: u64) -> Result<Option<String>, StoreError> {
        let txn = self.begin_write()?;
        let mailbox = {
            let mut table = txn.open_table(VOICEMAIL)?;
            let current = table
                .get(id)?
                .and_then(|v| serde_json::from_slice::<VoicemailRecord>(v.value()).ok());
            match current {
                Some(mut msg) => {
                    msg.new = false;
                    let bytes = encode("voicemail", &msg)?;
                    table.insert(id, bytes.as_slice())?;
                    Some(msg.mailbox)
                }
                None => None,
            }
        };
        txn.commit()?;
        Ok(mailbox)
    }

    /// Deletes message `id` from the index; returns it (the caller removes the file).
    pub fn vm_delete(&self, id: u64) -> Result<Option<VoicemailRecord>, StoreError> {
        let txn = self.begin_write()?;
        let removed = {
            let mut table = txn.open_table(VOICEMAIL)?;
            let old = table.remove(id)?;
            old.and_then(|v| serde_json::from_slice::<VoicemailRecord>(v.value()).ok())
        };
        txn.commit()?;
        Ok(removed)
    }

    /// Number of stored call records.
    pub fn cdr_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(txn.open_table(CDRS)?.len()?)
    }

    /// A raw meta value.
    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(META)?;
        Ok(table.get(key)?.map(|v| v.value().to_vec()))
    }

    /// Stores a raw meta value durably.
    pub fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        let txn = self.begin_write()?;
        txn.open_table(META)?.insert(key, value)?;
        txn.commit()?;
        Ok(())
    }

    /// The daemon's 32-byte nonce key: created from the OS random source on first use and
    /// persisted, so nonces issued before a restart stay verifiable. A damaged key is replaced.
    pub fn secret_key(&self) -> Result<[u8; 32], StoreError> {
        if let Some(key) = self
            .meta_get(NONCE_KEY)?
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
        {
            return Ok(key);
        }
        let txn = self.begin_write()?;
        let key = {
            let mut table = txn.open_table(META)?;
            let existing = table
                .get(NONCE_KEY)?
                .map(|v| <[u8; 32]>::try_from(v.value()));
            match existing {
                Some(Ok(key)) => key,
                other => {
                    if other.is_some() {
                        self.corrupt.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("stored nonce key has the wrong length; replacing it");
                    }
                    let mut key = [0u8; 32];
                    rand::rngs::OsRng.fill_bytes(&mut key);
                    table.insert(NONCE_KEY, key.as_slice())?;
                    key
                }
            }
        };
        txn.commit()?;
        Ok(key)
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(Durability::Immediate);
        Ok(txn)
    }

    /// Every row of a table keyed by text, in key order (rows that do not decode are
    /// skipped and counted, see [`Store::decode`]).
    fn all_rows<T: DeserializeOwned>(
        &self,
        def: TableDefinition<&str, &[u8]>,
        name: &'static str,
    ) -> Result<Vec<T>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(def)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            if let Some(item) = self.decode(name, k.value(), v.value()) {
                out.push(item);
            }
        }
        Ok(out)
    }

    fn decode<T: DeserializeOwned>(
        &self,
        table: &'static str,
        key: impl Display,
        bytes: &[u8],
    ) -> Option<T> {
        match serde_json::from_slice(bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                self.corrupt.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(table, key = %key, error = %e, "skipping corrupt row");
                None
            }
        }
    }
}

/// Rows a [`Store::cdr_page`] call looks at before it returns (bounds one admin request).
pub const CDR_PAGE_SCAN: usize = 50_000;

impl Store {
    /// A consistent read-only view of every table at this moment (for a backup): the
    /// daemon keeps writing while it is read.
    pub fn snapshot(&self) -> Result<StoreSnapshot<'_>, StoreError> {
        Ok(StoreSnapshot {
            store: self,
            txn: self.db.begin_read()?,
        })
    }

    /// Call records whose `start` lies in `from..to`, oldest first, at most `limit`, with
    /// record keys after `after` (0 = from the first). Returns them and the cursor to pass as
    /// `after` for the next page, `None` when there is no more. Looks at no more than
    /// [`CDR_PAGE_SCAN`] rows per call, so a page may be short but still have a cursor.
    pub fn cdr_page(
        &self,
        from: Millis,
        to: Millis,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<Cdr>, Option<u64>), StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(CDRS)?;
        let mut out = Vec::new();
        let mut last = None;
        let mut scanned = 0usize;
        let Some(first) = after.checked_add(1) else {
            return Ok((out, None));
        };
        let mut rows = table.range(first..)?;
        for row in rows.by_ref() {
            let (k, v) = row?;
            last = Some(k.value());
            scanned += 1;
            if let Some(cdr) = self.decode::<Cdr>("cdrs", k.value(), v.value()) {
                if cdr.start >= from && cdr.start < to {
                    out.push(cdr);
                }
            }
            if out.len() >= limit || scanned >= CDR_PAGE_SCAN {
                break;
            }
        }
        let more = rows.next().is_some();
        Ok((out, if more { last } else { None }))
    }

    /// Replaces the whole content of the store with a backup's, in one durable transaction:
    /// extensions, call records (`cdrs`, oldest first, renumbered from 1), bans, locks,
    /// alerts, meta values, the voicemail index (message numbers kept) and the provisioned
    /// phones. Registrations are deleted (phones register again). A backup made before
    /// phones were backed up (`phones: None`) keeps the box's own phones whose SIP password
    /// the restored extension accepts (same digest), and deletes the others: their file
    /// would carry a password that no longer registers. When `cdrs` yields an error nothing
    /// is changed.
    pub fn import<E: From<StoreError>>(
        &self,
        data: &StoreImport,
        cdrs: impl Iterator<Item = Result<Cdr, E>>,
    ) -> Result<u64, E> {
        let txn = self.begin_write()?;
        let mut count = 0u64;
        {
            let mut exts = txn.open_table(EXTENSIONS).map_err(StoreError::from)?;
            exts.retain(|_, _| false).map_err(StoreError::from)?;
            for rec in &data.extensions {
                let bytes = encode("extension", rec)?;
                exts.insert(rec.ext.as_str(), bytes.as_slice())
                    .map_err(StoreError::from)?;
            }
            let mut regs = txn.open_table(REGISTRATIONS).map_err(StoreError::from)?;
            regs.retain(|_, _| false).map_err(StoreError::from)?;
            // Like registrations, subscriptions belong to the phones of the box that ran;
            // phones subscribe again.
            let mut mwi = txn.open_table(MWI).map_err(StoreError::from)?;
            mwi.retain(|_, _| false).map_err(StoreError::from)?;
            let mut table = txn.open_table(CDRS).map_err(StoreError::from)?;
            table.retain(|_, _| false).map_err(StoreError::from)?;
            for cdr in cdrs {
                let cdr = cdr?;
                count += 1;
                let bytes = encode("cdr", &cdr)?;
                table
                    .insert(count, bytes.as_slice())
                    .map_err(StoreError::from)?;
            }
            let mut meta = txn.open_table(META).map_err(StoreError::from)?;
            meta.retain(|_, _| false).map_err(StoreError::from)?;
            for (k, v) in &data.meta {
                meta.insert(k.as_str(), v.as_slice())
                    .map_err(StoreError::from)?;
            }
            // The rows were written in this firmware's layout, whatever the backup's was.
            meta.insert(SCHEMA_KEY, self.schema.to_string().as_bytes())
                .map_err(StoreError::from)?;
            let mut bans = txn.open_table(BANS).map_err(StoreError::from)?;
            bans.retain(|_, _| false).map_err(StoreError::from)?;
            for (addr, ban) in &data.bans {
                let bytes = encode("ban", ban)?;
                bans.insert(ban_key(*addr).as_str(), bytes.as_slice())
                    .map_err(StoreError::from)?;
            }
            let mut locks = txn.open_table(LOCKS).map_err(StoreError::from)?;
            locks.retain(|_, _| false).map_err(StoreError::from)?;
            for (user, lock) in &data.locks {
                let bytes = encode("lock", lock)?;
                locks
                    .insert(user.as_str(), bytes.as_slice())
                    .map_err(StoreError::from)?;
            }
            let mut alerts = txn.open_table(ALERTS).map_err(StoreError::from)?;
            alerts.retain(|_, _| false).map_err(StoreError::from)?;
            let skip = data
                .alerts
                .len()
                .saturating_sub(usize::try_from(MAX_ALERTS).unwrap_or(usize::MAX));
            for (seq, alert) in (1u64..).zip(data.alerts.iter().skip(skip)) {
                let bytes = encode("alert", alert)?;
                alerts
                    .insert(seq, bytes.as_slice())
                    .map_err(StoreError::from)?;
            }
            let mut vm = txn.open_table(VOICEMAIL).map_err(StoreError::from)?;
            vm.retain(|_, _| false).map_err(StoreError::from)?;
            for msg in &data.voicemail {
                let bytes = encode("voicemail", msg)?;
                vm.insert(msg.id, bytes.as_slice())
                    .map_err(StoreError::from)?;
            }
            let mut phones = txn.open_table(PHONES).map_err(StoreError::from)?;
            match &data.phones {
                Some(list) => {
                    phones.retain(|_, _| false).map_err(StoreError::from)?;
                    for rec in list {
                        let bytes = encode("phone", rec)?;
                        phones
                            .insert(rec.mac.as_str(), bytes.as_slice())
                            .map_err(StoreError::from)?;
                    }
                }
                None => {
                    let (mut kept, mut dropped) = (0u64, 0u64);
                    phones
                        .retain(|_, bytes| {
                            let keep = serde_json::from_slice::<PhoneRecord>(bytes)
                                .is_ok_and(|p| still_registers(&p, &data.extensions));
                            if keep {
                                kept += 1;
                            } else {
                                dropped += 1;
                            }
                            keep
                        })
                        .map_err(StoreError::from)?;
                    if kept + dropped > 0 {
                        tracing::warn!(
                            kept,
                            dropped,
                            "the backup holds no phones (made before phones were backed up): \
                             kept the box's phones whose password the restored extension accepts"
                        );
                    }
                }
            }
        }
        txn.commit().map_err(StoreError::from)?;
        Ok(count)
    }
}

/// Whether `phone`'s SIP password is the one the extension it registers as (among `exts`)
/// accepts: the same digests in the extension's realm.
fn still_registers(phone: &PhoneRecord, exts: &[ExtensionRecord]) -> bool {
    exts.iter()
        .find(|e| e.ext == phone.ext)
        .is_some_and(|e| StoredSecret::new(&e.ext, &e.realm, &phone.sip_password) == e.secret)
}

/// What [`Store::import`] writes besides the call records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreImport {
    /// Extensions.
    pub extensions: Vec<ExtensionRecord>,
    /// Bans by address.
    pub bans: Vec<(IpAddr, StoredBan)>,
    /// Account locks by account.
    pub locks: Vec<(String, StoredLock)>,
    /// Alerts, oldest first (the newest [`MAX_ALERTS`] are kept).
    pub alerts: Vec<Alert>,
    /// Raw meta values by key.
    pub meta: Vec<(String, Vec<u8>)>,
    /// The voicemail index.
    pub voicemail: Vec<VoicemailRecord>,
    /// The provisioned phones (at most `pbx_core::provision::MAX_PHONES`, checked by the
    /// archive reader); `None` for a backup made before phones were backed up, see
    /// [`Store::import`].
    pub phones: Option<Vec<PhoneRecord>>,
}

/// A read-only snapshot of the store (see [`Store::snapshot`]); rows that do not decode are
/// skipped and counted as everywhere else.
pub struct StoreSnapshot<'a> {
    store: &'a Store,
    txn: redb::ReadTransaction,
}

impl std::fmt::Debug for StoreSnapshot<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSnapshot")
            .field("store", &self.store.path)
            .finish_non_exhaustive()
    }
}

impl StoreSnapshot<'_> {
    /// Every extension, by number.
    pub fn extensions(&self) -> Result<Vec<ExtensionRecord>, StoreError> {
        self.rows_str(EXTENSIONS, "extensions")
            .map(|v| v.into_iter().map(|(_, r)| r).collect())
    }

    /// Every provisioned phone, by MAC (with the passwords it is served).
    pub fn phones(&self) -> Result<Vec<PhoneRecord>, StoreError> {
        self.rows_str(PHONES, "phones")
            .map(|v| v.into_iter().map(|(_, r)| r).collect())
    }

    /// Every call record, oldest first, handed to `f` one at a time; returns how many.
    pub fn for_each_cdr<E: From<StoreError>>(
        &self,
        mut f: impl FnMut(Cdr) -> Result<(), E>,
    ) -> Result<u64, E> {
        let table = self.txn.open_table(CDRS).map_err(StoreError::from)?;
        let mut n = 0u64;
        for row in table.iter().map_err(StoreError::from)? {
            let (k, v) = row.map_err(StoreError::from)?;
            if let Some(cdr) = self.store.decode::<Cdr>("cdrs", k.value(), v.value()) {
                n += 1;
                f(cdr)?;
            }
        }
        Ok(n)
    }

    /// Every stored ban (ended ones too), by address text.
    pub fn bans(&self) -> Result<Vec<(String, StoredBan)>, StoreError> {
        self.rows_str(BANS, "bans")
    }

    /// Every stored account lock, by account.
    pub fn locks(&self) -> Result<Vec<(String, StoredLock)>, StoreError> {
        self.rows_str(LOCKS, "locks")
    }

    /// Every stored alert, oldest first.
    pub fn alerts(&self) -> Result<Vec<Alert>, StoreError> {
        let table = self.txn.open_table(ALERTS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            if let Some(a) = self.store.decode("alerts", k.value(), v.value()) {
                out.push(a);
            }
        }
        Ok(out)
    }

    /// Every meta value, by key, except the schema version (an import writes its own).
    pub fn meta(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let table = self.txn.open_table(META)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            if k.value() == SCHEMA_KEY {
                continue;
            }
            out.push((k.value().to_owned(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// The voicemail index, oldest first.
    pub fn voicemail(&self) -> Result<Vec<VoicemailRecord>, StoreError> {
        let table = self.txn.open_table(VOICEMAIL)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            if let Some(m) = self.store.decode("voicemail", k.value(), v.value()) {
                out.push(m);
            }
        }
        Ok(out)
    }

    fn rows_str<T: DeserializeOwned>(
        &self,
        def: TableDefinition<&str, &[u8]>,
        name: &'static str,
    ) -> Result<Vec<(String, T)>, StoreError> {
        let table = self.txn.open_table(def)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (k, v) = row?;
            if let Some(rec) = self.store.decode(name, k.value(), v.value()) {
                out.push((k.value().to_owned(), rec));
            }
        }
        Ok(out)
    }
}

/// Writes firewall changes inside `txn`, then trims the alerts to [`MAX_ALERTS`].
fn apply_firewall(
    txn: &redb::WriteTransaction,
    changes: &[FirewallChange],
) -> Result<(), StoreError> {
    let mut bans = txn.open_table(BANS)?;
    let mut locks = txn.open_table(LOCKS)?;
    let mut alerts = txn.open_table(ALERTS)?;
    let mut seq = match alerts.last()? {
        Some((k, _)) => k.value().saturating_add(1),
        None => 1,
    };
    for change in changes {
        match change {
            FirewallChange::Ban(addr, ban) => {
                let bytes = encode("ban", ban)?;
                bans.insert(ban_key(*addr).as_str(), bytes.as_slice())?;
            }
            FirewallChange::Unban(addr) => {
                bans.remove(ban_key(*addr).as_str())?;
            }
            FirewallChange::Lock(user, lock) => {
                let bytes = encode("lock", lock)?;
                locks.insert(user.as_str(), bytes.as_slice())?;
            }
            FirewallChange::Unlock(user) => {
                locks.remove(user.as_str())?;
            }
            FirewallChange::Alert(alert) => {
                let bytes = encode("alert", alert)?;
                alerts.insert(seq, bytes.as_slice())?;
                seq = seq.saturating_add(1);
            }
            FirewallChange::PurgeExpired(now) => {
                // A row that does not decode is deleted too: nothing could ever use it.
                let ended = |v: &[u8]| {
                    serde_json::from_slice::<Expiry>(v).map_or(true, |e| e.until <= *now)
                };
                bans.retain(|_, v| !ended(v))?;
                locks.retain(|_, v| !ended(v))?;
            }
        }
    }
    let excess = alerts.len()?.saturating_sub(MAX_ALERTS);
    for _ in 0..excess {
        alerts.pop_first()?;
    }
    Ok(())
}

/// The end time common to stored bans and locks.
#[derive(Deserialize)]
struct Expiry {
    until: Millis,
}

/// Ban key: the canonical address text (IPv4-mapped IPv6 stored as IPv4).
fn ban_key(addr: IpAddr) -> String {
    firewall::net::canonical(addr).to_string()
}

/// The schema version recorded in `db` (0 when none is: the layout before versioning).
fn read_schema(db: &Database) -> Result<u32, StoreError> {
    let txn = db.begin_read()?;
    let table = match txn.open_table(META) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let Some(v) = table.get(SCHEMA_KEY)? else {
        return Ok(0);
    };
    std::str::from_utf8(v.value())
        .ok()
        .and_then(|t| t.parse::<u32>().ok())
        .ok_or_else(|| StoreError::Corrupt {
            table: "meta",
            key: SCHEMA_KEY.to_owned(),
            reason: format!(
                "not a version number: {:?}",
                String::from_utf8_lossy(v.value())
            ),
        })
}

/// Runs the migrations `from + 1..=migrations.len()` and records the new version, all in one
/// durable write transaction: a failure leaves the file as it was.
fn migrate(db: &Database, from: u32, migrations: &[Migration]) -> Result<(), StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate);
    let mut version = from;
    for m in migrations
        .iter()
        .skip(usize::try_from(from).unwrap_or(usize::MAX))
    {
        let to = version.saturating_add(1);
        m(&txn).map_err(|e| {
            tracing::error!(from = version, to, error = %e, "store migration failed");
            StoreError::Migration {
                from,
                to,
                source: Box::new(e),
            }
        })?;
        tracing::info!(
            from = version,
            to,
            "store schema migrated from {version} to {to}"
        );
        version = to;
    }
    {
        let mut meta = txn.open_table(META)?;
        meta.insert(SCHEMA_KEY, version.to_string().as_bytes())?;
    }
    txn.commit()?;
    Ok(())
}

/// The firmware was rolled back: replaces the newer database (schema `found`) by the copy
/// taken before it was migrated from `supported`, keeping the newer one aside. Refuses
/// with [`StoreError::NewerSchema`] when there is no such copy.
fn restore_pre_migration_copy(dir: &Path, found: u32, supported: u32) -> Result<(), StoreError> {
    let path = dir.join(DB_FILE);
    let copy = dir.join(format!("{DB_FILE}.schema-{supported}"));
    if !copy.is_file() {
        return Err(StoreError::NewerSchema { found, supported });
    }
    // A second rollback must not overwrite the data kept aside by the first.
    let base = format!("{DB_FILE}.schema-{found}.newer");
    let aside = std::iter::once(dir.join(&base))
        .chain((2..1000).map(|n| dir.join(format!("{base}.{n}"))))
        .find(|p| !p.exists())
        .ok_or_else(|| StoreError::File {
            what: "too many files like",
            path: dir.join(&base),
            source: std::io::ErrorKind::AlreadyExists.into(),
        })?;
    let rename = |from: &Path, to: &Path| {
        std::fs::rename(from, to).map_err(|source| StoreError::File {
            what: "cannot move the database to",
            path: to.to_owned(),
            source,
        })
    };
    rename(&path, &aside)?;
    rename(&copy, &path)?;
    sync_dir(dir)?;
    tracing::warn!(
        aside = %aside.display(),
        "the store was written by newer firmware (schema {found}); restored the copy taken before it was migrated (schema {supported}). Data since the update (registrations, call records, changes) is in {}",
        aside.display()
    );
    Ok(())
}

/// Copies `from` to `to` so that a crash leaves the old `to` or a complete copy: a temporary
/// file, fsync, rename, fsync of the directory.
fn copy_durably(from: &Path, to: &Path) -> Result<(), StoreError> {
    let mut tmp = to.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let err = |source| StoreError::File {
        what: "cannot copy the database to",
        path: to.to_owned(),
        source,
    };
    std::fs::copy(from, &tmp).map_err(err)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(err)?;
    std::fs::rename(&tmp, to).map_err(err)?;
    if let Some(dir) = to.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Makes renames in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::File {
            what: "cannot sync the directory",
            path: dir.to_owned(),
            source,
        })
}

fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Encode { what, source })
}

/// Registration key: extension numbers never contain NUL, so the prefix is unambiguous.
fn binding_key(ext: &str, contact: &str) -> String {
    format!("{ext}\0{contact}")
}

/// Key range holding every registration of `ext`.
fn ext_range(ext: &str) -> (String, String) {
    (format!("{ext}\0"), format!("{ext}\u{1}"))
}

/// Takes the group's and others' permissions from `path` (best effort: a file system
/// without modes, or another owner, leaves it as it is).
pub(crate) fn private(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // STYLE.md: unwrap is fine in tests
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;

    use pbx_core::cdr::Disposition;
    use pbx_core::sip::{Peer, Transport};

    use super::*;

    const CHILD_ENV: &str = "OUTPOST_STORE_CRASH_CHILD_DIR";

    fn ext(n: &str) -> ExtensionRecord {
        ExtensionRecord {
            ext: n.to_owned(),
            name: Some(format!("Phone {n}")),
            secret: StoredSecret::new(n, "outpost", "correct horse"),
            realm: "outpost".to_owned(),
            created_ms: 1_700_000_000_000,
        }
    }

    fn phone(mac: &str, ext: &str, sip_password: &str) -> PhoneRecord {
        PhoneRecord {
            mac: mac.to_owned(),
            model: "T46U".to_owned(),
            ext: ext.to_owned(),
            keys: Vec::new(),
            sip_password: sip_password.to_owned(),
            prov_password: format!("prov-{mac}"),
            created_ms: 1_700_000_000_000,
            fetched_ms: None,
        }
    }

    fn binding(ext: &str, contact: &str) -> Binding {
        Binding {
            ext: ext.to_owned(),
            contact: contact.to_owned(),
            source: Peer {
                transport: Transport::Udp,
                addr: "192.0.2.7:5060".parse().unwrap(),
            },
            expires_at: 1_000_000,
            call_id: "reg-1".to_owned(),
            cseq: 2,
            q: None,
            user_agent: Some("Yealink".to_owned()),
            registered_at: 900_000,
        }
    }

    fn cdr(call_id: &str, start: u64) -> Cdr {
        Cdr {
            call_id: call_id.to_owned(),
            caller: "100".to_owned(),
            callee: "101".to_owned(),
            start,
            answer: Some(start + 1_000),
            end: start + 61_000,
            disposition: Disposition::Answered,
            status: 200,
            leg: Default::default(),
        }
    }

    #[test]
    fn extensions_round_trip_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("nested").join("data");
        {
            let store = Store::open(&data).unwrap();
            assert_eq!(store.path(), data.join(DB_FILE));
            store.ext_put(&ext("101")).unwrap();
            store.ext_put(&ext("100")).unwrap();
            let mut changed = ext("100");
            changed.name = None;
            store.ext_put(&changed).unwrap();
            assert_eq!(store.ext_get("100").unwrap(), Some(changed));
            assert_eq!(store.ext_get("999").unwrap(), None);
        }
        let store = Store::open(&data).unwrap();
        let all = store.ext_list().unwrap();
        assert_eq!(
            all.iter().map(|r| r.ext.as_str()).collect::<Vec<_>>(),
            ["100", "101"]
        );
        assert_eq!(all[0].name, None);
        assert_eq!(all[1], ext("101"));
        assert_eq!(store.ext_count().unwrap(), 2);
    }

    #[test]
    fn phones_round_trip_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let phone = PhoneRecord {
            mac: "805ec0123456".to_owned(),
            model: "T46U".to_owned(),
            ext: "101".to_owned(),
            keys: vec!["102".to_owned()],
            sip_password: "sip-secret-1".to_owned(),
            prov_password: "prov-secret-1".to_owned(),
            created_ms: 1_700_000_000_000,
            fetched_ms: None,
        };
        {
            let store = Store::open(dir.path()).unwrap();
            store.phone_put(&phone).unwrap();
            assert_eq!(
                store.phone_get("805ec0123456").unwrap(),
                Some(phone.clone())
            );
            assert_eq!(store.phone_get("000000000001").unwrap(), None);
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.phone_list().unwrap(), vec![phone]);
        assert_eq!(store.phone_count().unwrap(), 1);
        assert!(store.phone_del("805ec0123456").unwrap());
        assert!(!store.phone_del("805ec0123456").unwrap());
        assert_eq!(store.phone_count().unwrap(), 0);
    }

    #[test]
    fn bulk_put_writes_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let recs: Vec<_> = (1000..1500).map(|n| ext(&n.to_string())).collect();
        store.ext_put_many(&recs).unwrap();
        assert_eq!(store.ext_list().unwrap(), recs);
    }

    #[test]
    fn ext_del_cascades_to_its_registrations_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.ext_put(&ext("10")).unwrap();
        store.ext_put(&ext("100")).unwrap();
        store
            .commit(&Batch {
                bindings: vec![
                    BindingChange::Upsert(binding("10", "sip:10@a")),
                    BindingChange::Upsert(binding("10", "sip:10@b")),
                    BindingChange::Upsert(binding("100", "sip:100@a")),
                ],
                cdrs: vec![],
                ..Batch::default()
            })
            .unwrap();
        assert!(store.ext_del("10").unwrap());
        assert!(!store.ext_del("10").unwrap());
        assert_eq!(store.ext_get("10").unwrap(), None);
        assert_eq!(store.ext_get("100").unwrap(), Some(ext("100")));
        assert_eq!(
            store.bindings_all().unwrap(),
            vec![binding("100", "sip:100@a")]
        );
    }

    #[test]
    fn binding_changes_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut refreshed = binding("100", "sip:100@a");
        refreshed.expires_at = 2_000_000;
        refreshed.cseq = 3;
        store
            .commit(&Batch {
                bindings: vec![
                    BindingChange::Upsert(binding("100", "sip:100@a")),
                    BindingChange::Upsert(binding("100", "sip:100@b")),
                    BindingChange::Upsert(refreshed.clone()),
                    BindingChange::Remove {
                        ext: "100".into(),
                        contact: "sip:100@b".into(),
                    },
                    BindingChange::Remove {
                        ext: "100".into(),
                        contact: "sip:never@there".into(),
                    },
                ],
                cdrs: vec![],
                ..Batch::default()
            })
            .unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.bindings_all().unwrap(), vec![refreshed]);
    }

    #[test]
    fn cdrs_newest_first_with_limit_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for batch in 0..3u64 {
            store
                .commit(&Batch {
                    bindings: vec![],
                    cdrs: (0..4)
                        .map(|i| cdr(&format!("c{}", batch * 4 + i), batch * 4 + i))
                        .collect(),
                    ..Batch::default()
                })
                .unwrap();
        }
        assert_eq!(store.cdr_count().unwrap(), 12);
        let ids = |v: Vec<Cdr>| v.into_iter().map(|c| c.call_id).collect::<Vec<_>>();
        assert_eq!(ids(store.cdr_list(3, 0).unwrap()), ["c11", "c10", "c9"]);
        assert_eq!(ids(store.cdr_list(2, 10).unwrap()), ["c1", "c0"]);
        assert!(store.cdr_list(5, 12).unwrap().is_empty());
        assert!(store.cdr_list(0, 0).unwrap().is_empty());
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        store
            .commit(&Batch {
                bindings: vec![],
                cdrs: vec![cdr("after-reopen", 99)],
                ..Batch::default()
            })
            .unwrap();
        assert_eq!(ids(store.cdr_list(2, 0).unwrap()), ["after-reopen", "c11"]);
    }

    #[test]
    fn empty_batch_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(Batch::default().is_empty());
        store.commit(&Batch::default()).unwrap();
        assert_eq!(store.cdr_count().unwrap(), 0);
    }

    #[test]
    fn meta_and_secret_key_persist() {
        let dir = tempfile::tempdir().unwrap();
        let key = {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.meta_get("x").unwrap(), None);
            store.meta_put("x", b"hello").unwrap();
            let key = store.secret_key().unwrap();
            assert_eq!(store.secret_key().unwrap(), key);
            assert_ne!(key, [0u8; 32]);
            key
        };
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.meta_get("x").unwrap(), Some(b"hello".to_vec()));
        assert_eq!(store.secret_key().unwrap(), key);

        store.meta_put(NONCE_KEY, b"short").unwrap();
        let replaced = store.secret_key().unwrap();
        assert_ne!(replaced, key);
        assert_eq!(store.secret_key().unwrap(), replaced);
        assert_eq!(store.corrupt_rows(), 1);

        let other = tempfile::tempdir().unwrap();
        let other_key = Store::open(other.path()).unwrap().secret_key().unwrap();
        assert_ne!(other_key, key, "each box gets its own key");
    }

    #[test]
    fn corrupt_rows_are_skipped_and_counted_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.ext_put(&ext("100")).unwrap();
        store
            .commit(&Batch {
                bindings: vec![BindingChange::Upsert(binding("100", "sip:100@a"))],
                cdrs: vec![cdr("good", 1)],
                ..Batch::default()
            })
            .unwrap();
        {
            let txn = store.db.begin_write().unwrap();
            txn.open_table(EXTENSIONS)
                .unwrap()
                .insert("666", b"{not json".as_slice())
                .unwrap();
            txn.open_table(REGISTRATIONS)
                .unwrap()
                .insert("100\0sip:x", b"[]".as_slice())
                .unwrap();
            txn.open_table(CDRS)
                .unwrap()
                .insert(1000, b"\xff\xfe".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        assert_eq!(store.ext_list().unwrap(), vec![ext("100")]);
        assert!(matches!(
            store.ext_get("666"),
            Err(StoreError::Corrupt {
                table: "extensions",
                ..
            })
        ));
        assert_eq!(store.bindings_all().unwrap().len(), 1);
        let cdrs = store.cdr_list(10, 0).unwrap();
        assert_eq!(cdrs.len(), 1);
        assert_eq!(cdrs[0].call_id, "good");
        assert_eq!(store.corrupt_rows(), 3);
    }

    /// Test-only schema 2: display names are stored upper-case.
    fn upper_case_names(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
        let mut table = txn.open_table(EXTENSIONS)?;
        let rows = table
            .iter()?
            .map(|row| row.map(|(k, v)| (k.value().to_owned(), v.value().to_vec())))
            .collect::<Result<Vec<_>, _>>()?;
        for (k, v) in rows {
            let mut rec: ExtensionRecord = serde_json::from_slice(&v).unwrap();
            rec.name = rec.name.map(|n| n.to_uppercase());
            table.insert(k.as_str(), encode("extension", &rec)?.as_slice())?;
        }
        Ok(())
    }

    /// Test-only schema 2 that changes rows, then fails.
    fn failing(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
        upper_case_names(txn)?;
        txn.open_table(META)?.insert("half", b"done".as_slice())?;
        Err(StoreError::Corrupt {
            table: "extensions",
            key: "100".into(),
            reason: "test migration fails".into(),
        })
    }

    const V2: &[Migration] = &[migrate_0_to_1, upper_case_names];

    fn raw_schema(dir: &Path) -> u32 {
        let db = Database::create(dir.join(DB_FILE)).unwrap();
        read_schema(&db).unwrap()
    }

    #[test]
    fn a_new_store_records_the_current_schema() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.schema_version(), SCHEMA_VERSION);
        assert_eq!(
            store.meta_get(SCHEMA_KEY).unwrap(),
            Some(SCHEMA_VERSION.to_string().into_bytes())
        );
        drop(store);
        assert!(
            !dir.path().join(format!("{DB_FILE}.schema-0")).exists(),
            "nothing to migrate, no copy"
        );
    }

    #[test]
    fn an_unversioned_store_is_copied_then_migrated_to_1() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.ext_put(&ext("100")).unwrap();
            // The layout before versioning: no schema key.
            let txn = store.db.begin_write().unwrap();
            txn.open_table(META).unwrap().remove(SCHEMA_KEY).unwrap();
            txn.commit().unwrap();
        }
        assert_eq!(raw_schema(dir.path()), 0);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.schema_version(), 1);
        assert_eq!(store.meta_get(SCHEMA_KEY).unwrap(), Some(b"1".to_vec()));
        assert_eq!(store.ext_list().unwrap(), vec![ext("100")]);
        drop(store);
        let copy = dir.path().join(format!("{DB_FILE}.schema-0"));
        let db = Database::create(&copy).unwrap();
        assert_eq!(read_schema(&db).unwrap(), 0, "the copy is the old file");
    }

    #[test]
    fn migrations_transform_rows_in_one_transaction_and_keep_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.ext_put(&ext("100")).unwrap();
            store.ext_put(&ext("101")).unwrap();
        }
        let store = Store::open_with_migrations(dir.path(), V2).unwrap();
        assert_eq!(store.schema_version(), 2);
        let names: Vec<Option<String>> = store
            .ext_list()
            .unwrap()
            .into_iter()
            .map(|r| r.name)
            .collect();
        assert_eq!(
            names,
            [Some("PHONE 100".to_string()), Some("PHONE 101".to_string())]
        );
        drop(store);
        assert_eq!(raw_schema(dir.path()), 2);
        // Opening again at the same schema migrates nothing.
        let store = Store::open_with_migrations(dir.path(), V2).unwrap();
        assert_eq!(
            store.ext_get("100").unwrap().unwrap().name.unwrap(),
            "PHONE 100"
        );
        drop(store);
        // The copy taken before is the schema-1 file, as the old firmware left it.
        let copy = Store::open(&{
            let d = dir.path().join("copy");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::copy(
                dir.path().join(format!("{DB_FILE}.schema-1")),
                d.join(DB_FILE),
            )
            .unwrap();
            d
        })
        .unwrap();
        assert_eq!(copy.ext_list().unwrap(), vec![ext("100"), ext("101")]);
    }

    #[test]
    fn a_failing_migration_leaves_the_database_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.ext_put(&ext("100")).unwrap();
        }
        let err = Store::open_with_migrations(dir.path(), &[migrate_0_to_1, failing]).unwrap_err();
        assert!(
            matches!(err, StoreError::Migration { from: 1, to: 2, .. }),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("from schema 1 to 2 failed (the database is unchanged)")
                && text.contains("test migration fails"),
            "{text}"
        );
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.schema_version(), 1);
        assert_eq!(store.meta_get(SCHEMA_KEY).unwrap(), Some(b"1".to_vec()));
        assert_eq!(
            store.ext_list().unwrap(),
            vec![ext("100")],
            "rows untouched"
        );
        assert_eq!(store.meta_get("half").unwrap(), None);
    }

    #[test]
    fn a_rolled_back_firmware_restores_the_pre_migration_copy() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.ext_put(&ext("100")).unwrap();
        }
        {
            // The newer firmware migrates, then takes calls.
            let store = Store::open_with_migrations(dir.path(), V2).unwrap();
            store
                .commit(&Batch {
                    cdrs: vec![cdr("after-update", 5)],
                    ..Batch::default()
                })
                .unwrap();
        }
        // Back on the old firmware.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.schema_version(), 1);
        assert_eq!(store.ext_list().unwrap(), vec![ext("100")], "old layout");
        assert_eq!(store.cdr_count().unwrap(), 0);
        assert!(!dir.path().join(format!("{DB_FILE}.schema-1")).exists());
        drop(store);
        let aside = dir.path().join(format!("{DB_FILE}.schema-2.newer"));
        let db = Database::create(&aside).unwrap();
        assert_eq!(read_schema(&db).unwrap(), 2, "the newer data is kept aside");
        drop(db);

        // Updating and rolling back again keeps the first aside file.
        drop(Store::open_with_migrations(dir.path(), V2).unwrap());
        drop(Store::open(dir.path()).unwrap());
        assert!(aside.exists());
        assert!(dir
            .path()
            .join(format!("{DB_FILE}.schema-2.newer.2"))
            .exists());
    }

    #[test]
    fn a_newer_store_without_a_copy_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open_with_migrations(dir.path(), V2).unwrap());
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::NewerSchema {
                    found: 2,
                    supported: 1
                }
            ),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            "the store was written by newer firmware (schema 2); this firmware reads schema 1: restore a backup or reinstall the newer firmware"
        );
        assert_eq!(raw_schema(dir.path()), 2);
    }

    #[test]
    fn an_unreadable_schema_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.meta_put(SCHEMA_KEY, b"two").unwrap();
        }
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::Corrupt { table: "meta", .. }),
            "{err}"
        );
    }

    #[test]
    fn second_open_of_a_locked_database_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Db(_)), "{err}");
    }

    fn alert(n: u64) -> Alert {
        Alert {
            at: n,
            rule: Rule::Scanner,
            addr: Some("203.0.113.9".parse().unwrap()),
            user: None,
            message: format!("alert {n}"),
            enforced: true,
        }
    }

    fn stored_ban(until: u64) -> StoredBan {
        StoredBan {
            until,
            rule: Rule::AuthFailures,
            reason: "too many failures".into(),
            count_today: 2,
        }
    }

    #[test]
    fn bans_and_locks_persist_replace_delete_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let v4: IpAddr = "203.0.113.9".parse().unwrap();
        let mapped: IpAddr = "::ffff:198.51.100.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::7".parse().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .commit(&Batch {
                    firewall: vec![
                        FirewallChange::Ban(v4, stored_ban(1_000)),
                        FirewallChange::Ban(v4, stored_ban(5_000)),
                        FirewallChange::Ban(mapped, stored_ban(9_000)),
                        FirewallChange::Ban(v6, stored_ban(2_000)),
                        FirewallChange::Lock(
                            "100".into(),
                            StoredLock {
                                until: 3_000,
                                rule: Rule::AccountGuessing,
                                except: Vec::new(),
                            },
                        ),
                        FirewallChange::Lock(
                            "101".into(),
                            StoredLock {
                                until: 8_000,
                                rule: Rule::AccountGuessing,
                                except: Vec::new(),
                            },
                        ),
                    ],
                    ..Batch::default()
                })
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let mut bans = store.fw_bans().unwrap();
        bans.sort_by_key(|(_, b)| b.until);
        let v4_plain: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            bans,
            vec![
                (v6, stored_ban(2_000)),
                (v4, stored_ban(5_000)),
                (v4_plain, stored_ban(9_000)),
            ],
            "re-ban replaces; mapped addresses are stored as IPv4"
        );
        assert_eq!(store.fw_locks().unwrap().len(), 2);

        store
            .fw_apply(&[
                FirewallChange::Unban(v6),
                FirewallChange::Unban("192.0.2.200".parse().unwrap()),
                FirewallChange::Unlock("101".into()),
            ])
            .unwrap();
        assert_eq!(store.fw_bans().unwrap().len(), 2);
        assert_eq!(
            store.fw_locks().unwrap(),
            vec![(
                "100".to_string(),
                StoredLock {
                    until: 3_000,
                    rule: Rule::AccountGuessing,
                    except: Vec::new(),
                }
            )]
        );

        store
            .fw_apply(&[FirewallChange::PurgeExpired(5_000)])
            .unwrap();
        assert_eq!(
            store.fw_bans().unwrap(),
            vec![(v4_plain, stored_ban(9_000))]
        );
        assert!(store.fw_locks().unwrap().is_empty());
    }

    #[test]
    fn alerts_are_kept_newest_first_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let total = MAX_ALERTS + 25;
        let changes: Vec<FirewallChange> = (0..total)
            .map(|n| FirewallChange::Alert(alert(n)))
            .collect();
        for chunk in changes.chunks(4_000) {
            store.fw_apply(chunk).unwrap();
        }
        assert_eq!(store.fw_alert_count().unwrap(), MAX_ALERTS);
        let newest = store.fw_alerts(3).unwrap();
        assert_eq!(
            newest.iter().map(|a| a.at).collect::<Vec<_>>(),
            [total - 1, total - 2, total - 3]
        );
        let all = store.fw_alerts(usize::MAX).unwrap();
        assert_eq!(all.len() as u64, MAX_ALERTS);
        assert_eq!(all.last().unwrap().at, 25, "the 25 oldest were deleted");
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        store
            .fw_apply(&[FirewallChange::Alert(alert(99_999))])
            .unwrap();
        assert_eq!(
            store.fw_alerts(1).unwrap()[0].at,
            99_999,
            "sequence continues after reopen"
        );
        assert_eq!(store.fw_alert_count().unwrap(), MAX_ALERTS);
    }

    #[test]
    fn corrupt_firewall_rows_are_skipped_and_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .fw_apply(&[FirewallChange::Ban(
                "203.0.113.9".parse().unwrap(),
                stored_ban(10_000),
            )])
            .unwrap();
        {
            let txn = store.db.begin_write().unwrap();
            let mut bans = txn.open_table(BANS).unwrap();
            bans.insert("not-an-ip", b"{}".as_slice()).unwrap();
            bans.insert("192.0.2.1", b"{broken".as_slice()).unwrap();
            drop(bans);
            txn.commit().unwrap();
        }
        assert_eq!(store.fw_bans().unwrap().len(), 1);
        assert_eq!(store.corrupt_rows(), 2);
        store.fw_apply(&[FirewallChange::PurgeExpired(1)]).unwrap();
        let txn = store.db.begin_read().unwrap();
        assert_eq!(
            txn.open_table(BANS).unwrap().len().unwrap(),
            1,
            "rows that do not decode are purged, the live ban stays"
        );
    }

    #[test]
    fn cdr_pages_filter_by_start_and_resume_at_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .commit(&Batch {
                cdrs: (0..25u64).map(|i| cdr(&format!("c{i}"), i * 10)).collect(),
                ..Batch::default()
            })
            .unwrap();
        let mut got = Vec::new();
        let mut after = 0;
        loop {
            let (page, next) = store.cdr_page(50, 200, after, 4).unwrap();
            assert!(page.len() <= 4);
            got.extend(page.into_iter().map(|c| c.call_id));
            match next {
                Some(n) => after = n,
                None => break,
            }
        }
        let want: Vec<String> = (5..20).map(|i| format!("c{i}")).collect();
        assert_eq!(got, want, "start in 50..200, oldest first, each once");
        assert_eq!(
            store.cdr_page(0, u64::MAX, u64::MAX, 10).unwrap(),
            (vec![], None)
        );
    }

    #[test]
    fn import_replaces_everything_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.ext_put(&ext("old")).unwrap();
        store
            .commit(&Batch {
                bindings: vec![BindingChange::Upsert(binding("old", "sip:old@a"))],
                cdrs: vec![cdr("old-call", 1)],
                firewall: vec![FirewallChange::Alert(alert(1))],
                ..Batch::default()
            })
            .unwrap();
        store.meta_put("cid:old", b"123").unwrap();
        store
            .phone_put(&phone("805ec0000009", "old", "correct horse"))
            .unwrap();
        let data = StoreImport {
            extensions: vec![ext("100")],
            bans: vec![("203.0.113.9".parse().unwrap(), stored_ban(9_000))],
            locks: vec![(
                "100".into(),
                StoredLock {
                    until: 5,
                    rule: Rule::AccountGuessing,
                    except: Vec::new(),
                },
            )],
            alerts: vec![alert(7), alert(8)],
            meta: vec![("fwd:100".into(), b"{}".to_vec())],
            voicemail: vec![VoicemailRecord {
                id: 42,
                mailbox: "100".into(),
                caller: "101".into(),
                at: 3,
                duration_ms: 1000,
                path: "/data/voicemail/100/a.wav".into(),
                new: false,
            }],
            phones: Some(vec![phone("805ec0000001", "100", "correct horse")]),
        };
        // A failing call-record stream changes nothing.
        let failing = vec![
            Ok(cdr("x", 1)),
            Err(StoreError::Corrupt {
                table: "cdrs",
                key: "line 2".into(),
                reason: "bad".into(),
            }),
        ];
        assert!(store.import(&data, failing.into_iter()).is_err());
        assert_eq!(store.ext_list().unwrap(), vec![ext("old")]);

        let n = store
            .import(
                &data,
                (0..3u64).map(|i| Ok::<_, StoreError>(cdr(&format!("n{i}"), i))),
            )
            .unwrap();
        assert_eq!(n, 3);
        assert_eq!(store.ext_list().unwrap(), vec![ext("100")]);
        assert!(
            store.bindings_all().unwrap().is_empty(),
            "registrations are not restored"
        );
        let ids: Vec<String> = store
            .cdr_list(10, 0)
            .unwrap()
            .into_iter()
            .map(|c| c.call_id)
            .collect();
        assert_eq!(ids, ["n2", "n1", "n0"]);
        assert_eq!(store.fw_bans().unwrap(), data.bans);
        assert_eq!(store.fw_locks().unwrap(), data.locks);
        assert_eq!(store.fw_alerts(10).unwrap(), vec![alert(8), alert(7)]);
        assert_eq!(store.meta_get("cid:old").unwrap(), None);
        assert_eq!(store.meta_get("fwd:100").unwrap(), Some(b"{}".to_vec()));
        assert_eq!(
            store.meta_get(SCHEMA_KEY).unwrap(),
            Some(SCHEMA_VERSION.to_string().into_bytes()),
            "the imported rows are in this firmware's layout"
        );
        assert_eq!(store.vm_list(None).unwrap(), data.voicemail);
        assert_eq!(Some(store.phone_list().unwrap()), data.phones);

        let snap = store.snapshot().unwrap();
        store.ext_put(&ext("later")).unwrap();
        assert_eq!(
            snap.extensions().unwrap(),
            vec![ext("100")],
            "a snapshot does not move"
        );
        let mut seen = Vec::new();
        snap.for_each_cdr(|c| -> Result<(), StoreError> {
            seen.push(c.call_id);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, ["n0", "n1", "n2"]);
        assert_eq!(snap.alerts().unwrap(), vec![alert(7), alert(8)]);
        assert_eq!(snap.voicemail().unwrap(), data.voicemail);
        assert_eq!(snap.meta().unwrap(), data.meta);
        assert_eq!(Some(snap.phones().unwrap()), data.phones);
    }

    #[test]
    fn a_backup_without_phones_keeps_only_the_phones_whose_password_still_registers() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // 100's phone was added before the backup (its digest in the backup is its
        // password's); 101's after (the backup has 101's older password); 102's extension
        // is not in the backup at all.
        let kept = phone("805ec0000001", "100", "correct horse");
        for p in [
            kept.clone(),
            phone("805ec0000002", "101", "made after the backup"),
            phone("805ec0000003", "102", "correct horse"),
        ] {
            store.phone_put(&p).unwrap();
        }
        {
            let txn = store.db.begin_write().unwrap();
            let mut phones = txn.open_table(PHONES).unwrap();
            phones
                .insert("805ec0000004", b"{broken".as_slice())
                .unwrap();
            drop(phones);
            txn.commit().unwrap();
        }
        let data = StoreImport {
            extensions: vec![ext("100"), ext("101")],
            phones: None,
            ..StoreImport::default()
        };
        store
            .import(&data, std::iter::empty::<Result<Cdr, StoreError>>())
            .unwrap();
        assert_eq!(store.phone_list().unwrap(), vec![kept]);
        assert_eq!(store.phone_count().unwrap(), 1, "the broken row went too");
    }

    fn crash_batch(n: u64) -> Batch {
        Batch {
            bindings: vec![BindingChange::Upsert(binding(
                "100",
                &format!("sip:100@10.0.{}.{}", n / 250, n % 250),
            ))],
            cdrs: vec![cdr(&format!("crash-{n}"), n)],
            ..Batch::default()
        }
    }

    /// Child half of `kill9_loses_no_acknowledged_batch`: commits batches forever, printing
    /// each one only after `commit` returned. Does nothing unless started by that test.
    #[test]
    #[ignore = "run by kill9_loses_no_acknowledged_batch as a child process"]
    fn crash_child() {
        let Some(dir) = std::env::var_os(CHILD_ENV) else {
            return;
        };
        let store = Store::open(Path::new(&dir)).unwrap();
        let mut out = std::io::stdout().lock();
        for n in 0..1_000_000u64 {
            store.commit(&crash_batch(n)).unwrap();
            writeln!(out, "committed {n}").unwrap();
            out.flush().unwrap();
        }
    }

    #[test]
    fn kill9_loses_no_acknowledged_batch() {
        use std::os::unix::process::ExitStatusExt;

        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::tests::crash_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut acked = Vec::new();
        for line in lines.by_ref() {
            if let Some(n) = line.unwrap().strip_prefix("committed ") {
                acked.push(n.parse::<u64>().unwrap());
                if acked.len() == 40 {
                    child.kill().unwrap();
                    break;
                }
            }
        }
        // Lines printed after our count but before the signal landed were acked too.
        for line in lines {
            let Ok(line) = line else { break };
            if let Some(n) = line.strip_prefix("committed ") {
                acked.push(n.parse().unwrap());
            }
        }
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "child was killed mid-run");
        assert!(
            acked.len() >= 40,
            "child acknowledged {} batches",
            acked.len()
        );

        let store = Store::open(dir.path()).unwrap();
        let contacts: std::collections::HashSet<String> = store
            .bindings_all()
            .unwrap()
            .into_iter()
            .map(|b| b.contact)
            .collect();
        let calls: std::collections::HashSet<String> = store
            .cdr_list(usize::MAX, 0)
            .unwrap()
            .into_iter()
            .map(|c| c.call_id)
            .collect();
        for n in &acked {
            let batch = crash_batch(*n);
            let BindingChange::Upsert(b) = &batch.bindings[0] else {
                unreachable!()
            };
            assert!(contacts.contains(&b.contact), "binding of batch {n} lost");
            assert!(
                calls.contains(&format!("crash-{n}")),
                "cdr of batch {n} lost"
            );
        }
        // Atomicity: a batch is either wholly there or wholly absent.
        assert_eq!(contacts.len(), calls.len());
        assert_eq!(store.corrupt_rows(), 0);
    }
}
