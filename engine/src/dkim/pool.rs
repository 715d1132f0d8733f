//! The signer threads: a fixed pool behind a bounded queue. The SMTP listener (an
//! io_uring thread) and the HTTP runtime hand a message over and await the answer
//! on a oneshot, so that neither ever signs on its own thread nor blocks waiting;
//! a full queue is an immediate "busy" (451 / 503), as any other shedding.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use super::{header_from_domain, Draft, SignError, Signed, Signing};
use crate::metrics::Metrics;

struct Job {
    draft: Draft,
    /// Its header From domain, found by [`SignerPool::submit`].
    from_domain: String,
    tenant: Option<String>,
    reply: tokio::sync::oneshot::Sender<Result<Signed, SignError>>,
}

/// What [`SignerPool::submit`] did with a message.
#[derive(Debug)]
pub enum Submitted {
    /// No `[[dkim]]` entry applies to it: here it is, as it was.
    Unsigned(Draft),
    /// Queued for a signer; the signed message (or why not) comes on this.
    Queued(tokio::sync::oneshot::Receiver<Result<Signed, SignError>>),
    /// The queue is full (`ingest.signing_queue_max`): the message back, unsigned.
    Busy(Draft),
}

/// The signer threads and what they sign with.
pub struct SignerPool {
    jobs: crossbeam_channel::Sender<Job>,
    signing: Arc<RwLock<Arc<Signing>>>,
    /// Whether any entry is configured (the listeners skip the pool without).
    active: AtomicBool,
    /// The configuration generation the signing was loaded for.
    generation: AtomicU64,
    live: Arc<crate::live::Live>,
    reloading: Mutex<()>,
    metrics: Arc<Metrics>,
    queue_max: usize,
}

impl std::fmt::Debug for SignerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignerPool").field("queue_max", &self.queue_max).finish_non_exhaustive()
    }
}

impl SignerPool {
    /// Starts `threads` signers (at least one) behind a queue of `queue_max`
    /// messages. They stop when the pool is dropped.
    pub fn start(
        threads: usize,
        queue_max: usize,
        live: Arc<crate::live::Live>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<SignerPool>, crate::daemon::StartError> {
        let config = live.current();
        let signing = Signing::load(&config)?;
        let (jobs, waiting) = crossbeam_channel::bounded::<Job>(queue_max);
        let pool = Arc::new(SignerPool {
            jobs,
            active: AtomicBool::new(!signing.is_empty()),
            signing: Arc::new(RwLock::new(Arc::new(signing))),
            generation: AtomicU64::new(live.generation()),
            live,
            reloading: Mutex::new(()),
            metrics,
            queue_max,
        });
        for index in 0..threads.max(1) {
            let (waiting, signing, metrics) = (waiting.clone(), Arc::clone(&pool.signing), Arc::clone(&pool.metrics));
            std::thread::Builder::new()
                .name(format!("ringmail-dkim-{index}"))
                .spawn(move || work(&waiting, &signing, &metrics))
                .map_err(|source| crate::daemon::StartError::Io {
                    what: format!("thread ringmail-dkim-{index}"),
                    source,
                })?;
        }
        Ok(pool)
    }

    /// Hands the draft to a signer when an entry applies to it (by its header From
    /// domain, in the message's shared fields, and `tenant`); never waits.
    pub fn submit(&self, draft: Draft, tenant: Option<String>) -> Result<Submitted, SignError> {
        self.follow_reloads();
        if !self.active.load(Ordering::Acquire) {
            return Ok(Submitted::Unsigned(draft));
        }
        let from_domain =
            header_from_domain(&draft.message).filter(|from| self.current().applies(from, tenant.as_deref()));
        let Some(from_domain) = from_domain else { return Ok(Submitted::Unsigned(draft)) };
        let (reply, answer) = tokio::sync::oneshot::channel();
        // Counted before the send: a signer may take the job (and count it off)
        // before `try_send` returns.
        self.metrics.dkim_queue_depth.fetch_add(1, Ordering::Relaxed);
        let refused = |metrics: &Metrics| metrics.dkim_queue_depth.fetch_sub(1, Ordering::Relaxed);
        match self.jobs.try_send(Job { draft, from_domain, tenant, reply }) {
            Ok(()) => Ok(Submitted::Queued(answer)),
            Err(crossbeam_channel::TrySendError::Full(job)) => {
                refused(&self.metrics);
                Ok(Submitted::Busy(job.draft))
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                refused(&self.metrics);
                Err(SignError::Stopped)
            }
        }
    }

    /// The queue's bound, for "busy" answers.
    pub fn queue_max(&self) -> usize {
        self.queue_max
    }

    pub fn current(&self) -> Arc<Signing> {
        Arc::clone(&self.signing.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// After a reload, the keys are read again (a rotated key file at the same
    /// path included); a key that no longer loads keeps the signing as it was.
    fn follow_reloads(&self) {
        let generation = self.live.generation();
        if generation == self.generation.load(Ordering::Relaxed) {
            return;
        }
        let Ok(_one) = self.reloading.try_lock() else { return };
        if generation == self.generation.load(Ordering::Relaxed) {
            return;
        }
        match Signing::load(&self.live.current()) {
            Ok(signing) => {
                // The new entries first, then the switch: mail that sees the pool
                // active finds them.
                let active = !signing.is_empty();
                *self.signing.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(signing);
                self.active.store(active, Ordering::Release);
                tracing::info!(generation, "DKIM keys loaded");
            }
            Err(error) => tracing::error!(%error, "reloaded DKIM keys: keeping the previous ones"),
        }
        self.generation.store(generation, Ordering::Relaxed);
    }
}

fn work(waiting: &crossbeam_channel::Receiver<Job>, signing: &RwLock<Arc<Signing>>, metrics: &Metrics) {
    for job in waiting {
        metrics.dkim_queue_depth.fetch_sub(1, Ordering::Relaxed);
        if job.reply.is_closed() {
            continue; // the client is gone: nothing to store
        }
        let signing = Arc::clone(&signing.read().unwrap_or_else(std::sync::PoisonError::into_inner));
        let started = Instant::now();
        // A panic in a signature is that message's failure, not the thread's end.
        let signed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            signing.sign(job.draft, &job.from_domain, job.tenant.as_deref())
        }))
        .unwrap_or_else(|_| Err(SignError::Failed { entry: "a signer".into(), reason: "it panicked".into() }));
        match &signed {
            Ok(signed) => {
                let copies = signed.heads.len().max(1) as u64;
                for note in &signed.signatures {
                    let counter = match note.a {
                        "ed25519-sha256" => &metrics.dkim_signatures_ed25519,
                        _ => &metrics.dkim_signatures_rsa,
                    };
                    counter.fetch_add(copies, Ordering::Relaxed);
                }
                metrics.dkim_body_hashes.fetch_add(signed.body_hashes, Ordering::Relaxed);
                metrics.dkim_signed_messages.fetch_add(1, Ordering::Relaxed);
                metrics.dkim_sign_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            Err(error) => {
                metrics.dkim_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, "DKIM signing failed: the message is refused");
            }
        }
        let _ = job.reply.send(signed);
    }
}
