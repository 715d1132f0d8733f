//! Key layouts of the column families, and the stable shard hash.
//!
//! All integers are big-endian so that RocksDB's bytewise order is numeric order:
//! - envelopes CF: `id` (8 bytes) is a message envelope; `id ++ index` (12 bytes) is
//!   one recipient of it, so a prefix scan over `id` reads the whole message.
//! - bodies CF: `id` (8 bytes) is a message body; `id ++ index` (12 bytes) is one
//!   recipient's header block (format version 2), beside it.
//! - due CF: `shard (2) ++ due_ms (8) ++ id (8) ++ index (4)`, so one shard's due
//!   recipients are a contiguous range in due order.
//! - domains CF: `domain ++ 0x00 ++ id (8) ++ index (4)`, one domain's recipients in
//!   arrival order (a domain name never contains a NUL byte).

use crate::types::{MessageId, RecipientKey};

pub(crate) const ENVELOPE_KEY_LEN: usize = 8;
pub(crate) const RECIPIENT_KEY_LEN: usize = 12;
pub(crate) const DUE_KEY_LEN: usize = 22;

pub(crate) fn envelope_key(id: MessageId) -> [u8; ENVELOPE_KEY_LEN] {
    id.as_u64().to_be_bytes()
}

pub(crate) fn recipient_key(key: RecipientKey) -> [u8; RECIPIENT_KEY_LEN] {
    let mut out = [0u8; RECIPIENT_KEY_LEN];
    out[..8].copy_from_slice(&key.message.as_u64().to_be_bytes());
    out[8..].copy_from_slice(&key.index.to_be_bytes());
    out
}

/// What a key of the envelopes column family names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EnvelopesKey {
    Envelope(MessageId),
    Recipient(RecipientKey),
}

pub(crate) fn parse_envelopes_key(raw: &[u8]) -> Option<EnvelopesKey> {
    match raw.len() {
        ENVELOPE_KEY_LEN => Some(EnvelopesKey::Envelope(MessageId::from_u64(u64_at(raw, 0)))),
        RECIPIENT_KEY_LEN => Some(EnvelopesKey::Recipient(parse_recipient_tail(raw))),
        _ => None,
    }
}

pub(crate) fn due_key(shard: u16, due_ms: u64, key: RecipientKey) -> [u8; DUE_KEY_LEN] {
    let mut out = [0u8; DUE_KEY_LEN];
    out[..2].copy_from_slice(&shard.to_be_bytes());
    out[2..10].copy_from_slice(&due_ms.to_be_bytes());
    out[10..].copy_from_slice(&recipient_key(key));
    out
}

/// The first key of a shard's due range at or after `due_ms`.
pub(crate) fn due_bound(shard: u16, due_ms: u64) -> [u8; 10] {
    let mut out = [0u8; 10];
    out[..2].copy_from_slice(&shard.to_be_bytes());
    out[2..].copy_from_slice(&due_ms.to_be_bytes());
    out
}

pub(crate) fn parse_due_key(raw: &[u8]) -> Option<(u16, u64, RecipientKey)> {
    if raw.len() != DUE_KEY_LEN {
        return None;
    }
    let shard = u16::from_be_bytes([raw[0], raw[1]]);
    Some((shard, u64_at(raw, 2), parse_recipient_tail(&raw[10..])))
}

pub(crate) fn domain_prefix(domain: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(domain.len() + 1);
    out.extend_from_slice(domain.as_bytes());
    out.push(0);
    out
}

pub(crate) fn domain_key(domain: &str, key: RecipientKey) -> Vec<u8> {
    let mut out = domain_prefix(domain);
    out.extend_from_slice(&recipient_key(key));
    out
}

pub(crate) fn parse_domain_key_tail(raw: &[u8]) -> Option<RecipientKey> {
    if raw.len() < RECIPIENT_KEY_LEN + 1 {
        return None;
    }
    Some(parse_recipient_tail(&raw[raw.len() - RECIPIENT_KEY_LEN..]))
}

fn parse_recipient_tail(raw: &[u8]) -> RecipientKey {
    debug_assert_eq!(raw.len(), RECIPIENT_KEY_LEN);
    RecipientKey {
        message: MessageId::from_u64(u64_at(raw, 0)),
        index: u32::from_be_bytes([raw[8], raw[9], raw[10], raw[11]]),
    }
}

fn u64_at(raw: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&raw[at..at + 8]);
    u64::from_be_bytes(bytes)
}

/// The shard that owns a destination domain: FNV-1a (64-bit) of the lowercased
/// domain, modulo `shard_count`. Stable across versions and processes (unlike std's
/// randomly keyed hasher), so a shard's due range means the same thing after a restart.
pub fn shard_of(domain: &str, shard_count: u16) -> u16 {
    debug_assert!(shard_count > 0);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in domain.bytes() {
        hash ^= u64::from(byte.to_ascii_lowercase());
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(shard_count.max(1))) as u16
}

/// Tenant suspensions live among the domain ones under a name no domain can have
/// (addresses with `<` are refused at enqueue).
pub(crate) const TENANT_PREFIX: &str = "<tenant>";

/// The suspension name of `tenant`.
pub(crate) fn tenant_key(tenant: &str) -> String {
    format!("{TENANT_PREFIX}{tenant}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_numerically() {
        let a = RecipientKey { message: MessageId::from_u64(5), index: 300 };
        let b = RecipientKey { message: MessageId::from_u64(256), index: 0 };
        assert!(recipient_key(a) < recipient_key(b));
        assert_eq!(parse_envelopes_key(&recipient_key(a)), Some(EnvelopesKey::Recipient(a)));
        assert_eq!(parse_envelopes_key(&envelope_key(b.message)), Some(EnvelopesKey::Envelope(b.message)));
        assert_eq!(parse_envelopes_key(b"abc"), None);
        let early = due_key(3, 1_000, b);
        let late = due_key(3, 1_001, a);
        assert!(early < late, "due order comes before id order");
        assert!(due_bound(3, 1_001)[..] <= late[..] && late[..] < due_bound(4, 0)[..]);
        assert_eq!(parse_due_key(&late), Some((3, 1_001, a)));
        assert_eq!(parse_domain_key_tail(&domain_key("x.test", a)), Some(a));
    }

    #[test]
    fn shard_hash_is_stable_and_case_insensitive() {
        assert_eq!(shard_of("Example.TEST", 16), shard_of("example.test", 16));
        // Pinned values: changing the hash would strand queued mail in the wrong shard.
        assert_eq!(shard_of("example.test", 16), 13);
        assert_eq!(shard_of("example.test", 7), 1);
        let spread: std::collections::HashSet<u16> = (0..1000).map(|i| shard_of(&format!("d{i}.test"), 8)).collect();
        assert_eq!(spread.len(), 8);
    }
}
