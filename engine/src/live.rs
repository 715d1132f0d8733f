//! The configuration as it runs, and its reload (`SIGHUP`, `ringmail ctl reload`).
//!
//! A reload reads the file again, checks it whole, and applies at once what can
//! change without dropping a connection: the inject and admin tokens, `[retry]`,
//! `[[bounce_rule]]`, `[[site]]`, `[[egress]]` and the lane defaults of
//! `[delivery]` (connections, messages per connection, recipients per transaction,
//! TLS policy, timeouts). Lanes already open take their new limits on their next
//! turn. Everything else (store, listeners, DNS, shards, hold, allowlist, log,
//! ingest limits) is named in the answer as needing a restart, and keeps its
//! running value until then. A file that does not load changes nothing.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::config::Config;

#[derive(Debug)]
pub struct Live {
    config: RwLock<Arc<Config>>,
    /// Bumped by every applied reload: readers that cache compare it.
    generation: AtomicU64,
    /// The file to read again; none: reload is refused (an engine started from a
    /// `Config` built in memory).
    path: Option<PathBuf>,
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The engine was started from a `Config` built in memory: no file to read.
    #[error("this engine was not started from a file: nothing to reload")]
    NoFile,
    /// The file does not load (it names the file, line and key).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The file loads but policy refuses it (a bounce rule's category, say).
    #[error("{}: {source}", .path.display())]
    Policy { path: PathBuf, source: crate::config::SettingError },
    /// The file has no inject or admin tokens, but the control plane is bound to an
    /// address other than loopback (a new `listen` waits for a restart): taking the
    /// empty lists would open the API to anyone who can reach it.
    #[error(
        "{path}: http.tokens and http.admin_tokens are required while the control plane listens on {bound} \
         (not loopback; a new http.listen needs a restart); the running tokens stay"
    )]
    TokensRequired { path: PathBuf, bound: std::net::SocketAddr },
}

/// What a reload did.
#[derive(Debug, Default, serde::Serialize)]
pub struct ReloadReport {
    /// Sections applied now (those that changed).
    pub applied: Vec<&'static str>,
    /// Sections that changed in the file but need a restart.
    pub restart_needed: Vec<&'static str>,
    pub generation: u64,
}

impl Live {
    pub fn new(config: Arc<Config>, path: Option<PathBuf>) -> Live {
        Live { config: RwLock::new(config), generation: AtomicU64::new(0), path }
    }

