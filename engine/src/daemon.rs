//! Wiring: the store, the completer, the shards, the scheduler and the HTTP control
//! plane, each on its own thread(s), and their orderly stop.
//!
//! ```text
//!  HTTP inject ─> queue-store ─> scheduler ─(Work, per lane's shard)─> shard × N
//!                      ▲                                                  │
//!                      └──────────── completer <─(Attempt)────────────────┘
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use queue_store::{Durability, Store, StoreConfig};

use crate::config::Config;
use crate::dns::MxResolver;
use crate::ingest::Shedding;
use crate::log::DeliveryLog;
use crate::metrics::Metrics;
use crate::policy::site::LanePolicy;
use crate::schedule::{Completer, Scheduler};
use crate::shard::ShardSettings;

/// Work items waiting per shard at most.
const SHARD_INBOX: usize = 8192;
/// Attempts waiting for the completer at most.
const RESULTS_CHANNEL: usize = 65_536;

/// A running engine.
#[derive(Debug)]
pub struct Engine {
    /// Where the HTTP control plane listens (the port is known even when 0 was asked).
    pub http: SocketAddr,
    pub store: Arc<Store>,
    /// Set by the admin API's `shutdown`: `serve` stops as on SIGTERM.
    pub shutdown_requested: Arc<AtomicBool>,
    /// The running configuration (`reload` on SIGHUP).
    pub live: Arc<crate::live::Live>,
    pub metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    http_stop: Option<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<JoinHandle<()>>,
}

fn spawn(name: &str, work: impl FnOnce() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.into()).spawn(work)
}

impl Engine {
    /// Opens the store and starts every part.
    pub fn start(config: Config) -> Result<Engine, String> {
        Engine::start_from(config, None)
    }

    /// [`Engine::start`] with the file the configuration came from, so that it can
    /// be reloaded ([`crate::live`]).
    pub fn start_from(config: Config, path: Option<std::path::PathBuf>) -> Result<Engine, String> {
        let config = Arc::new(config);
        let live = Arc::new(crate::live::Live::new(Arc::clone(&config), path));
        let mut store_config = StoreConfig::new(&config.store.path);
        if config.store.durability == "os" {
            store_config.durability = Durability::Os;
        }
        store_config.limits.queue_recipients_max = config.store.queue_recipients_max;
        let (store, report) =
            Store::open(store_config).map_err(|e| format!("store {}: {e}", config.store.path.display()))?;
        tracing::info!(messages = report.messages, recipients = report.recipients, "queue opened");
        if report.quarantined_count > 0 {
            tracing::warn!(count = report.quarantined_count, "corrupt queue records quarantined at open");
        }
        let store = Arc::new(store);
        let metrics = Arc::new(Metrics::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();

        let (results_tx, results_rx) = crossbeam_channel::bounded(RESULTS_CHANNEL);
        let (receptions_tx, receptions_rx) = crossbeam_channel::bounded(RESULTS_CHANNEL);
        let log = DeliveryLog::open(config.log.path.as_deref()).map_err(|e| e.to_string())?;
        let completer = Completer {
            store: Arc::clone(&store),
            classifier: crate::policy::Classifier::new(&config.bounce_rules)?,
            receptions: receptions_rx,
            results: results_rx,
            log,
            live: Arc::clone(&live),
            config: Arc::clone(&config),
            generation: 0,
            metrics: Arc::clone(&metrics),
        };
        threads.push(spawn("ringmail-completer", move || completer.run()).map_err(|e| e.to_string())?);

        let board = Arc::new(crate::shard::LaneBoard::default());
        let mut settings = shard_settings(&config, Arc::clone(&board), Arc::clone(&live))?;
        let mut inboxes = Vec::new();
        for index in 0..config.shard_count() {
            settings.index = index;
            let (tx, rx) = crossbeam_channel::bounded(SHARD_INBOX);
            inboxes.push(tx);
            let (results, settings, metrics, stop) =
                (results_tx.clone(), settings.clone(), Arc::clone(&metrics), Arc::clone(&stop));
            let thread = spawn(&format!("ringmail-shard-{index}"), move || {
                if let Err(error) = crate::shard::run(rx, results, settings, metrics, stop) {
                    tracing::error!(%error, shard = index, "shard stopped");
                }
            });
            threads.push(thread.map_err(|e| e.to_string())?);
        }
        tracing::info!(shards = inboxes.len(), "delivery shards on io_uring");

        let shedding = Arc::new(Shedding::new(Arc::clone(&store), config.ingest.memory_max_mb << 20));
        let ingest = crate::ingest::smtp::Ingest {
            store: Arc::clone(&store),
            metrics: Arc::clone(&metrics),
            shedding: Arc::clone(&shedding),
            receptions: receptions_tx.clone(),
            stop: Arc::clone(&stop),
        };
        let smtp_threads = if config.smtp.threads == 0 { config.shard_count() } else { config.smtp.threads };
        let listeners = crate::ingest::smtp::start(&config.smtp, smtp_threads, ingest)?;
        if !listeners.is_empty() {
            tracing::info!(threads = listeners.len(), "SMTP listener");
            threads.extend(listeners);
        }
        let shutdown_requested = Arc::new(AtomicBool::new(false));
        let rebinds = crate::schedule::Rebinds::default();
        let scheduler_rebinds = rebinds.clone();
        let site_holds = crate::schedule::SiteHolds::default();
        let scheduler_site_holds = site_holds.clone();
        let site_map = crate::schedule::SiteMap::default();
        let scheduler_site_map = site_map.clone();
        let admin = crate::admin::Admin {
            store: Arc::clone(&store),
            metrics: Arc::clone(&metrics),
            shedding: Arc::clone(&shedding),
            log: receptions_tx.clone(),
            live: Arc::clone(&live),
            shutdown: Arc::clone(&shutdown_requested),
            lanes: board,
            rebinds,
            site_holds,
            site_map,
            pools: config.egress.iter().map(|source| source.pool.clone()).collect(),
        };
        let (http, http_stop, http_thread) =
            start_http(&config, &store, &metrics, shedding, admin, Arc::clone(&live), receptions_tx)?;
        threads.push(http_thread);

        let scheduler_config = Arc::clone(&config);
        let scheduler_live = Arc::clone(&live);
        let scheduler = (Arc::clone(&store), Arc::clone(&metrics), Arc::clone(&stop));
        let thread = spawn("ringmail-scheduler", move || {
            let (store, metrics, stop) = scheduler;
            let config = scheduler_config;
            let resolver = match MxResolver::new(&config.dns, config.delivery.smtp_port) {
                Ok(resolver) => resolver,
                Err(error) => return tracing::error!(%error, "no resolver: nothing will be delivered"),
            };
            let scheduler = Scheduler {
                store,
                resolver,
                shards: inboxes,
                results: results_tx,
                live: scheduler_live,
                in_flight_max: config.delivery.in_flight_max,
                hold: config.delivery.hold,
                rebinds: scheduler_rebinds,
                site_holds: scheduler_site_holds,
                site_map: scheduler_site_map,
                metrics,
                stop,
            };
            if let Err(error) = scheduler.run() {
                tracing::error!(%error, "scheduler stopped");
            }
        });
        threads.push(thread.map_err(|e| e.to_string())?);
        Ok(Engine { http, store, shutdown_requested, live, metrics, stop, http_stop: Some(http_stop), threads })
    }

    /// Stops taking work, finishes or hands back what is in flight (bounded), and
    /// waits for every thread.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(http_stop) = self.http_stop.take() {
            let _ = http_stop.send(());
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        if let Err(error) = self.store.sync() {
            tracing::warn!(%error, "final sync of the queue");
        }
    }
}

