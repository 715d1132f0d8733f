//! The store's on-disk format version, and the upgrades between versions.
//!
//! The version is a 4-byte big-endian integer under `format_version` in the meta
//! family. A store without it was written before versions existed (ringmail up to
//! November 2026): its layout is version 1. At open, [`upgrade`] runs every step from
//! the stored version to [`FORMAT_VERSION`] in order, each one synced with its new
//! version number, so an interrupted upgrade resumes at the step it stopped in. A
//! store written by a newer ringmail (a higher version) is refused, never guessed at.
//!
//! Every column family added after version 1 is created by its upgrade step (never by
//! `create_missing_column_families`), so the families a store has always match its
//! version; `db::open_db` opens whatever families the store has.

use rocksdb::{WriteBatch, WriteOptions, DB};

use crate::config::StoreConfig;
use crate::db::{cf, CF_META};
use crate::error::StoreError;

/// The format this code writes. Version 1: the families of `db::COLUMN_FAMILIES`,
/// records as `codec` encodes them. Version 2: an envelope may end in a flags byte
/// (its recipients have header blocks) and the bodies family may hold a header block
/// at `id ++ index` beside the body at `id`; nothing of version 1 changes, so the
/// step from 1 has nothing to rewrite. It exists so that an older ringmail refuses
/// a store that may hold header blocks instead of quarantining their envelopes.
pub const FORMAT_VERSION: u32 = 2;

pub(crate) const META_FORMAT_VERSION: &[u8] = b"format_version";

/// One step: from version `from` to `from + 1`.
struct Upgrade {
    from: u32,
    /// What the step does, for the log.
    what: &'static str,
    run: fn(&mut DB, &StoreConfig) -> Result<(), StoreError>,
}

/// The steps, in order. A new column family `x` at version 3 would be
/// `Upgrade { from: 2, what: "create x", run: |db, config| Ok(db.create_cf("x", &cf_options("x", config))?) }`.
const UPGRADES: &[Upgrade] =
    &[Upgrade { from: 1, what: "per-recipient header blocks (nothing to rewrite)", run: |_db, _config| Ok(()) }];

const _: () = {
    // The steps cover every version below the current one, in order.
    let mut index = 0;
    while index < UPGRADES.len() {
        assert!(UPGRADES[index].from == index as u32 + 1, "upgrade steps must go 1, 2, 3, ...");
        index += 1;
    }
    assert!(UPGRADES.len() as u32 + 1 == FORMAT_VERSION, "one upgrade step per version after 1");
};

/// What the format check at open found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FormatReport {
    /// The version the store had when opened (1 for a store written before versions).
    pub found: u32,
    /// Upgrade steps run, in order.
    pub upgraded: Vec<&'static str>,
}

/// Brings the store at `db` to [`FORMAT_VERSION`]; refuses a store of a newer format.
pub(crate) fn upgrade(db: &mut DB, config: &StoreConfig) -> Result<FormatReport, StoreError> {
    // No version: written before versions existed, or brand new; the same layout.
    let found = stored_version(db)?.unwrap_or(1);
    if found > FORMAT_VERSION {
        return Err(StoreError::UnsupportedFormat { found, supported: FORMAT_VERSION });
    }
    let mut report = FormatReport { found, upgraded: Vec::new() };
    for step in UPGRADES.iter().filter(|step| step.from >= found) {
        (step.run)(db, config)?;
        write_version(db, step.from + 1)?;
        report.upgraded.push(step.what);
    }
    if stored_version(db)? != Some(FORMAT_VERSION) {
        write_version(db, FORMAT_VERSION)?;
    }
    Ok(report)
}

fn stored_version(db: &DB) -> Result<Option<u32>, StoreError> {
    match db.get_cf(cf(db, CF_META), META_FORMAT_VERSION)? {
        None => Ok(None),
        Some(raw) => match <[u8; 4]>::try_from(&raw[..]) {
            Ok(bytes) => Ok(Some(u32::from_be_bytes(bytes))),
            Err(_) => Err(StoreError::UnsupportedFormat { found: u32::MAX, supported: FORMAT_VERSION }),
        },
    }
}

fn write_version(db: &DB, version: u32) -> Result<(), StoreError> {
    let mut batch = WriteBatch::default();
    batch.put_cf(cf(db, CF_META), META_FORMAT_VERSION, version.to_be_bytes());
    let mut options = WriteOptions::default();
    options.set_sync(true);
    db.write_opt(batch, &options)?;
    Ok(())
}