    pub fn current(&self) -> Arc<Config> {
        Arc::clone(&self.config.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Reads the file again and applies what can change while running.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let Some(path) = &self.path else { return Err(ReloadError::NoFile) };
        let new = Config::load(path)?;
        crate::policy::check(&new).map_err(|source| ReloadError::Policy { path: path.clone(), source })?;
        let mut guard = self.config.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = Arc::clone(&guard);
        let mut applied = (*old).clone();
        let mut report = ReloadReport::default();
        let same = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
        // Live sections: take the new value.
        // Judged against the address the control plane runs on, not the file's
        // `listen` (which only a restart applies).
        let bound = old.http.listen;
        if !bound.ip().is_loopback() && (new.http.tokens.is_empty() || new.http.admin_tokens.is_empty()) {
            return Err(ReloadError::TokensRequired { path: path.clone(), bound });
        }
        if !same(&old.http.tokens, &new.http.tokens) || !same(&old.http.admin_tokens, &new.http.admin_tokens) {
            applied.http.tokens = new.http.tokens.clone();
            applied.http.admin_tokens = new.http.admin_tokens.clone();
            report.applied.push("http tokens");
        }
        if !same(&old.retry, &new.retry) {
            applied.retry = new.retry.clone();
            report.applied.push("retry");
        }
        if !same(&old.bounce_rules, &new.bounce_rules) {
            applied.bounce_rules = new.bounce_rules.clone();
            report.applied.push("bounce_rule");
        }
        if !same(&old.sites, &new.sites) {
            applied.sites = new.sites.clone();
            report.applied.push("site");
        }
        if !same(&old.egress, &new.egress) {
            applied.egress = new.egress.clone();
            report.applied.push("egress");
        }
        // Keys are read again on every reload (a key file rotated in place shows no
        // change in the file): messages stored already keep their signatures.
        if !old.dkim.is_empty() || !new.dkim.is_empty() {
            applied.dkim = new.dkim.clone();
            report.applied.push("dkim");
        }
        let (o, n) = (&old.delivery, &new.delivery);
        let lane_keys = |d: &crate::config::DeliverySection| {
            format!(
                "{:?}",
                (
                    d.connections_per_lane_max,
                    d.messages_per_connection_max,
                    d.recipients_per_transaction_max,
                    &d.tls,
                    d.idle_timeout_ms,
                    d.connect_timeout_ms,
                    &d.ehlo_name
                )
            )
        };
        if lane_keys(o) != lane_keys(n) {
            let d = &mut applied.delivery;
            d.connections_per_lane_max = n.connections_per_lane_max;
            d.messages_per_connection_max = n.messages_per_connection_max;
            d.recipients_per_transaction_max = n.recipients_per_transaction_max;
            d.tls = n.tls.clone();
            d.idle_timeout_ms = n.idle_timeout_ms;
            d.connect_timeout_ms = n.connect_timeout_ms;
            d.ehlo_name = n.ehlo_name.clone();
            report.applied.push("delivery (lane defaults)");
        }
        // The rest: named, not applied.
        let mut old_rest = (*old).clone();
        let mut new_rest = new.clone();
        for config in [&mut old_rest, &mut new_rest] {
            config.http.tokens.clear();
            config.http.admin_tokens.clear();
        }
        for (name, changed) in [
            ("store", !same(&old_rest.store, &new_rest.store)),
            ("http (listen, limits)", !same(&old_rest.http, &new_rest.http)),
            ("smtp", !same(&old_rest.smtp, &new_rest.smtp)),
            ("ingest", !same(&old_rest.ingest, &new_rest.ingest)),
            ("dns", !same(&old_rest.dns, &new_rest.dns)),
            ("log", !same(&old_rest.log, &new_rest.log)),
            (
                "delivery (shards, hold, allowlist, smtp_port, in_flight_max)",
                !same(
                    &(o.shards, o.hold, &o.allowlist, o.smtp_port, o.in_flight_max),
                    &(n.shards, n.hold, &n.allowlist, n.smtp_port, n.in_flight_max),
                ),
            ),
        ] {
            if changed {
                report.restart_needed.push(name);
            }
        }
        if !report.applied.is_empty() {
            *guard = Arc::new(applied);
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        report.generation = self.generation();
        tracing::info!(applied = ?report.applied, restart_needed = ?report.restart_needed, "configuration reloaded");
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attack: an engine bound off loopback with tokens; the operator (or
    /// whoever can write the file) reloads a file that moves `listen` to loopback
    /// and drops the tokens. The listen change waits for a restart; the tokens must
    /// not go.
    #[test]
    fn a_reload_cannot_drop_the_tokens_of_a_control_plane_bound_off_loopback() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ringmail.toml");
        let dns = "[dns]\nnameservers = [\"127.0.0.1:53\"]\n";
        let guarded = format!(
            "{dns}[http]\nlisten = \"192.0.2.1:8025\"\ntokens = [\"inject-token-0123456789\"]\n\
             admin_tokens = [\"admin-token-0123456789\"]\n"
        );
        let config = Config::parse(&guarded, "ringmail.toml").unwrap();
        let live = Live::new(Arc::new(config), Some(path.clone()));
        std::fs::write(&path, format!("{dns}[http]\nlisten = \"127.0.0.1:8025\"\n")).unwrap();
        let error = live.reload().unwrap_err();
        assert!(matches!(error, ReloadError::TokensRequired { .. }), "{error}");
        assert!(error.to_string().contains("192.0.2.1:8025"), "{error}");
        assert_eq!(live.current().http.tokens, ["inject-token-0123456789"]);
        assert_eq!(live.current().http.admin_tokens, ["admin-token-0123456789"]);
        assert_eq!(live.generation(), 0, "nothing applied");
        // New tokens off loopback are taken (rotation).
        std::fs::write(
            &path,
            format!(
                "{dns}[http]\nlisten = \"192.0.2.1:8025\"\ntokens = [\"rotated-token-0123456789\"]\n\
                 admin_tokens = [\"admin-token-0123456789\"]\n"
            ),
        )
        .unwrap();
        let report = live.reload().unwrap();
        assert_eq!(report.applied, ["http tokens"]);
        assert_eq!(live.current().http.tokens, ["rotated-token-0123456789"]);
    }
}
