//! Counters and gauges, rendered as Prometheus text at `GET /metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// The engine's counters; shared by every thread (relaxed atomics).
#[derive(Debug, Default)]
pub struct Metrics {
    pub injected_messages: AtomicU64,
    pub injected_recipients: AtomicU64,
    pub rejected_requests: AtomicU64,
    pub delivered: AtomicU64,
    pub transient: AtomicU64,
    pub bounced: AtomicU64,
    pub expired: AtomicU64,
    pub connections_opened: AtomicU64,
    pub connections_open: AtomicU64,
    pub connect_failures: AtomicU64,
    pub ready_queue_depth: AtomicU64,
    pub in_flight: AtomicU64,
    /// Bytes of message bodies held for delivery (`shard::BodyHold`).
    pub in_flight_bytes: AtomicU64,
    pub dns_lookups: AtomicU64,
    pub dns_lookup_micros: AtomicU64,
    pub log_records_dropped: AtomicU64,
    /// SMTP messages answered after their data, and the time from the end of the
    /// data to that reply (the store's sync included), in microseconds.
    pub smtp_data_replies: AtomicU64,
    pub smtp_data_reply_micros: AtomicU64,
    /// DKIM signatures made, per algorithm; messages signed and the signer
    /// threads' time on them (microseconds); messages waiting for a signer.
    pub dkim_signatures_rsa: AtomicU64,
    pub dkim_signatures_ed25519: AtomicU64,
    pub dkim_signed_messages: AtomicU64,
    pub dkim_sign_micros: AtomicU64,
    pub dkim_failures: AtomicU64,
    pub dkim_queue_depth: AtomicU64,
    /// Body hashes (`bh=`) computed: one per message signed, however many
    /// signatures and per-recipient header blocks it has.
    pub dkim_body_hashes: AtomicU64,
    /// `notAfter` of the SMTP listener's certificate (seconds since the epoch); 0: none.
    pub tls_certificate_expiry: AtomicU64,
    /// Which threads run, and the socket backend (`/healthz` reads it too).
    pub parts: crate::health::Parts,
    /// Finished attempts per destination site: delivered, transient, bounced.
    sites: std::sync::Mutex<std::collections::HashMap<String, [u64; 3]>>,
}

/// This process's resident memory (`/proc/self/statm`), 0 if unreadable.
pub fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|text| text.split_whitespace().nth(1).and_then(|field| field.parse::<u64>().ok()))
        .unwrap_or(0);
    pages * 4096
}

/// Sites counted one by one at most; the rest are summed under `other`.
const SITES_MAX: usize = 1000;

/// What an attempt at a site came to (for [`Metrics::count_site`]).
#[derive(Clone, Copy, Debug)]
pub enum SiteOutcome {
    Delivered = 0,
    Transient = 1,
    Bounced = 2,
}

fn add(counter: &AtomicU64, value: u64) {
    counter.fetch_add(value, Ordering::Relaxed);
}

impl Metrics {
    pub fn count(counter: &AtomicU64, value: u64) {
        add(counter, value);
    }

