//! Opening an existing store: check every record, rebuild what lives in memory and
//! the due index, and make everything that was in flight due again.
//!
//! In-flight state is never written (a claim only deletes the recipient's due key),
//! so after a crash a claimed recipient is simply a waiting record without a due key.
//! Recovery drops the due index and rebuilds it from the records: whatever was
//! claimed, deferred or half-resumed comes out due again, and nothing is stuck.
//! A record that fails its checks is moved to the quarantine family and reported;
//! the rest of the queue carries on.

use std::sync::Arc;

use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};

use crate::codec::{decode_envelope, decode_recipient, DecodeError};
use crate::config::StoreConfig;
use crate::db::{
    cf, cf_options, CF_BODIES, CF_DUE, CF_ENVELOPES, CF_META, CF_QUARANTINE, META_NEXT_ID, META_SUSPEND_PREFIX,
};
use crate::error::StoreError;
use crate::keys::{due_key, envelope_key, parse_envelopes_key, recipient_key, shard_of, EnvelopesKey};
use crate::shared::Tables;
use crate::types::{Envelope, MessageId, RecipientKey, RecipientRecord, RecipientState, ID_SEQUENCE_BITS};
use crate::writer::now_ms;

/// Operations per recovery write: bounds memory while rebuilding a large queue.
const RECOVERY_BATCH_OPS: usize = 50_000;
/// Quarantined records listed in the report; beyond this they are only counted.
const REPORT_QUARANTINE_MAX: usize = 1_000;

/// What `open` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Messages in the queue.
    pub messages: u64,
    /// Recipients in the queue (none is in flight after open).
    pub recipients: u64,
    /// Recipients given a due-index entry (the rest are suspended).
    pub recipients_due: u64,
    /// Records moved to quarantine, in all (the list below stops at 1,000).
    pub quarantined_count: u64,
    pub quarantined: Vec<QuarantinedRecord>,
    /// The format version found, and the upgrades run.
    pub format: crate::format::FormatReport,
}

/// A record that failed its checks and was set aside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuarantinedRecord {
    pub column_family: &'static str,
    /// The key, in hex.
    pub key: String,
    pub reason: String,
}

pub(crate) struct Recovered {
    pub tables: Tables,
    pub next_id: u64,
    pub report: OpenReport,
}

struct Scan<'a> {
    db: &'a DB,
    config: &'a StoreConfig,
    tables: Tables,
    report: OpenReport,
    batch: WriteBatch,
    /// The message whose recipients are being read, and how many of them are live.
    current: Option<(MessageId, Arc<Envelope>, u32)>,
    last_id: u64,
}

pub(crate) fn recover(db: &mut DB, config: &StoreConfig) -> Result<Recovered, StoreError> {
    db.drop_cf(CF_DUE)?;
    db.create_cf(CF_DUE, &cf_options(CF_DUE, config))?;
    let mut tables = Tables::default();
    let (suspended, stored_next_id) = read_meta(db)?;
    tables.suspended = suspended;
    let mut scan = Scan {
        db,
        config,
        tables,
        report: OpenReport::default(),
        batch: WriteBatch::default(),
        current: None,
        last_id: 0,
    };
    for item in db.iterator_cf(cf(db, CF_ENVELOPES), IteratorMode::Start) {
        let (key, value) = item?;
        scan.visit(&key, &value)?;
    }
    scan.finish_message()?;
    let mut options = WriteOptions::default();
    options.set_sync(true);
    db.write_opt(std::mem::take(&mut scan.batch), &options)?;
    let next_id = stored_next_id.max(scan.last_id + 1).max(now_ms() << ID_SEQUENCE_BITS);
    scan.report.messages = scan.tables.remaining.len() as u64;
    Ok(Recovered { tables: scan.tables, next_id, report: scan.report })
}

type Suspensions = std::collections::HashMap<String, Option<u64>>;

fn read_meta(db: &DB) -> Result<(Suspensions, u64), StoreError> {
    let meta = cf(db, CF_META);
    let next_id = match db.get_cf(meta, META_NEXT_ID)? {
        Some(raw) if raw.len() == 8 => u64::from_be_bytes(raw[..].try_into().unwrap_or([0; 8])),
        _ => 0,
    };
    let mut suspended = Suspensions::new();
    let mode = IteratorMode::From(META_SUSPEND_PREFIX, rocksdb::Direction::Forward);
    for item in db.iterator_cf(meta, mode) {
        let (key, value) = item?;
        let Some(domain) = key.strip_prefix(META_SUSPEND_PREFIX) else { break };
        let until = u64::from_be_bytes(value[..].try_into().unwrap_or([0; 8]));
        suspended.insert(String::from_utf8_lossy(domain).into_owned(), (until != 0).then_some(until));
    }
    Ok((suspended, next_id))
}

