//! The delivery log: one JSON object per line per event. Record types and field
//! names follow KumoMTA's log records where they overlap (`type`, `id`, `sender`,
//! `recipient`, `site`, `response`, `peer_address`, `timestamp`, `created`,
//! `num_attempts`, `bounce_classification`, `egress_source`, `tls_*`), so existing
//! consumers can read them.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// One event.
#[derive(Clone, Debug, Serialize)]
pub struct Record {
    /// `Reception`, `Delivery`, `TransientFailure`, `Bounce`, `Expiration`,
    /// `AdminBounce`, `Rejection`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: String,
    pub sender: String,
    pub recipient: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress_source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_address: Option<String>,
    pub response: Response,
    pub num_attempts: u32,
    /// Seconds since the epoch.
    pub timestamp: f64,
    pub created: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bounce_classification: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_protocol_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cipher: Option<String>,
    /// Whether the MX host's certificate verified (a trusted chain naming the host):
    /// always true under `tls = "required"`; recorded, not enforced, otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_peer_verified: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    /// The message's metadata, then the recipient's (which wins on a shared key).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub meta: std::collections::BTreeMap<String, String>,
    /// `Reception`: the DKIM signatures added at ingest (`d`, `s`, `a`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub dkim: Vec<crate::dkim::SignatureNote>,
}

/// The message's metadata overlaid with the recipient's.
pub fn meta(
    message: &queue_store::Metadata,
    recipient: &queue_store::Metadata,
) -> std::collections::BTreeMap<String, String> {
    message.iter().chain(recipient).cloned().collect()
}

/// The reply (or the reason there was none).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Response {
    pub code: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enhanced_code: Option<String>,
    pub content: String,
}

impl Response {
    /// From a reply's summary text ("550 5.1.1 user unknown") or a bare reason.
    pub fn from_text(text: &str) -> Response {
        let code = text.get(..3).and_then(|c| c.parse().ok()).filter(|c| (200..600).contains(c)).unwrap_or(0);
        let enhanced = text
            .split_whitespace()
            .nth(1)
            .filter(|word| {
                code != 0 && word.split('.').count() == 3 && word.split('.').all(|p| p.parse::<u16>().is_ok())
            })
            .map(str::to_string);
        Response { code, enhanced_code: enhanced, content: text.to_string() }
    }
}

/// Where ingest sends a message's `Reception` records, and how it answered.
#[derive(Debug)]
pub struct Reception<'a> {
    pub id: &'a str,
    pub sender: &'a str,
    pub peer: Option<String>,
    pub response: Response,
    pub tenant: Option<&'a str>,
    pub campaign: Option<&'a str>,
    pub metadata: &'a queue_store::Metadata,
    /// The DKIM signatures added at ingest.
    pub dkim: &'a [crate::dkim::SignatureNote],
}

/// Queues one `Reception` record per recipient for the log writer (the completer).
/// Never waits: with the channel full a record is dropped and counted in `dropped`,
/// never the mail.
pub fn send_receptions(
    channel: &crossbeam_channel::Sender<Record>,
    dropped: &std::sync::atomic::AtomicU64,
    reception: Reception<'_>,
    recipients: impl IntoIterator<Item = (String, queue_store::Metadata)>,
) {
    let now = now_ms() as f64 / 1000.0;
    for (recipient, metadata) in recipients {
        let record = Record {
            kind: "Reception",
            id: reception.id.to_string(),
            sender: reception.sender.to_string(),
            recipient,
            site: None,
            egress_source: None,
            peer_address: reception.peer.clone(),
            response: reception.response.clone(),
            num_attempts: 0,
            timestamp: now,
            created: now,
            bounce_classification: None,
            tls_protocol_version: None,
            tls_cipher: None,
            tls_peer_verified: None,
            tenant: reception.tenant.map(str::to_string),
            campaign: reception.campaign.map(str::to_string),
            meta: meta(reception.metadata, &metadata),
            dkim: reception.dkim.to_vec(),
        };
        if channel.try_send(record).is_err() {
            dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

pub fn seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Where records go; without a path, nowhere.
#[derive(Debug)]
pub struct DeliveryLog {
    out: Option<BufWriter<File>>,
    unflushed: usize,
}

impl DeliveryLog {
    pub fn open(path: Option<&Path>) -> std::io::Result<DeliveryLog> {
        let out = match path {
            None => None,
            Some(path) => {
                let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|error| {
                    std::io::Error::new(error.kind(), format!("delivery log {}: {error}", path.display()))
                })?;
                Some(BufWriter::with_capacity(256 * 1024, file))
            }
        };
        Ok(DeliveryLog { out, unflushed: 0 })
    }

    pub fn write(&mut self, record: &Record) {
        let Some(out) = self.out.as_mut() else { return };
        if serde_json::to_writer(&mut *out, record).is_ok() && out.write_all(b"\n").is_ok() {
            self.unflushed += 1;
        }
    }

    /// Flushes what is buffered (the completer calls it after each batch).
    pub fn flush(&mut self) {
        if let Some(out) = self.out.as_mut() {
            if self.unflushed > 0 {
                if let Err(error) = out.flush() {
                    tracing::error!(%error, "writing the delivery log");
                }
                self.unflushed = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_split_into_code_enhanced_code_and_text() {
        let response = Response::from_text("550 5.1.1 user unknown");
        assert_eq!((response.code, response.enhanced_code.as_deref()), (550, Some("5.1.1")));
        let bare = Response::from_text("connect to 127.0.0.1:25: Connection refused");
        assert_eq!((bare.code, bare.enhanced_code), (0, None));
    }
}
