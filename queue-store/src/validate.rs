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
    }
    Ok(())
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