    /// Takes `value` off a gauge, stopping at 0: gauges taken off by more than one
    /// party (in-flight recipients: the completer and the lost claims) never wrap.
    pub fn uncount(counter: &AtomicU64, value: u64) {
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| Some(held.saturating_sub(value)));
    }

    pub fn count_site(&self, site: &str, outcome: SiteOutcome) {
        let mut sites = self.sites.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = if sites.len() < SITES_MAX || sites.contains_key(site) { site } else { "other" };
        match sites.get_mut(key) {
            Some(counts) => counts[outcome as usize] += 1,
            None => {
                let mut counts = [0; 3];
                counts[outcome as usize] = 1;
                sites.insert(key.to_string(), counts);
            }
        }
    }

    /// The Prometheus text exposition, with the store's own figures.
    pub fn render(&self, store: &queue_store::Store) -> String {
        let mut out = String::new();
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let counters = [
            ("ringmail_injected_messages_total", "Messages accepted by ingest", &self.injected_messages),
            ("ringmail_injected_recipients_total", "Recipients accepted by ingest", &self.injected_recipients),
            ("ringmail_rejected_requests_total", "Ingest requests refused", &self.rejected_requests),
            ("ringmail_delivered_total", "Recipients delivered", &self.delivered),
            ("ringmail_transient_failures_total", "Delivery attempts failed transiently", &self.transient),
            ("ringmail_bounced_total", "Recipients bounced", &self.bounced),
            ("ringmail_expired_total", "Recipients expired", &self.expired),
            ("ringmail_connections_opened_total", "Outbound connections opened", &self.connections_opened),
            ("ringmail_connect_failures_total", "Outbound connections that failed", &self.connect_failures),
            ("ringmail_dns_lookups_total", "Route lookups", &self.dns_lookups),
            ("ringmail_dns_lookup_seconds_sum", "Time spent in route lookups", &self.dns_lookup_micros),
            (
                "ringmail_smtp_data_reply_seconds_count",
                "SMTP messages handed to the store, answered after their data",
                &self.smtp_data_replies,
            ),
            (
                "ringmail_smtp_data_reply_seconds_sum",
                "Time from the end of an SMTP message's data to its reply, the sync included",
                &self.smtp_data_reply_micros,
            ),
            (
                "ringmail_log_records_dropped_total",
                "Delivery log records dropped (log channel full)",
                &self.log_records_dropped,
            ),
            ("ringmail_dkim_signatures_rsa_total", "DKIM signatures made with rsa-sha256", &self.dkim_signatures_rsa),
            (
                "ringmail_dkim_signatures_ed25519_total",
                "DKIM signatures made with ed25519-sha256",
                &self.dkim_signatures_ed25519,
            ),
            (
                "ringmail_dkim_sign_seconds_count",
                "Messages signed (each with all its signatures)",
                &self.dkim_signed_messages,
            ),
            ("ringmail_dkim_sign_seconds_sum", "Signer threads' time spent signing messages", &self.dkim_sign_micros),
            (
                "ringmail_dkim_body_hashes_total",
                "DKIM body hashes computed (one per message signed, shared by its signatures and header blocks)",
                &self.dkim_body_hashes,
            ),
            (
                "ringmail_dkim_failures_total",
                "Messages a signer could not sign (refused at ingest, never sent unsigned)",
                &self.dkim_failures,
            ),
        ];
        for (name, help, counter) in counters {
            let value = load(counter);
            let value = if name.ends_with("_seconds_sum") { value as f64 / 1e6 } else { value as f64 };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        }
        let oldest = store.oldest_message().map(|(_, ms)| crate::log::now_ms().saturating_sub(ms) as f64 / 1000.0);
        let gauges = [
            ("ringmail_connections_open", "Outbound connections open", load(&self.connections_open) as f64),
            ("ringmail_ready_queue_depth", "Recipients waiting in lanes", load(&self.ready_queue_depth) as f64),
            ("ringmail_in_flight", "Recipients claimed and not finished", load(&self.in_flight) as f64),
            (
                "ringmail_in_flight_bytes",
                "Bytes of message bodies held for delivery (delivery.in_flight_bytes_max)",
                load(&self.in_flight_bytes) as f64,
            ),
            (
                "ringmail_oldest_message_age_seconds",
                "Age of the oldest message in the queue (0 when empty)",
                oldest.unwrap_or(0.0),
            ),
            ("ringmail_resident_memory_bytes", "Resident memory of the daemon", resident_bytes() as f64),
            ("ringmail_dkim_queue_depth", "Messages waiting for a DKIM signer", load(&self.dkim_queue_depth) as f64),
            (
                "ringmail_store_healthy",
                "1 when the queue store accepts writes",
                f64::from(u8::from(store.health() == queue_store::Health::Healthy)),
            ),
            (
                "ringmail_tls_certificate_expiry_timestamp_seconds",
                "When the SMTP listener's certificate expires (0: none)",
                load(&self.tls_certificate_expiry) as f64,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
        let counts = store.counts();
        let _ = writeln!(out, "# HELP ringmail_queue_recipients Recipients in the queue by state");
        let _ = writeln!(out, "# TYPE ringmail_queue_recipients gauge");
        for (state, value) in [
            ("queued", counts.queued),
            ("in_flight", counts.in_flight),
            ("deferred", counts.deferred),
            ("suspended", counts.suspended),
        ] {
            let _ = writeln!(out, "ringmail_queue_recipients{{state=\"{state}\"}} {value}");
        }
        let _ =
            writeln!(out, "# HELP ringmail_site_recipients_total Finished attempts per destination site and outcome");
        let _ = writeln!(out, "# TYPE ringmail_site_recipients_total counter");
        let sites = self.sites.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut names: Vec<&String> = sites.keys().collect();
        names.sort();
        for site in names {
            let label = site.replace('\\', "\\\\").replace('"', "\\\"");
            for (index, outcome) in ["delivered", "transient", "bounced"].iter().enumerate() {
                let _ = writeln!(
                    out,
                    "ringmail_site_recipients_total{{site=\"{label}\",outcome=\"{outcome}\"}} {}",
                    sites[site][index]
                );
            }
        }
        drop(sites);
        self.parts.render(&mut out);
        let store_metrics = store.metrics();
        let _ = writeln!(
            out,
            "# HELP ringmail_store_syncs_total WAL syncs\n# TYPE ringmail_store_syncs_total counter\nringmail_store_syncs_total {}",
            store_metrics.syncs
        );
        let _ = writeln!(
            out,
            "# HELP ringmail_store_write_stalls_total Queue writes refused because RocksDB stalled writes\n# TYPE ringmail_store_write_stalls_total counter\nringmail_store_write_stalls_total {}",
            store_metrics.write_stalls
        );
        let _ = writeln!(
            out,
            "# HELP ringmail_store_claimed_total Recipients taken for delivery, claimed or handed over\n# TYPE ringmail_store_claimed_total counter\nringmail_store_claimed_total {}",
            store_metrics.claimed
        );
        let _ = writeln!(
            out,
            "# HELP ringmail_store_stalls_total Times a queue write or sync ran past store.sync_wait_max_ms (hung storage)\n# TYPE ringmail_store_stalls_total counter\nringmail_store_stalls_total {}",
            store_metrics.storage_stalls
        );
        let _ = writeln!(
            out,
            "# HELP ringmail_store_claims_lost_total Claims whose attempt ended without an outcome (lease dropped), made due again: non-zero means a bug or a dead thread\n# TYPE ringmail_store_claims_lost_total counter\nringmail_store_claims_lost_total {}",
            store_metrics.claims_lost
        );
        let _ = writeln!(
            out,
            "# HELP ringmail_store_handed_over_total Recipients handed to the scheduler as they were synced (no due-index round trip)\n# TYPE ringmail_store_handed_over_total counter\nringmail_store_handed_over_total {}",
            store_metrics.handed_over
        );
        let _ = writeln!(
            out,
            "# HELP ringmail_store_sync_seconds_sum Time in WAL syncs\n# TYPE ringmail_store_sync_seconds_sum counter\nringmail_store_sync_seconds_sum {}",
            store_metrics.sync_nanos_total as f64 / 1e9
        );
        out
    }
}