impl Scan<'_> {
    fn visit(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        match parse_envelopes_key(key) {
            None => self.quarantine(CF_ENVELOPES, key, value, DecodeError::Key(key.len()).to_string()),
            Some(EnvelopesKey::Envelope(id)) => {
                self.finish_message()?;
                self.last_id = self.last_id.max(id.as_u64());
                match decode_envelope(id, value) {
                    Ok(envelope) => self.current = Some((id, Arc::new(envelope), 0)),
                    Err(reason) => {
                        self.quarantine(CF_ENVELOPES, key, value, reason.to_string());
                        self.quarantine_body(id)?;
                    }
                }
            }
            Some(EnvelopesKey::Recipient(recipient)) => {
                let owner = self.current.as_ref().map(|(id, _, _)| *id);
                if owner != Some(recipient.message) {
                    self.quarantine(CF_ENVELOPES, key, value, "recipient without a valid envelope".into());
                } else {
                    match decode_recipient(value) {
                        Ok(record) => self.restore(recipient, record),
                        Err(reason) => self.quarantine(CF_ENVELOPES, key, value, reason.to_string()),
                    }
                }
            }
        }
        self.maybe_write()
    }

    /// Puts a valid recipient back in the queue: due unless its domain is suspended.
    fn restore(&mut self, key: RecipientKey, mut record: RecipientRecord) {
        let tenant = self.current.as_ref().and_then(|(_, envelope, _)| envelope.tenant.clone());
        let suspended = self.tables.is_held(&record.domain, tenant.as_deref());
        let state = if suspended { RecipientState::Suspended } else { RecipientState::waiting(record.attempts) };
        if state != record.state {
            record.state = state;
            self.batch.put_cf(cf(self.db, CF_ENVELOPES), recipient_key(key), crate::codec::encode_recipient(&record));
        }
        if !suspended {
            let shard = shard_of(&record.domain, self.config.shard_count);
            self.batch.put_cf(cf(self.db, CF_DUE), due_key(shard, record.due_ms, key), []);
            self.report.recipients_due += 1;
        }
        self.tables.count_move(&record.domain, None, Some(state));
        self.report.recipients += 1;
        if let Some((_, _, live)) = self.current.as_mut() {
            *live += 1;
        }
    }

    /// Closes the message being read: records its live count, or sets it aside when
    /// none of its recipients survived the checks.
    fn finish_message(&mut self) -> Result<(), StoreError> {
        let Some((id, envelope, live)) = self.current.take() else { return Ok(()) };
        if live > 0 {
            self.tables.remaining.insert(id, live);
            return Ok(());
        }
        let raw = crate::codec::encode_envelope(&envelope);
        self.quarantine(CF_ENVELOPES, &envelope_key(id), &raw, "envelope without recipients".into());
        self.quarantine_body(id)
    }

    /// The message's body and its recipients' header blocks (`id` and `id ++ index`
    /// in the bodies family) go with it.
    fn quarantine_body(&mut self, id: MessageId) -> Result<(), StoreError> {
        let prefix = envelope_key(id);
        let mode = IteratorMode::From(&prefix, rocksdb::Direction::Forward);
        let mut found = Vec::new();
        for item in self.db.iterator_cf(cf(self.db, CF_BODIES), mode) {
            let (key, value) = item?;
            if !key.starts_with(&prefix) {
                break;
            }
            found.push((key, value));
        }
        for (key, value) in found {
            let what = if key.len() == prefix.len() { "body" } else { "header block" };
            self.quarantine(CF_BODIES, &key, &value, format!("{what} of a quarantined message"));
        }
        Ok(())
    }

    fn quarantine(&mut self, family: &'static str, key: &[u8], value: &[u8], reason: String) {
        let hex: String = key.iter().map(|byte| format!("{byte:02x}")).collect();
        tracing::error!(column_family = family, key = %hex, %reason, "corrupt record quarantined");
        let mut quarantine_key = family.as_bytes().to_vec();
        quarantine_key.push(b'/');
        quarantine_key.extend_from_slice(key);
        self.batch.put_cf(cf(self.db, CF_QUARANTINE), quarantine_key, value);
        self.batch.delete_cf(cf(self.db, family), key);
        self.report.quarantined_count += 1;
        if self.report.quarantined.len() < REPORT_QUARANTINE_MAX {
            self.report.quarantined.push(QuarantinedRecord { column_family: family, key: hex, reason });
        }
    }

    fn maybe_write(&mut self) -> Result<(), StoreError> {
        if self.batch.len() >= RECOVERY_BATCH_OPS {
            self.db.write(std::mem::take(&mut self.batch))?;
        }
        Ok(())
    }
}
