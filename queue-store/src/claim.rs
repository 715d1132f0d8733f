//! The writer's reading operations: claim due recipients, suspend and resume a
//! domain, bounce administratively. Each runs after the turn's pending batch is
//! written, so what it reads is current.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};

use crate::codec::{decode_envelope, decode_recipient};
use crate::db::{cf, CF_DOMAINS, CF_DUE, CF_ENVELOPES, CF_META, META_SUSPEND_PREFIX};
use crate::error::StoreError;
use crate::keys::{
    domain_prefix, due_bound, envelope_key, parse_domain_key_tail, parse_due_key, parse_envelopes_key, recipient_key,
    tenant_key, EnvelopesKey, DUE_KEY_LEN, TENANT_PREFIX,
};
use crate::shared::InFlight;
use crate::types::{
    AdminReport, Claimed, Envelope, Lease, MessageId, RecipientKey, RecipientRecord, RecipientState, Selector,
    TerminalKind,
};
use crate::writer::Writer;

/// Recipients rewritten per write in admin actions: bounds one batch's memory
/// (a suspended big domain may hold millions) while keeping writes few.
const ADMIN_CHUNK: usize = 10_000;
/// Recipients one claim may take at most, whatever the caller asks.
pub const CLAIM_LIMIT_MAX: usize = 10_000;

impl Writer {
    pub(crate) fn claim(
        &mut self,
        shard: u16,
        now_ms: u64,
        limit: usize,
        bytes_max: Option<u64>,
    ) -> Result<Vec<Claimed>, StoreError> {
        if shard >= self.config.shard_count {
            return Err(StoreError::Config(format!("shard {shard} of {}", self.config.shard_count)));
        }
        let mut due = self.due_keys(shard, now_ms, limit.min(CLAIM_LIMIT_MAX))?;
        let envelopes = self.read_envelopes(due.iter().map(|(_, key)| key.message))?;
        if let Some(bytes_max) = bytes_max {
            // The bodies the claimer will read: each message's once.
            let mut seen = std::collections::HashSet::new();
            let mut bytes = 0u64;
            let mut keep = due.len();
            for (index, (_, key)) in due.iter().enumerate() {
                if seen.insert(key.message) {
                    let length = envelopes.get(&key.message).map_or(0, |envelope| envelope.body_len);
                    if index > 0 && bytes.saturating_add(length) > bytes_max {
                        keep = index;
                        break;
                    }
                    bytes = bytes.saturating_add(length);
                }
            }
            due.truncate(keep);
        }
        let Some(last) = due.last().map(|(raw, _)| *raw) else {
            return Ok(Vec::new());
        };
        let keys: Vec<RecipientKey> = due.iter().map(|(_, key)| *key).collect();
        let records = self.read_recipients(&keys)?;
        // Decide and write first; the tables and the floor change only once the
        // write succeeded, so a failed claim leaves memory as it was.
        let mut batch = WriteBatch::default();
        let mut taken = Vec::with_capacity(keys.len());
        let mut held = Vec::new();
        let suspended: Vec<bool> = {
            let tables = self.shared.tables();
            records
                .iter()
                .zip(&keys)
                .map(|(r, key)| {
                    let tenant = envelopes.get(&key.message).and_then(|e| e.tenant.as_deref());
                    r.as_ref().is_some_and(|r| tables.is_held(&r.domain, tenant))
                })
                .collect()
        };
        for (((raw, key), record), suspended) in due.into_iter().zip(records).zip(suspended) {
            batch.delete_cf(cf(&self.db, CF_DUE), raw);
            let (Some(mut record), Some(envelope)) = (record, envelopes.get(&key.message)) else {
                continue; // a stale index entry: nothing to deliver
            };
            if suspended {
                let from = record.state;
                record.state = RecipientState::Suspended;
                self.put_recipient(&mut batch, key, &record);
                held.push((record.domain, from));
                continue;
            }
            taken.push((key, Arc::clone(envelope), record));
        }
        self.write(batch, false)?;
        // Every key before `last` in this shard was just deleted or claimed before.
        self.floors[usize::from(shard)] = Some(last);
        let shared = Arc::clone(&self.shared);
        let mut tables = shared.tables();
        for (domain, from) in held {
            tables.count_move(&domain, Some(from), Some(RecipientState::Suspended));
        }
        let mut claimed = Vec::with_capacity(taken.len());
        for (key, envelope, record) in taken {
            tables.count_move(&record.domain, Some(record.state), Some(RecipientState::InFlight));
            let mut shown = record.clone();
            shown.state = RecipientState::InFlight;
            let (lease, view) = Lease::new();
            // A header block is read with the body, by whoever reads the body.
            claimed.push(Claimed { key, envelope: Arc::clone(&envelope), recipient: shown, head: None, lease });
            tables.in_flight.insert(key, InFlight::new(envelope, record, view));
        }
        drop(tables);
        self.shared.counters.claimed.fetch_add(claimed.len() as u64, Ordering::Relaxed);
        Ok(claimed)
    }

