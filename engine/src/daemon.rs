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
use crate::shard::{ShardLink, ShardSettings};

/// Work items waiting per shard at most.
const SHARD_INBOX: usize = 8192;
/// After every host of a lane failed, no new connection for this long.
const LANE_BACKOFF: Duration = Duration::from_secs(5);
/// Attempts (and, in their own channel, reception records) waiting for the completer
/// at most.
const RESULTS_CHANNEL: usize = 65_536;
const _: () = assert!(
    crate::schedule::RECEPTIONS_PER_TICK_MAX >= RESULTS_CHANNEL,
    "one completer tick must be able to empty the receptions channel"
);

/// A running engine.
#[derive(Debug)]
pub struct Engine {
    /// Where the HTTP control plane listens (the port is known even when 0 was asked).
    pub http: SocketAddr,
    /// Where the SMTP listeners listen, as bound.
    pub smtp: Vec<SocketAddr>,
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

/// Why the engine did not start. Nothing it started is left running (threads that
/// had started are told to stop).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The queue could not be opened (a newer format, storage errors, a bad path).
    #[error("store {path}: {source}")]
    Store { path: std::path::PathBuf, source: queue_store::StoreError },
    /// A setting the part refused (bypassing `Config::load`'s check, or one only
    /// policy judges).
    #[error(transparent)]
    Config(#[from] crate::config::SettingError),
    /// A thread, socket or runtime could not be set up.
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// A shard loop could not start on the chosen socket backend.
    #[error(transparent)]
    Part(#[from] crate::health::PartStartError),
    /// The SMTP listener did not start (a setting, a bind, its loop).
    #[error(transparent)]
    Listener(#[from] crate::ingest::smtp::ListenerError),
    /// The queue store needs a reopen while serving: exit non-zero so that the
    /// supervisor restarts the daemon (ops/README.md).
    #[error("the queue store needs a reopen (a write or sync failed); restart ringmail")]
    StoreBroken,
}

impl StartError {
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StartError {
        let what = what.into();
        move |source| StartError::Io { what, source }
    }
}

/// Sets the engine's stop flag when dropped armed: a start that fails half way does
/// not leave shards, listeners or the completer running.
struct StopOnFailure(Option<Arc<AtomicBool>>);

impl StopOnFailure {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for StopOnFailure {
    fn drop(&mut self) {
        if let Some(stop) = &self.0 {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

fn spawn(name: &str, work: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, StartError> {
    std::thread::Builder::new().name(name.into()).spawn(work).map_err(StartError::io(format!("thread {name}")))
}

impl Engine {
    /// Opens the store and starts every part.
    pub fn start(config: Config) -> Result<Engine, StartError> {
        Engine::start_from(config, None)
    }

    /// [`Engine::start`] with the file the configuration came from, so that it can
    /// be reloaded ([`crate::live`]).
    pub fn start_from(config: Config, path: Option<std::path::PathBuf>) -> Result<Engine, StartError> {
        let config = Arc::new(config);
        let live = Arc::new(crate::live::Live::new(Arc::clone(&config), path));
        let mut store_config = StoreConfig::new(&config.store.path);
        if config.store.durability == "os" {
            store_config.durability = Durability::Os;
        }
        store_config.limits.queue_recipients_max = config.store.queue_recipients_max;
        store_config.stall_after = Duration::from_millis(config.store.sync_wait_max_ms);
        store_config.write_buffer_bytes = (config.store.write_buffer_mb as usize) << 20;
        store_config.block_cache_bytes = (config.store.block_cache_mb as usize) << 20;
        store_config.idempotency_ttl = Duration::from_secs(config.http.idempotency_ttl_hours.saturating_mul(3600));
        // A message the SMTP listener accepts at its SIZE limit still fits once the
        // listener has added its Received: and Message-ID: headers.
        store_config.limits.message_size_max_bytes = store_config
            .limits
            .message_size_max_bytes
            .max(config.smtp.message_size_max.saturating_add(crate::ingest::smtp::TRACE_HEADERS_MAX));
        let (store, report) = Store::open(store_config)
            .map_err(|source| StartError::Store { path: config.store.path.clone(), source })?;
        tracing::info!(messages = report.messages, recipients = report.recipients, "queue opened");
        if report.quarantined_count > 0 {
            tracing::warn!(count = report.quarantined_count, "corrupt queue records quarantined at open");
        }
        let store = Arc::new(store);
        let metrics = Arc::new(Metrics::default());
        let stop = Arc::new(AtomicBool::new(false));
        // Any failure below stops what was started already.
        let stop_on_failure = StopOnFailure(Some(Arc::clone(&stop)));
        let mut threads = Vec::new();

        let (results_tx, results_rx) = crossbeam_channel::bounded(RESULTS_CHANNEL);
        let (receptions_tx, receptions_rx) = crossbeam_channel::bounded(RESULTS_CHANNEL);
        let log = DeliveryLog::open(config.log.path.as_deref()).map_err(StartError::io("log.path"))?;
        let completer = Completer {
            store: Arc::clone(&store),
            classifier: crate::policy::Classifier::new(&config.bounce_rules).map_err(StartError::Config)?,
            receptions: receptions_rx,
            results: results_rx,
            log,
            live: Arc::clone(&live),
            config: Arc::clone(&config),
            generation: 0,
            metrics: Arc::clone(&metrics),
        };
        let completer_running = metrics.parts.register("completer", 0);
        threads.push(spawn("ringmail-completer", move || {
            completer.run();
            completer_running.stopped();
        })?);

        let backend = crate::io::Backend::detect();
        metrics.parts.set_backend(backend.name());
        let board = Arc::new(crate::shard::LaneBoard::default());
        let shards = start_shards(
            &config,
            backend,
            shard_settings(&config, Arc::clone(&board), Arc::clone(&live), backend).map_err(StartError::Config)?,
            &results_tx,
            &metrics,
            &stop,
            &mut threads,
        )?;

        let shedding = Arc::new(Shedding::new(Arc::clone(&store), config.ingest.memory_max_mb << 20));
        let signing_threads = match config.ingest.signing_threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        };
        let signer = crate::dkim::pool::SignerPool::start(
            signing_threads,
            config.ingest.signing_queue_max,
            Arc::clone(&live),
            Arc::clone(&metrics),
        )?;
        let ingest = crate::ingest::smtp::Ingest {
            store: Arc::clone(&store),
            metrics: Arc::clone(&metrics),
            shedding: Arc::clone(&shedding),
            receptions: receptions_tx.clone(),
            stop: Arc::clone(&stop),
            signer: Arc::clone(&signer),
        };
        let smtp_threads = if config.smtp.threads == 0 { config.shard_count() } else { config.smtp.threads };
        let http_ingest = ingest.clone();
        let listening = crate::ingest::smtp::start(&config.smtp, smtp_threads, backend, ingest)?;
        threads.extend(listening.threads);
        let smtp = listening.addresses;
        let myself = crate::schedule::Myself::new(smtp.clone());
        let shutdown_requested = Arc::new(AtomicBool::new(false));
        let rebinds = crate::operator::Rebinds::default();
        let scheduler_rebinds = rebinds.clone();
        let site_holds = crate::operator::SiteHolds::default();
        let scheduler_site_holds = site_holds.clone();
        let site_map = crate::operator::SiteMap::default();
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
        let arrivals = shedding.arrivals();
        let (http, http_stop, http_thread) = start_http(&config, http_ingest, admin, Arc::clone(&live))?;
        threads.push(http_thread);

        let scheduler_config = Arc::clone(&config);
        let scheduler_live = Arc::clone(&live);
        let handoff = match config.delivery.handoff {
            true => {
                Some(store.handoff().map_err(|source| StartError::Store { path: config.store.path.clone(), source })?)
            }
            false => None,
        };
        let scheduler = (Arc::clone(&store), Arc::clone(&metrics), Arc::clone(&stop));
        let thread = spawn("ringmail-scheduler", move || {
            let (store, metrics, stop) = scheduler;
            let running = metrics.parts.register("scheduler", 0);
            let config = scheduler_config;
            let resolver = match MxResolver::new(&config.dns, config.delivery.smtp_port) {
                Ok(resolver) => resolver,
                Err(error) => return running.failed(&format!("no resolver, nothing will be delivered: {error}")),
            };
            let scheduler = Scheduler {
                store,
                resolver,
                shards,
                arrivals,
                handoff,
                myself,
                results: results_tx,
                live: scheduler_live,
                in_flight_max: config.delivery.in_flight_max,
                in_flight_bytes_max: config.delivery.in_flight_bytes_max,
                hold: config.delivery.hold,
                rebinds: scheduler_rebinds,
                site_holds: scheduler_site_holds,
                site_map: scheduler_site_map,
                metrics,
                stop,
            };
            match scheduler.run() {
                Ok(()) => running.stopped(),
                Err(error) => running.failed(&format!("scheduler stopped: {error}")),
            }
        });
        threads.push(thread?);
        stop_on_failure.disarm();
        Ok(Engine { http, smtp, store, shutdown_requested, live, metrics, stop, http_stop: Some(http_stop), threads })
    }

    /// Whether the store can record nothing more until it is reopened
    /// (`Health::NeedsReopen`, sticky).
    pub fn store_broken(&self) -> bool {
        self.store.health() == queue_store::Health::NeedsReopen
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

/// Starts one delivery shard per core (or as configured) on `backend`, and waits
/// until each says whether its loop could be set up: the engine does not start with
/// a shard that cannot run. A shard whose loop dies later is marked down (health,
/// metrics, and the scheduler, which then gives its lanes to the others); its thread
/// stays to hand back whatever the scheduler still sent it before it saw that.
fn start_shards(
    config: &Config,
    backend: crate::io::Backend,
    mut settings: ShardSettings,
    results_tx: &crossbeam_channel::Sender<crate::shard::Attempt>,
    metrics: &Arc<Metrics>,
    stop: &Arc<AtomicBool>,
    threads: &mut Vec<JoinHandle<()>>,
) -> Result<Vec<ShardLink>, StartError> {
    let count = config.shard_count();
    let (started_tx, started_rx) = crossbeam_channel::bounded(count);
    settings.started = Some(started_tx);
    let mut inboxes = Vec::new();
    for index in 0..count {
        settings.index = index;
        settings.fail_after_works = crate::shard::fault_for(index);
        let (tx, rx) = crossbeam_channel::bounded(SHARD_INBOX);
        let running = metrics.parts.register("shard", index);
        inboxes.push((tx, running.state()));
        let (results, settings, metrics, stop) =
            (results_tx.clone(), settings.clone(), Arc::clone(metrics), Arc::clone(stop));
        let thread = spawn(&format!("ringmail-shard-{index}"), move || {
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                crate::shard::run(&rx, results.clone(), settings, metrics, Arc::clone(&stop))
            }));
            let reason = match ran {
                Ok(Ok(())) => return running.stopped(),
                Ok(Err(error)) => format!("the delivery loop failed: {error}"),
                // What its lanes held unwound with it, leases included: the store
                // makes those recipients due again (at-least-once).
                Err(_) => "the shard panicked; what its lanes held is retried after a restart".to_string(),
            };
            running.failed(&reason);
            release_until_stopped(&rx, &results, &stop);
        });
        threads.push(thread?);
    }
    let wakers =
        crate::health::await_started(&started_rx, count, SHARD_START_TIMEOUT, "delivery shard", backend.name())?;
    let links: Vec<ShardLink> =
        inboxes.into_iter().zip(wakers).map(|((inbox, state), waker)| ShardLink { inbox, waker, state }).collect();
    tracing::info!(shards = count, backend = backend.name(), "delivery shards running");
    Ok(links)
}

/// A shard's loop could be set up within this, or the start fails.
const SHARD_START_TIMEOUT: Duration = Duration::from_secs(10);
/// A dead shard's thread looks for stray work this often.
const DEAD_SHARD_POLL: Duration = Duration::from_millis(50);

/// What reaches a dead shard's inbox goes back to the queue untried.
fn release_until_stopped(
    inbox: &crossbeam_channel::Receiver<crate::shard::Work>,
    results: &crossbeam_channel::Sender<crate::shard::Attempt>,
    stop: &AtomicBool,
) {
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        for work in inbox.try_iter() {
            for attempt in crate::shard::Attempt::all(&work, &crate::shard::AttemptResult::Released, None) {
                // Waits for room: the completer runs until every sender is gone, and a
                // result given up here would leave its recipient in flight.
                if results.send(attempt).is_err() {
                    return tracing::error!("the completer is gone: recipients stay in flight until a restart");
                }
            }
        }
        if stopping {
            return;
        }
        std::thread::sleep(DEAD_SHARD_POLL);
    }
}

fn shard_settings(
    config: &Config,
    board: Arc<crate::shard::LaneBoard>,
    live: Arc<crate::live::Live>,
    backend: crate::io::Backend,
) -> Result<ShardSettings, crate::config::SettingError> {
    Ok(ShardSettings {
        allowlist: config.allowlist()?,
        tls_extra_roots: config.tls_extra_roots()?,
        lanes: crate::shard::LaneSettings {
            lane: LanePolicy::defaults(config)?,
            sites: config.sites.clone(),
            idle_timeout: config.idle_timeout(),
            backoff: LANE_BACKOFF,
        },
        connect_timeout: Duration::from_millis(config.delivery.connect_timeout_ms),
        board,
        index: 0,
        live,
        backend,
        started: None,
        fail_after_works: None,
    })
}

type HttpParts = (SocketAddr, tokio::sync::oneshot::Sender<()>, JoinHandle<()>);

/// The HTTP API on its own thread, taking mail as the SMTP listener does (`ingest`).
fn start_http(
    config: &Config,
    ingest: crate::ingest::smtp::Ingest,
    admin: crate::admin::Admin,
    live: Arc<crate::live::Live>,
) -> Result<HttpParts, StartError> {
    let listen = config.http.listen;
    let listener = std::net::TcpListener::bind(listen).map_err(StartError::io(format!("http.listen {listen}")))?;
    listener.set_nonblocking(true).map_err(StartError::io("http.listen"))?;
    let address = listener.local_addr().map_err(StartError::io("http.listen"))?;
    let guard = Arc::new(crate::http_guard::Guard::new(live, address));
    let router = crate::ingest::http::router(
        Arc::clone(&ingest.store),
        Arc::clone(&ingest.metrics),
        ingest.shedding,
        crate::ingest::http::HttpSettings {
            body_max: config.http.body_max_bytes,
            recipients_max: config.http.recipients_max,
            requests_max: config.http.requests_max,
            hostname: config.smtp.hostname.clone().unwrap_or_else(|| config.delivery.ehlo_name.clone()),
            bounds: crate::ingest::inject::Bounds {
                expansion_max: config.http.expansion_max_bytes,
                fuel: config.http.template_fuel,
            },
        },
        ingest.receptions,
        ingest.signer,
    )
    .merge(crate::admin::router(admin))
    // Outermost: every request passes the door before any route reads it.
    .layer(axum::middleware::from_fn_with_state(guard, crate::http_guard::guard));
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
    })?;
    tracing::info!(%address, "HTTP control plane listening");
    Ok((address, stop_tx, thread))
}

/// `ringmail serve`: runs until SIGTERM or SIGINT, then stops gracefully.
pub fn serve(config: Config, path: std::path::PathBuf) -> Result<(), StartError> {
    let engine = Engine::start_from(config, Some(path))?;
    println!("ringmail: serving; HTTP control plane on http://{}", engine.http);
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(StartError::io("signal runtime"))?;
    runtime.block_on(async {
        let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) else { return };
        let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
        let requested = async {
            while !engine.shutdown_requested.load(Ordering::Relaxed) && !engine.store_broken() {
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
    if engine.store_broken() {
        // Sticky until the store is reopened: this process can record nothing more.
        // Its supervisor restarts it; recovery makes whatever was in flight due again.
        tracing::error!(
            "the queue store needs a reopen (a write or sync failed): stopping, for the supervisor to restart ringmail"
        );
        let stopping = std::thread::spawn(move || engine.shutdown());
        let deadline = std::time::Instant::now() + BROKEN_STORE_STOP_MAX;
        while !stopping.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        return Err(StartError::StoreBroken);
    }
    tracing::info!("stopping: in-flight deliveries get up to 10 s, the rest stays queued");
    engine.shutdown();
    Ok(())
}

/// With a broken store, the orderly stop (shards finish their transactions, up to
/// 10 s) gets this long before the process exits anyway.
const BROKEN_STORE_STOP_MAX: Duration = Duration::from_secs(15);
