//! Opening RocksDB: column families and their options.

use rocksdb::{BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Options, DB};

use crate::config::StoreConfig;
use crate::error::StoreError;

/// Envelopes and per-recipient state (see `keys` for the layout).
pub const CF_ENVELOPES: &str = "envelopes";
/// Message bodies, once per message.
pub const CF_BODIES: &str = "bodies";
/// Due-time index per shard; rebuilt from the recipient records at every open.
pub const CF_DUE: &str = "due";
/// Recipients by destination domain, for suspend, list and admin bounce.
pub const CF_DOMAINS: &str = "domains";
/// The id high-water mark and the suspensions.
pub const CF_META: &str = "meta";
/// Records that failed their checks, kept for an operator to inspect.
pub const CF_QUARANTINE: &str = "quarantine";

const COLUMN_FAMILIES: [&str; 6] = [CF_ENVELOPES, CF_BODIES, CF_DUE, CF_DOMAINS, CF_META, CF_QUARANTINE];

pub(crate) const META_NEXT_ID: &[u8] = b"next_id";
pub(crate) const META_SUSPEND_PREFIX: &[u8] = b"suspend/";
/// Idempotency keys of enqueues (`types::Idempotency`): `idempotency/<key>`.
pub(crate) const META_IDEMPOTENCY_PREFIX: &[u8] = b"idempotency/";

/// A column family handle by name.
pub(crate) fn cf<'a>(db: &'a DB, name: &str) -> &'a ColumnFamily {
    #[allow(clippy::expect_used)]
    // Invariant: `open` creates every name in COLUMN_FAMILIES, and callers only use
    // those constants; the due family is dropped and recreated before any other use.
    db.cf_handle(name).expect("column family opened at start")
}

fn db_options(config: &StoreConfig) -> Options {
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    options.set_paranoid_checks(true);
    // Two cores: one background flush and one compaction at a time.
    options.increase_parallelism(2);
    options.set_max_background_jobs(2);
    // With several column families, a quiet one can pin old WAL files; bound the WAL
    // so RocksDB flushes it and keeps disk use and recovery time in check: eight
    // write buffers' worth, at most 512 MiB (the default buffers reach that cap; a
    // store with small buffers gets a WAL to match).
    options.set_max_total_wal_size((config.write_buffer_bytes as u64).saturating_mul(8).min(WAL_TOTAL_MAX));
    options.set_bytes_per_sync(1024 * 1024);
    // WAL records stay in RocksDB's buffer until FlushWAL: the syncer thread then
    // writes and syncs them together, so the writer thread never copies WAL bytes
    // into the kernel (that copy was half of its time at 256 producers).
    options.set_manual_wal_flush(true);
    // RocksDB's own info log: bounded, so a long-running node never fills its disk.
    options.set_max_log_file_size(16 * 1024 * 1024);
    options.set_keep_log_file_num(4);
    options.set_write_buffer_size(config.write_buffer_bytes);
    options
}

pub(crate) fn cf_options(name: &str, config: &StoreConfig) -> Options {
    let mut options = Options::default();
    options.set_compression_type(DBCompressionType::Lz4);
    let buffer = match name {
        // Index families hold tiny keys: a smaller buffer flushes (and so drops
        // deletion tombstones) sooner.
        CF_DUE | CF_DOMAINS => (config.write_buffer_bytes / 4).max(4 * 1024 * 1024),
        CF_META | CF_QUARANTINE => 4 * 1024 * 1024,
        _ => config.write_buffer_bytes,
    };
    options.set_write_buffer_size(buffer);
    // A full memtable waits for its flush while the next one fills: with RocksDB's
    // default of two, one slow flush (both cores busy with ingest) stops writes, and
    // `no_slowdown` turns that stop into a refusal at once. Four lets three wait for a
    // flush before writes stop, at the cost of memory only while flushes lag.
    options.set_max_write_buffer_number(WRITE_BUFFERS_PER_FAMILY_MAX);
    // One block cache for every family, index and filter blocks in it: without it
    // RocksDB gives each family a cache of its own and keeps each table file's index
    // outside any, so resident memory grows with the families and the files.
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&config.block_cache.get(config.block_cache_bytes));
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    options.set_block_based_table_factory(&table);
    options
}

/// The write-ahead log's files together at most, before RocksDB flushes the
/// families that pin the oldest.
const WAL_TOTAL_MAX: u64 = 512 * 1024 * 1024;

/// Memtables per column family at most (one filling, the rest waiting for flushes).
const WRITE_BUFFERS_PER_FAMILY_MAX: i32 = 4;

pub(crate) fn open_db(config: &StoreConfig) -> Result<DB, StoreError> {
    std::fs::create_dir_all(&config.path)
        .map_err(|error| StoreError::Storage(format!("creating {}: {error}", config.path.display())))?;
    // Version 1's families (created on a new store), and whatever families upgrade
    // steps added since (`format`): a store is opened with all it has.
    let mut names: Vec<String> = COLUMN_FAMILIES.iter().map(|name| name.to_string()).collect();
    for existing in DB::list_cf(&Options::default(), &config.path).unwrap_or_default() {
        if existing != "default" && !names.contains(&existing) {
            names.push(existing);
        }
    }
    let families = names.iter().map(|name| ColumnFamilyDescriptor::new(name, cf_options(name, config)));
    Ok(DB::open_cf_descriptors(&db_options(config), &config.path, families)?)
}