/// The lane defaults of `[delivery]`, before `[[site]]` rules.
pub fn lane_defaults(config: &Config) -> Result<LanePolicy, String> {
    Ok(LanePolicy {
        connections_max: config.delivery.connections_per_lane_max,
        messages_per_connection_max: config.delivery.messages_per_connection_max,
        tls: config.tls_policy()?,
        message_rate: None,
        connection_rate: None,
    })
}

fn shard_settings(
    config: &Config,
    board: Arc<crate::shard::LaneBoard>,
    live: Arc<crate::live::Live>,
) -> Result<ShardSettings, String> {
    Ok(ShardSettings {
        allowlist: config.allowlist()?,
        lane: lane_defaults(config)?,
        sites: config.sites.clone(),
        idle_timeout: config.idle_timeout(),
        connect_timeout: Duration::from_millis(config.delivery.connect_timeout_ms),
        backoff: Duration::from_secs(5),
        board,
        index: 0,
        live,
    })
}

type HttpParts = (SocketAddr, tokio::sync::oneshot::Sender<()>, JoinHandle<()>);

fn start_http(
    config: &Config,
    store: &Arc<Store>,
    metrics: &Arc<Metrics>,
    shedding: Arc<Shedding>,
    admin: crate::admin::Admin,
    live: Arc<crate::live::Live>,
    receptions: crossbeam_channel::Sender<crate::log::Record>,
) -> Result<HttpParts, String> {
    let listen = config.http.listen;
    let listener = std::net::TcpListener::bind(listen).map_err(|e| format!("http.listen {listen}: {e}"))?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    let router = crate::ingest::http::router(
        Arc::clone(store),
        Arc::clone(metrics),
        shedding,
        crate::ingest::http::HttpSettings {
            body_max: config.http.body_max_bytes,
            recipients_max: config.http.recipients_max,
            live,
            hostname: config.smtp.hostname.clone().unwrap_or_else(|| config.delivery.ehlo_name.clone()),
        },
        receptions,
    )
    .merge(crate::admin::router(admin));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = spawn("ringmail-http", move || {
        let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => return tracing::error!(%error, "http runtime"),
        };
        runtime.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
            let serve = axum::serve(listener, router).with_graceful_shutdown(async {
                let _ = stop_rx.await;
            });
            if let Err(error) = serve.await {
                tracing::error!(%error, "http server");
            }
        });
    })
    .map_err(|e| e.to_string())?;
    tracing::info!(%address, "HTTP control plane listening");
    Ok((address, stop_tx, thread))
}

/// `ringmail serve`: runs until SIGTERM or SIGINT, then stops gracefully.
pub fn serve(config: Config, path: std::path::PathBuf) -> Result<(), String> {
    let engine = Engine::start_from(config, Some(path))?;
    println!("ringmail: serving; HTTP control plane on http://{}", engine.http);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else { return };
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
        let requested = async {
            while !engine.shutdown_requested.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::pin!(requested);
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                () = &mut requested => break,
                _ = hangup.recv() => {
                    let live = Arc::clone(&engine.live);
                    match tokio::task::spawn_blocking(move || live.reload()).await {
                        Ok(Ok(report)) => {
                            tracing::info!(applied = ?report.applied, restart_needed = ?report.restart_needed, "SIGHUP: reloaded")
                        }
                        Ok(Err(error)) => tracing::error!(%error, "SIGHUP: configuration not reloaded"),
                        Err(error) => tracing::error!(%error, "SIGHUP: reload failed"),
                    }
                }
            }
        }
    });
    tracing::info!("stopping: in-flight deliveries get up to 10 s, the rest stays queued");
    engine.shutdown();
    Ok(())
}
