//! Store configuration and its limits.

use std::path::PathBuf;

use crate::error::StoreError;

/// Whether an enqueue waits for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `enqueue` returns after the write-ahead log is synced (fdatasync). The default.
    Sync,
    /// `enqueue` returns after the write reaches the OS page cache: a power failure
    /// or kernel crash can lose acknowledged mail (a process crash cannot).
    Os,
}

/// Limits enforced on every enqueue, each with a clear error.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest body accepted. Default 50 MiB, above what mailbox providers accept.
    pub message_size_max_bytes: u64,
    /// Recipients in one message. Default 10,000 (a large list fan-out).
    pub recipients_per_message_max: u32,
    /// Recipients in the queue (not terminal), all messages together. Default 10 M.
    pub queue_recipients_max: u64,
    /// Messages in one `enqueue` call. Default 10,000.
    pub batch_messages_max: usize,
    /// Addresses (RFC 5321 §4.5.3.1: a path is at most 256 octets; we allow a margin).
    pub address_length_max: usize,
    /// Tenant, campaign, every metadata key and value, and the response text.
    pub field_length_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            message_size_max_bytes: 50 * 1024 * 1024,
            recipients_per_message_max: 10_000,
            queue_recipients_max: 10_000_000,
            batch_messages_max: 10_000,
            address_length_max: 320,
            field_length_max: 4096,
        }
    }
}

/// RocksDB's block cache of a store, made once (see [`StoreConfig::block_cache_bytes`]).
#[derive(Clone, Default)]
pub(crate) struct BlockCache(std::sync::Arc<std::sync::OnceLock<rocksdb::Cache>>);

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BlockCache")
    }
}

impl BlockCache {
    pub(crate) fn get(&self, bytes: usize) -> rocksdb::Cache {
        self.0.get_or_init(|| rocksdb::Cache::new_lru_cache(bytes)).clone()
    }
}

/// How to open a store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// Number of delivery shards the due index is split into (at least 1).
    pub shard_count: u16,
    pub durability: Durability,
    pub limits: Limits,
    /// Enqueue requests waiting for the writer. Beyond this, `ChannelFull` at once.
    /// Default 4,096: at ~3 ms a sync and up to `group_messages_max` a group, a full
    /// channel is several syncs of work, so refusing beyond it costs no throughput.
    pub ingest_channel_capacity: usize,
    /// Claims, state changes and admin requests waiting for the writer. Default 4,096.
    pub control_channel_capacity: usize,
    /// Messages packed into one synced write at most. Default 1,024.
    pub group_messages_max: usize,
    /// Body bytes packed into one synced write at most. Default 64 MiB.
    pub group_bytes_max: usize,
    /// RocksDB write buffer per column family. Default 64 MiB.
    pub write_buffer_bytes: usize,
    /// RocksDB's block cache, one for every column family, holding data blocks and
    /// the index and filter blocks too (so the memory they take is bounded by it,
    /// not by the number of table files). Default 64 MiB.
    pub block_cache_bytes: usize,
    /// The cache itself, made at the first open with this configuration; clones of
    /// the configuration share it.
    pub(crate) block_cache: BlockCache,
    /// One write or sync under way longer than this makes the store `Stalled`
    /// (hung storage): admission refuses, and waiters using `Pending::or_stalled` are
    /// answered `Unhealthy(Stalled)`. Default 30 s.
    pub stall_after: std::time::Duration,
    /// How long an enqueue's idempotency key is kept (then swept). Default 24 h.
    pub idempotency_ttl: std::time::Duration,
}

impl StoreConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StoreConfig {
            path: path.into(),
            shard_count: 1,
            durability: Durability::Sync,
            limits: Limits::default(),
            ingest_channel_capacity: 4096,
            control_channel_capacity: 4096,
            group_messages_max: 1024,
            group_bytes_max: 64 * 1024 * 1024,
            write_buffer_bytes: 64 * 1024 * 1024,
            block_cache_bytes: 64 * 1024 * 1024,
            block_cache: BlockCache::default(),
            stall_after: std::time::Duration::from_secs(30),
            idempotency_ttl: std::time::Duration::from_secs(24 * 3600),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), StoreError> {
        let problem = if self.shard_count == 0 {
            "shard_count must be at least 1"
        } else if self.ingest_channel_capacity == 0 || self.control_channel_capacity == 0 {
            "channel capacities must be at least 1"
        } else if self.stall_after.is_zero() {
            "stall_after must be above 0"
        } else if self.group_messages_max == 0 || self.group_bytes_max == 0 {
            "group bounds must be at least 1"
        } else if self.limits.recipients_per_message_max == 0 || self.limits.batch_messages_max == 0 {
            "recipients_per_message_max and batch_messages_max must be at least 1"
        } else {
            return Ok(());
        };
        Err(StoreError::Config(problem.to_string()))
    }
}
