//! Binary encoding of stored records, each closed by a CRC-32 that is checked on
//! every read: a record that fails to decode is reported as corrupt, never trusted.
//!
//! Layout: `version (1) | tag (1) | fields ... | crc32 (4, over all before it)`.
//! Strings are `u32 length | UTF-8 bytes`; optional strings have a presence byte.

use crate::types::{Envelope, MessageId, Metadata, RecipientRecord, RecipientState};

const FORMAT_VERSION: u8 = 1;
const TAG_ENVELOPE: u8 = b'E';
const TAG_RECIPIENT: u8 = b'R';
const CRC_LEN: usize = 4;
/// The envelope's optional flags byte (format version 2): its recipients have header blocks.
const ENVELOPE_FLAG_HEADS: u8 = 1;

/// A recipient's header block as stored in the bodies family: the bytes and a
/// CRC-32 over them.
pub(crate) fn encode_head(head: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len() + CRC_LEN);
    out.extend_from_slice(head);
    out.extend_from_slice(&crc32fast::hash(head).to_be_bytes());
    out
}

/// A stored header block, its checksum checked.
pub(crate) fn decode_head(raw: &[u8]) -> Result<&[u8], DecodeError> {
    if raw.len() < CRC_LEN {
        return Err(DecodeError::Truncated);
    }
    let (head, crc) = raw.split_at(raw.len() - CRC_LEN);
    match crc32fast::hash(head) == u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        true => Ok(head),
        false => Err(DecodeError::Checksum),
    }
}

/// Why a stored record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("record checksum mismatch")]
    Checksum,
    #[error("record too short")]
    Truncated,
    #[error("unknown record version {0}")]
    Version(u8),
    #[error("unexpected record tag {0:#x}")]
    Tag(u8),
    #[error("string is not UTF-8")]
    Utf8,
    #[error("invalid field: {0}")]
    Field(&'static str),
    #[error("{0} trailing bytes")]
    Trailing(usize),
    #[error("unexpected key length {0}")]
    Key(usize),
}

struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    fn new(tag: u8, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity + 2 + CRC_LEN);
        buf.push(FORMAT_VERSION);
        buf.push(tag);
        Encoder { buf }
    }

    fn u8(&mut self, value: u8) {
        self.buf.push(value);
    }

    fn u32(&mut self, value: u32) {
        self.buf.extend_from_slice(&value.to_be_bytes());
    }

    fn u64(&mut self, value: u64) {
        self.buf.extend_from_slice(&value.to_be_bytes());
    }

    fn str(&mut self, value: &str) {
        // Lengths are bounded by the store's limits, far below u32::MAX.
        debug_assert!(value.len() <= u32::MAX as usize);
        self.u32(value.len() as u32);
        self.buf.extend_from_slice(value.as_bytes());
    }

    fn opt_str(&mut self, value: Option<&str>) {
        match value {
            None => self.u8(0),
            Some(text) => {
                self.u8(1);
                self.str(text);
            }
        }
    }

    fn metadata(&mut self, pairs: &Metadata) {
        self.u32(pairs.len() as u32);
        for (key, value) in pairs {
            self.str(key);
            self.str(value);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        let crc = crc32fast::hash(&self.buf);
        self.buf.extend_from_slice(&crc.to_be_bytes());
        self.buf
    }
}

struct Decoder<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Decoder<'a> {
    fn open(raw: &'a [u8], tag: u8) -> Result<Self, DecodeError> {
        if raw.len() < 2 + CRC_LEN {
            return Err(DecodeError::Truncated);
        }
        let (body, crc) = raw.split_at(raw.len() - CRC_LEN);
        let stored = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32fast::hash(body) != stored {
            return Err(DecodeError::Checksum);
        }
        if body[0] != FORMAT_VERSION {
            return Err(DecodeError::Version(body[0]));
        }
        if body[1] != tag {
            return Err(DecodeError::Tag(body[1]));
        }
        Ok(Decoder { buf: body, at: 2 })
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(len).ok_or(DecodeError::Truncated)?;
        let bytes = self.buf.get(self.at..end).ok_or(DecodeError::Truncated)?;
        self.at = end;
        Ok(bytes)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut out = [0u8; 8];
        out.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(out))
    }

    fn str(&mut self) -> Result<String, DecodeError> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::Utf8)
    }

    fn opt_str(&mut self) -> Result<Option<String>, DecodeError> {
        match self.u8()? {
            0 => Ok(None),
            1 => self.str().map(Some),
            _ => Err(DecodeError::Field("option flag")),
        }
    }

    fn metadata(&mut self) -> Result<Metadata, DecodeError> {
        let count = self.u32()? as usize;
        // Each pair takes at least 8 bytes: a bogus count cannot make us allocate.
        if count > (self.buf.len() - self.at) / 8 {
            return Err(DecodeError::Truncated);
        }
        let mut pairs = Vec::with_capacity(count);
        for _ in 0..count {
            pairs.push((self.str()?, self.str()?));
        }
        Ok(pairs)
    }

    fn at_end(&self) -> bool {
        self.at == self.buf.len()
    }

    fn end(self) -> Result<(), DecodeError> {
        match self.buf.len() - self.at {
            0 => Ok(()),
            extra => Err(DecodeError::Trailing(extra)),
        }
    }
}