    fn due_keys(
        &self,
        shard: u16,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<([u8; DUE_KEY_LEN], RecipientKey)>, StoreError> {
        let lower = match self.floors[usize::from(shard)] {
            Some(floor) => floor.to_vec(),
            None => due_bound(shard, 0).to_vec(),
        };
        // Past every key due at `now_ms`: a due key is 22 bytes, this is 23.
        let mut upper = due_bound(shard, now_ms).to_vec();
        upper.extend_from_slice(&[0xff; DUE_KEY_LEN - 10 + 1]);
        let mut options = ReadOptions::default();
        options.set_iterate_lower_bound(lower);
        options.set_iterate_upper_bound(upper);
        let mut out = Vec::new();
        for item in self.db.iterator_cf_opt(cf(&self.db, CF_DUE), options, IteratorMode::Start) {
            if out.len() >= limit {
                break;
            }
            let (raw, _) = item?;
            let Some((_, _, key)) = parse_due_key(&raw) else {
                tracing::warn!(key = ?raw, "malformed due-index key dropped");
                self.db.delete_cf(cf(&self.db, CF_DUE), &raw)?;
                continue;
            };
            let mut fixed = [0u8; DUE_KEY_LEN];
            fixed.copy_from_slice(&raw);
            out.push((fixed, key));
        }
        Ok(out)
    }

    /// Records of these recipients; `None` where absent or corrupt (counted).
    pub(crate) fn read_recipients(&self, keys: &[RecipientKey]) -> Result<Vec<Option<RecipientRecord>>, StoreError> {
        let family = cf(&self.db, CF_ENVELOPES);
        let raw_keys: Vec<[u8; 12]> = keys.iter().map(|key| recipient_key(*key)).collect();
        let values = self.db.batched_multi_get_cf(family, &raw_keys, false);
        let mut out = Vec::with_capacity(keys.len());
        for (key, value) in keys.iter().zip(values) {
            out.push(match value? {
                None => None,
                Some(raw) => match decode_recipient(&raw) {
                    Ok(record) => Some(record),
                    Err(reason) => {
                        self.shared.counters.corrupt_records.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(%key, %reason, "corrupt recipient record skipped");
                        None
                    }
                },
            });
        }
        Ok(out)
    }

    pub(crate) fn read_envelopes(
        &self,
        ids: impl Iterator<Item = MessageId>,
    ) -> Result<HashMap<MessageId, Arc<Envelope>>, StoreError> {
        let mut ids: Vec<MessageId> = ids.collect();
        ids.sort_unstable();
        ids.dedup();
        let raw_keys: Vec<[u8; 8]> = ids.iter().map(|id| envelope_key(*id)).collect();
        let values = self.db.batched_multi_get_cf(cf(&self.db, CF_ENVELOPES), &raw_keys, true);
        let mut out = HashMap::with_capacity(ids.len());
        for (id, value) in ids.into_iter().zip(values) {
            let Some(raw) = value? else { continue };
            match decode_envelope(id, &raw) {
                Ok(envelope) => {
                    out.insert(id, Arc::new(envelope));
                }
                Err(reason) => {
                    self.shared.counters.corrupt_records.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%id, %reason, "corrupt envelope skipped");
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn suspend(&mut self, domain: &str, until_ms: Option<u64>) -> Result<AdminReport, StoreError> {
        if let Some(tenant) = domain.strip_prefix(TENANT_PREFIX) {
            return self.suspend_tenant(tenant, until_ms);
        }
        let domain = domain.to_ascii_lowercase();
        // 0 on disk means "no end": a timed suspension ends at 1 ms at the earliest.
        let until_ms = until_ms.map(|until| until.max(1));
        let mut meta = WriteBatch::default();
        meta.put_cf(cf(&self.db, CF_META), suspend_key(&domain), until_ms.unwrap_or(0).to_be_bytes());
        self.write(meta, true)?;
        self.shared.tables().suspended.insert(domain.clone(), until_ms);
        self.rewrite_domain(&domain, |record| match record.state {
            RecipientState::Queued | RecipientState::Deferred => {
                record.state = RecipientState::Suspended;
                true
            }
            _ => false,
        })
    }

    pub(crate) fn resume(&mut self, domain: &str) -> Result<AdminReport, StoreError> {
        if let Some(tenant) = domain.strip_prefix(TENANT_PREFIX) {
            return self.resume_tenant(tenant);
        }
        let domain = domain.to_ascii_lowercase();
        let mut meta = WriteBatch::default();
        meta.delete_cf(cf(&self.db, CF_META), suspend_key(&domain));
        self.write(meta, true)?;
        self.shared.tables().suspended.remove(&domain);
        self.rewrite_domain(&domain, |record| match record.state {
            RecipientState::Suspended => {
                record.state = RecipientState::waiting(record.attempts);
                true
            }
            _ => false,
        })
    }

    /// Holds a tenant's recipients, whatever their domain: those waiting now, and
    /// the rest as they come back or come due (the claim checks the tenant).
    fn suspend_tenant(&mut self, tenant: &str, until_ms: Option<u64>) -> Result<AdminReport, StoreError> {
        let name = tenant_key(tenant);
        let until_ms = until_ms.map(|until| until.max(1));
        let mut meta = WriteBatch::default();
        meta.put_cf(cf(&self.db, CF_META), suspend_key(&name), until_ms.unwrap_or(0).to_be_bytes());
        self.write(meta, true)?;
        self.shared.tables().suspended.insert(name, until_ms);
        let keys = self.tenant_keys(tenant)?;
        self.rewrite_keys(&keys, |record| match record.state {
            RecipientState::Queued | RecipientState::Deferred => {
                record.state = RecipientState::Suspended;
                true
            }
            _ => false,
        })
    }

    /// Releases a tenant's held recipients, except those whose domain is suspended.
    fn resume_tenant(&mut self, tenant: &str) -> Result<AdminReport, StoreError> {
        let name = tenant_key(tenant);
        let mut meta = WriteBatch::default();
        meta.delete_cf(cf(&self.db, CF_META), suspend_key(&name));
        self.write(meta, true)?;
        let domains: std::collections::HashSet<String> = {
            let mut tables = self.shared.tables();
            tables.suspended.remove(&name);
            tables.suspended.keys().cloned().collect()
        };
        let keys = self.tenant_keys(tenant)?;
        self.rewrite_keys(&keys, |record| {
            if record.state == RecipientState::Suspended && !domains.contains(&record.domain) {
                record.state = RecipientState::waiting(record.attempts);
                return true;
            }
            false
        })
    }

    /// Every recipient key of the messages of `tenant` (a scan of the envelopes).
    fn tenant_keys(&self, tenant: &str) -> Result<Vec<RecipientKey>, StoreError> {
        let mut keys = Vec::new();
        let mut matching = false;
        for item in self.db.iterator_cf(cf(&self.db, CF_ENVELOPES), IteratorMode::Start) {
            let (raw, value) = item?;
            match parse_envelopes_key(&raw) {
                Some(EnvelopesKey::Envelope(id)) => {
                    matching = decode_envelope(id, &value).is_ok_and(|e| e.tenant.as_deref() == Some(tenant));
                }
                Some(EnvelopesKey::Recipient(key)) if matching => keys.push(key),
                _ => {}
            }
        }
        Ok(keys)
    }

    /// Makes a domain's deferred recipients due now (their attempt count stays).
    pub(crate) fn retry_now(&mut self, domain: &str, now_ms: u64) -> Result<AdminReport, StoreError> {
        let domain = domain.to_ascii_lowercase();
        self.rewrite_domain(&domain, |record| {
            if record.state == RecipientState::Deferred && record.due_ms > now_ms {
                record.due_ms = now_ms;
                return true;
            }
            false
        })
    }

    /// Changes the stored (not in-flight) recipients of a domain as `change` says
    /// (true: it changed one), chunk by chunk, each chunk synced.
    fn rewrite_domain(
        &mut self,
        domain: &str,
        change: impl Fn(&mut RecipientRecord) -> bool,
    ) -> Result<AdminReport, StoreError> {
        let keys = self.domain_keys(domain)?;
        self.rewrite_keys(&keys, change)
    }

    /// [`Writer::rewrite_domain`] for any set of recipients.
    fn rewrite_keys(
        &mut self,
        keys: &[RecipientKey],
        change: impl Fn(&mut RecipientRecord) -> bool,
    ) -> Result<AdminReport, StoreError> {
        let mut report = AdminReport::default();
        for chunk in keys.chunks(ADMIN_CHUNK) {
            let records = self.read_recipients(chunk)?;
            let mut batch = WriteBatch::default();
            let shared = Arc::clone(&self.shared);
            let mut tables = shared.tables();
            for (key, record) in chunk.iter().zip(records) {
                if tables.in_flight.contains_key(key) {
                    report.in_flight += 1;
                    continue;
                }
                let Some(record) = record else { continue };
                let mut changed = record.clone();
                if !change(&mut changed) {
                    continue;
                }
                self.delete_due(&mut batch, *key, &record);
                tables.count_move(&record.domain, Some(record.state), Some(changed.state));
                self.put_recipient(&mut batch, *key, &changed);
                report.changed += 1;
            }
            drop(tables);
            if let Err(error) = self.write(batch, true) {
                report.error = Some(error);
                break;
            }
        }
        Ok(report)
    }

    pub(crate) fn admin_bounce(&mut self, selector: &Selector, reason: &str) -> Result<AdminReport, StoreError> {
        let keys = match selector {
            Selector::Message(id) => self.message_keys(*id)?,
            Selector::Domain(domain) => self.domain_keys(&domain.to_ascii_lowercase())?,
        };
        let mut report = AdminReport::default();
        let reason = crate::writer::bounded(reason.to_string(), self.config.limits.field_length_max);
        for chunk in keys.chunks(ADMIN_CHUNK) {
            // A failure part-way keeps what was already done in the report.
            let read = self
                .read_recipients(chunk)
                .and_then(|records| Ok((records, self.read_envelopes(chunk.iter().map(|key| key.message))?)));
            let (records, envelopes) = match read {
                Ok(read) => read,
                Err(error) => {
                    report.error = Some(error);
                    break;
                }
            };
            let mut batch = WriteBatch::default();
            let shared = Arc::clone(&self.shared);
            let mut tables = shared.tables();
            for (key, record) in chunk.iter().zip(records) {
                if let Some(entry) = tables.in_flight.get_mut(key) {
                    entry.admin_bounce = Some(reason.clone());
                    report.in_flight += 1;
                    continue;
                }
                let (Some(record), Some(envelope)) = (record, envelopes.get(&key.message)) else { continue };
                let from = Some(record.state);
                let envelope = Arc::clone(envelope);
                let kind = TerminalKind::AdminBounced;
                let terminal = self.retire(&mut tables, &mut batch, *key, envelope, record, from, kind, reason.clone());
                report.terminal.push(terminal);
            }
            drop(tables);
            if let Err(error) = self.write(batch, true) {
                // The records above are retired in memory; the store now needs a
                // reopen (write() marks it), and the caller still logs them.
                report.error = Some(error);
                break;
            }
        }
        Ok(report)
    }

    fn domain_keys(&self, domain: &str) -> Result<Vec<RecipientKey>, StoreError> {
        let prefix = domain_prefix(domain);
        let mut keys = Vec::new();
        let mode = IteratorMode::From(&prefix, Direction::Forward);
        for item in self.db.iterator_cf(cf(&self.db, CF_DOMAINS), mode) {
            let (raw, _) = item?;
            if !raw.starts_with(&prefix) {
                break;
            }
            if let Some(key) = parse_domain_key_tail(&raw) {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    fn message_keys(&self, id: MessageId) -> Result<Vec<RecipientKey>, StoreError> {
        let prefix = envelope_key(id);
        let mut keys = Vec::new();
        let mode = IteratorMode::From(&prefix, Direction::Forward);
        for item in self.db.iterator_cf(cf(&self.db, CF_ENVELOPES), mode) {
            let (raw, _) = item?;
            if !raw.starts_with(&prefix) {
                break;
            }
            if let Some(EnvelopesKey::Recipient(key)) = parse_envelopes_key(&raw) {
                keys.push(key);
            }
        }
        Ok(keys)
    }
}

pub(crate) fn suspend_key(domain: &str) -> Vec<u8> {
    let mut key = META_SUSPEND_PREFIX.to_vec();
    key.extend_from_slice(domain.as_bytes());
    key
}
