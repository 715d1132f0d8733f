//! Ingest: how mail comes in (HTTP inject API, SMTP listener).

pub mod auth;
pub mod http;
pub mod inject;
pub mod refusal;
pub mod smtp;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use queue_store::{Health, Store};

/// Whether ingest must refuse new mail now, and why: the store unhealthy or full,
/// or the process over its memory limit. Both front doors ask it before taking a
/// message (SMTP at connect and at MAIL, HTTP per request).
#[derive(Debug)]
pub struct Shedding {
    store: Arc<Store>,
    /// Resident memory above which ingest refuses (bytes); 0: no limit.
    memory_max: u64,
    rss: AtomicU64,
    sampled_ms: AtomicU64,
    /// Intake stopped by the operator (`ringmail ctl drain`); delivery goes on.
    draining: std::sync::atomic::AtomicBool,
    /// Told after every synced enqueue, so that the scheduler claims the new mail at
    /// once instead of at its next poll.
    arrivals: Arc<tokio::sync::Notify>,
}

/// Resident memory is read from /proc at most this often.
const RSS_SAMPLE_MS: u64 = 100;

impl Shedding {
    pub fn new(store: Arc<Store>, memory_max_bytes: u64) -> Shedding {
        Shedding {
            store,
            memory_max: memory_max_bytes,
            rss: AtomicU64::new(0),
            sampled_ms: AtomicU64::new(0),
            draining: std::sync::atomic::AtomicBool::new(false),
            arrivals: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Mail was queued (synced): wakes the scheduler. A permit is kept when the
    /// scheduler is not waiting, so no arrival is missed.
    pub fn note_arrival(&self) {
        self.arrivals.notify_one();
    }

    /// What the scheduler waits on between claims.
    pub fn arrivals(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.arrivals)
    }

    pub fn set_draining(&self, on: bool) {
        self.draining.store(on, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// `None` when mail can be taken; else the reason, for the log and the client.
    pub fn reason(&self) -> Option<String> {
        if self.is_draining() {
            return Some("draining: not taking new mail (ringmail ctl drain --off to resume)".into());
        }
        match self.store.health() {
            Health::Healthy => {}
            other => return Some(format!("queue store unhealthy ({other:?})")),
        }
        if self.store.is_full() {
            return Some("queue full".into());
        }
        if self.memory_max > 0 {
            let rss = self.rss();
            if rss > self.memory_max {
                return Some(format!("memory {} MiB above the limit of {} MiB", rss >> 20, self.memory_max >> 20));
            }
        }
        None
    }

    /// Resident set size in bytes, sampled at most every [`RSS_SAMPLE_MS`].
    fn rss(&self) -> u64 {
        let now = crate::log::now_ms();
        let sampled = self.sampled_ms.load(Ordering::Relaxed);
        if now.saturating_sub(sampled) >= RSS_SAMPLE_MS
            && self.sampled_ms.compare_exchange(sampled, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            self.rss.store(crate::metrics::resident_bytes(), Ordering::Relaxed);
        }
        self.rss.load(Ordering::Relaxed)
    }
}

/// `Sat, 28 Nov 2026 17:59:00 +0000` for a Unix time (UTC).
pub(crate) fn rfc5322_date(seconds: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let days = (seconds / 86_400) as i64;
    let time = seconds % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day} {} {year} {:02}:{:02}:{:02} +0000",
        DAYS[(days.rem_euclid(7)) as usize],
        MONTHS[(month - 1) as usize],
        time / 3600,
        time / 60 % 60,
        time % 60
    )
}

/// `Received:` headers a message may carry when it reaches ringmail: one with more
/// is in a mail loop (Postfix's `hopcount_limit`, 50).
pub const HOPS_MAX: usize = 50;

/// How many `Received:` fields the header block of `data` has.
pub(crate) fn received_count(data: &[u8]) -> usize {
    let mut count = 0;
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break; // the end of the headers
        }
        if line.len() >= 9 && line[8] == b':' && line[..8].eq_ignore_ascii_case(b"received") {
            count += 1;
        }
    }
    count
}

/// Whether the header block of `data` has a field `name` (lowercase).
pub(crate) fn has_header(data: &[u8], name: &[u8]) -> bool {
    for line in data.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return false; // the end of the headers
        }
        if line.len() > name.len() && line[name.len()] == b':' && line[..name.len()].eq_ignore_ascii_case(name) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_rfc_5322_form() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322_date(1_795_888_740), "Sat, 28 Nov 2026 17:59:00 +0000");
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn received_fields_are_counted_in_the_header_block_only() {
        assert_eq!(received_count(b"Received: a\r\n\tb\r\nreceived: c\r\nSubject: x\r\n\r\nReceived: d\r\n"), 2);
        assert_eq!(received_count(b"Subject: x\r\n\r\n"), 0);
        assert_eq!(received_count(b"X-Received: a\r\n\r\n"), 0);
    }

    #[test]
    fn a_message_id_is_found_only_in_the_header_block() {
        assert!(has_header(b"Subject: x\r\nMessage-ID: <a@b>\r\n\r\nbody\r\n", b"message-id"));
        assert!(!has_header(b"Subject: x\r\n\r\nMessage-ID: <a@b>\r\n", b"message-id"));
        assert!(has_header(b"message-id: <a@b>\n\nbody", b"message-id"));
    }
}
