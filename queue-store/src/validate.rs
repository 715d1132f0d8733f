//! Checks on a message before it is admitted: limits and well-formed addresses.

use crate::config::Limits;
use crate::error::Invalid;
use crate::types::{Metadata, NewMessage};

pub(crate) fn message(message: &NewMessage, limits: &Limits) -> Result<(), Invalid> {
    let size = message.body.len() as u64;
    if size > limits.message_size_max_bytes {
        return Err(Invalid::MessageTooLarge { size, max: limits.message_size_max_bytes });
    }
    let count = message.recipients.len();
    if count == 0 {
        return Err(Invalid::NoRecipients);
    }
    if count > limits.recipients_per_message_max as usize {
        return Err(Invalid::TooManyRecipients { count, max: limits.recipients_per_message_max });
    }
    // The null reverse-path (empty) is valid: bounces are sent with it.
    if !message.sender.is_empty() {
        address(&message.sender, limits).map_err(|reason| Invalid::Sender { reason })?;
    }
    for text in [&message.tenant, &message.campaign].into_iter().flatten() {
        field("tenant or campaign", text, limits.field_length_max)?;
    }
    metadata(&message.metadata, limits)?;
    for (index, recipient) in message.recipients.iter().enumerate() {
        address(&recipient.address, limits).map_err(|reason| Invalid::Recipient { index, reason })?;
        metadata(&recipient.metadata, limits)?;
        head(&recipient.head).map_err(|reason| Invalid::Head { index, reason })?;
    }
    Ok(())
}

/// Whether `head` is whole header fields, as a recipient's header block must be:
/// each line ends in CRLF and has at most 998 octets (RFC 5322 §2.1.1), a line is
/// a `name:` field or the continuation of one (starts with a space or tab, and is
/// not only white space), none is empty (that would end the header section early).
pub fn head(head: &[u8]) -> Result<(), &'static str> {
    if head.is_empty() {
        return Ok(());
    }
    if head.len() > crate::types::HEAD_MAX_BYTES {
        return Err("header block over 16 KiB");
    }
    if !head.ends_with(b"\r\n") || head.starts_with(b" ") || head.starts_with(b"\t") || head.starts_with(b"\r") {
        return Err("header block is not whole header fields");
    }
    let fields = &head[..head.len() - 2];
    if has_bare_line_feed(fields) {
        return Err("header block has an empty line or a bare line feed");
    }
    for line in fields.split(|&byte| byte == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() || line.contains(&b'\r') {
            return Err("header block has an empty line or a bare line feed");
        }
        if line.len() > 998 {
            return Err("header block has a line over 998 octets");
        }
        let continuation = line[0] == b' ' || line[0] == b'\t';
        if continuation && line.iter().all(|b| *b == b' ' || *b == b'\t') {
            return Err("header block has a line of white space only");
        }
        let named = line
            .iter()
            .position(|&b| b == b':')
            .is_some_and(|colon| colon > 0 && line[..colon].iter().all(|b| b.is_ascii_graphic() && *b != b':'));
        if !continuation && !named {
            return Err("header block has a line that is not a header field");
        }
    }
    Ok(())
}

/// Whether a line feed in `bytes` is not preceded by a carriage return.
fn has_bare_line_feed(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().any(|(at, &byte)| byte == b'\n' && (at == 0 || bytes[at - 1] != b'\r'))
}

fn field(name: &'static str, text: &str, max: usize) -> Result<(), Invalid> {
    if text.len() > max {
        return Err(Invalid::FieldTooLong { field: name, len: text.len(), max });
    }
    Ok(())
}

fn metadata(pairs: &Metadata, limits: &Limits) -> Result<(), Invalid> {
    // Bounds the record size: a record is read whole on every claim.
    const PAIRS_MAX: usize = 64;
    if pairs.len() > PAIRS_MAX {
        return Err(Invalid::FieldTooLong { field: "metadata pairs", len: pairs.len(), max: PAIRS_MAX });
    }
    for (key, value) in pairs {
        field("metadata key", key, limits.field_length_max)?;
        field("metadata value", value, limits.field_length_max)?;
    }
    Ok(())
}

/// Whether `address` is acceptable as a sender or recipient, and if not, why.
pub fn address(address: &str, limits: &Limits) -> Result<(), &'static str> {
    if address.len() > limits.address_length_max {
        return Err("address too long");
    }
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Err("address has no @domain");
    };
    if local.is_empty() {
        return Err("address has an empty local part");
    }
    if domain.is_empty() || domain.len() > 255 {
        return Err("address domain is empty or longer than 255 octets");
    }
    if address.bytes().any(|byte| byte.is_ascii_control() || byte == b' ' || byte == b'<' || byte == b'>') {
        return Err("address contains a control character, space or angle bracket");
    }
    Ok(())
}