fn metadata_len(pairs: &Metadata) -> usize {
    pairs.iter().map(|(k, v)| 8 + k.len() + v.len()).sum::<usize>() + 4
}

pub(crate) fn encode_envelope(envelope: &Envelope) -> Vec<u8> {
    let estimate = 64 + envelope.sender.len() + metadata_len(&envelope.metadata);
    let mut out = Encoder::new(TAG_ENVELOPE, estimate);
    out.u64(envelope.created_ms);
    out.str(&envelope.sender);
    out.opt_str(envelope.tenant.as_deref());
    out.opt_str(envelope.campaign.as_deref());
    out.metadata(&envelope.metadata);
    out.u32(envelope.recipient_count);
    out.u64(envelope.body_len);
    out.u32(envelope.body_crc32);
    // Added with format version 2, written only when set: an envelope without
    // header blocks is byte for byte what version 1 wrote.
    if envelope.heads {
        out.u8(ENVELOPE_FLAG_HEADS);
    }
    out.finish()
}

pub(crate) fn decode_envelope(id: MessageId, raw: &[u8]) -> Result<Envelope, DecodeError> {
    let mut input = Decoder::open(raw, TAG_ENVELOPE)?;
    let envelope = Envelope {
        id,
        created_ms: input.u64()?,
        sender: input.str()?,
        tenant: input.opt_str()?,
        campaign: input.opt_str()?,
        metadata: input.metadata()?,
        recipient_count: input.u32()?,
        body_len: input.u64()?,
        body_crc32: input.u32()?,
        heads: false,
    };
    let mut envelope = envelope;
    if !input.at_end() {
        match input.u8()? {
            ENVELOPE_FLAG_HEADS => envelope.heads = true,
            _ => return Err(DecodeError::Field("envelope flags")),
        }
    }
    input.end()?;
    if envelope.recipient_count == 0 {
        return Err(DecodeError::Field("recipient count"));
    }
    Ok(envelope)
}

pub(crate) fn encode_recipient(record: &RecipientRecord) -> Vec<u8> {
    let estimate = 48 + record.address.len() + record.domain.len() + metadata_len(&record.metadata);
    let mut out = Encoder::new(TAG_RECIPIENT, estimate);
    out.str(&record.address);
    out.str(&record.domain);
    out.u8(record.state.code());
    out.u32(record.attempts);
    out.u64(record.due_ms);
    out.opt_str(record.last_response.as_deref());
    out.metadata(&record.metadata);
    out.finish()
}

pub(crate) fn decode_recipient(raw: &[u8]) -> Result<RecipientRecord, DecodeError> {
    let mut input = Decoder::open(raw, TAG_RECIPIENT)?;
    let record = RecipientRecord {
        address: input.str()?,
        domain: input.str()?,
        state: RecipientState::from_code(input.u8()?).ok_or(DecodeError::Field("state"))?,
        attempts: input.u32()?,
        due_ms: input.u64()?,
        last_response: input.opt_str()?,
        metadata: input.metadata()?,
    };
    input.end()?;
    if record.domain.is_empty() || record.domain.contains('\0') {
        return Err(DecodeError::Field("domain"));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_recipient() -> RecipientRecord {
        RecipientRecord {
            address: "user@example.test".into(),
            domain: "example.test".into(),
            state: RecipientState::Deferred,
            attempts: 3,
            due_ms: 1_700_000_000_000,
            last_response: Some("451 4.7.1 try later".into()),
            metadata: vec![("k".into(), "v".into())],
        }
    }

    #[test]
    fn records_round_trip() {
        let envelope = Envelope {
            id: MessageId::from_u64(42),
            sender: "bounces@sender.test".into(),
            tenant: Some("acme".into()),
            campaign: None,
            metadata: vec![("a".into(), "b".into())],
            created_ms: 99,
            recipient_count: 2,
            body_len: 4096,
            body_crc32: 0xdead_beef,
            heads: false,
        };
        let raw = encode_envelope(&envelope);
        assert_eq!(decode_envelope(envelope.id, &raw), Ok(envelope.clone()));
        let with_heads = Envelope { heads: true, ..envelope };
        let raw_heads = encode_envelope(&with_heads);
        assert_eq!(raw_heads.len(), raw.len() + 1, "one flags byte, only when set");
        assert_eq!(decode_envelope(with_heads.id, &raw_heads), Ok(with_heads));
        let head = b"To: a@b.test\r\n".to_vec();
        assert_eq!(decode_head(&encode_head(&head)), Ok(&head[..]));
        let mut bad = encode_head(&head);
        bad[0] ^= 1;
        assert_eq!(decode_head(&bad), Err(DecodeError::Checksum));
        let record = sample_recipient();
        assert_eq!(decode_recipient(&encode_recipient(&record)), Ok(record));
    }

    #[test]
    fn every_single_byte_corruption_is_detected() {
        let raw = encode_recipient(&sample_recipient());
        for at in 0..raw.len() {
            let mut bad = raw.clone();
            bad[at] ^= 0x40;
            assert!(decode_recipient(&bad).is_err(), "flip at {at} went unnoticed");
        }
        for len in 0..raw.len() {
            assert!(decode_recipient(&raw[..len]).is_err(), "truncation to {len} went unnoticed");
        }
        assert_eq!(decode_envelope(MessageId::from_u64(1), &raw), Err(DecodeError::Tag(TAG_RECIPIENT)));
    }
}
