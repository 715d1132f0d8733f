//! Which of the engine's working threads are running: the delivery shards, the SMTP
//! listeners, the scheduler and the completer. A thread that ends while the engine is
//! not stopping (an error, a panic) is marked down with its reason; `/healthz` then
//! answers 503 naming it, and `/metrics` has `ringmail_part_up` per part. Also which
//! socket backend the loops run on (`io_uring` or `epoll`).
//!
//! A leaf: no other module of the engine is imported here.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

/// The engine's parts and its socket backend; shared by every thread.
#[derive(Debug, Default)]
pub struct Parts {
    backend: OnceLock<&'static str>,
    parts: Mutex<Vec<Arc<Part>>>,
}

#[derive(Debug)]
struct Part {
    kind: &'static str,
    index: usize,
    up: AtomicBool,
    reason: Mutex<String>,
}

/// Whether a part runs, as another thread reads it (one atomic load).
#[derive(Clone, Debug)]
pub struct PartState(Arc<Part>);

impl PartState {
    pub fn is_up(&self) -> bool {
        self.0.up.load(Ordering::Relaxed)
    }
}

/// A running part, held by its thread. Dropped without [`Running::stopped`] or
/// [`Running::failed`] (a panic unwinding the thread), it marks the part down.
#[derive(Debug)]
pub struct Running {
    part: Arc<Part>,
    settled: bool,
}

impl Running {
    /// A handle that tells others whether this part still runs.
    pub fn state(&self) -> PartState {
        PartState(Arc::clone(&self.part))
    }

    /// The thread ends because the engine stops: the part is not counted as down.
    pub fn stopped(mut self) {
        self.settled = true;
    }

    /// The thread ends on an error: the part is down for `reason`.
    pub fn failed(mut self, reason: &str) {
        self.settled = true;
        self.part.mark_down(reason);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.settled {
            self.part.mark_down("the thread ended unexpectedly (panic)");
        }
    }
}

impl Part {
    fn mark_down(&self, reason: &str) {
        *self.reason.lock().unwrap_or_else(PoisonError::into_inner) = reason.to_string();
        self.up.store(false, Ordering::Relaxed);
        tracing::error!(part = self.kind, index = self.index, reason, "engine part down");
    }

    fn name(&self) -> String {
        format!("{}-{}", self.kind, self.index)
    }
}

impl Parts {
    /// Records the socket backend the loops run on (the first call wins).
    pub fn set_backend(&self, name: &'static str) {
        let _ = self.backend.set(name);
    }

    /// `io_uring`, `epoll`, or `none` before the engine chose.
    pub fn backend(&self) -> &'static str {
        self.backend.get().copied().unwrap_or("none")
    }

    /// A part that starts running now (`kind`: shard, smtp, scheduler, completer).
    pub fn register(&self, kind: &'static str, index: usize) -> Running {
        let part = Arc::new(Part { kind, index, up: AtomicBool::new(true), reason: Mutex::new(String::new()) });
        self.parts.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::clone(&part));
        Running { part, settled: false }
    }

    /// The parts that are down, as `kind-index: reason`.
    pub fn down(&self) -> Vec<String> {
        let parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
        parts
            .iter()
            .filter(|part| !part.up.load(Ordering::Relaxed))
            .map(|part| format!("{}: {}", part.name(), part.reason.lock().unwrap_or_else(PoisonError::into_inner)))
            .collect()
    }

    /// Whether every part of `kind` is down (none registered counts as down).
    pub fn all_down(&self, kind: &str) -> bool {
        let parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
        !parts.iter().any(|part| part.kind == kind && part.up.load(Ordering::Relaxed))
    }

    /// `ringmail_part_up{part,index}` and `ringmail_io_backend{backend}`, in
    /// Prometheus text.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP ringmail_part_up Whether an engine thread (shard, SMTP listener, scheduler, completer) runs"
        );
        let _ = writeln!(out, "# TYPE ringmail_part_up gauge");
        for part in self.parts.lock().unwrap_or_else(PoisonError::into_inner).iter() {
            let up = u8::from(part.up.load(Ordering::Relaxed));
            let _ = writeln!(out, "ringmail_part_up{{part=\"{}\",index=\"{}\"}} {up}", part.kind, part.index);
        }
        let _ = writeln!(out, "# HELP ringmail_io_backend The socket backend the shards and listeners run on");
        let _ = writeln!(out, "# TYPE ringmail_io_backend gauge");
        let _ = writeln!(out, "ringmail_io_backend{{backend=\"{}\"}} 1", self.backend());
    }
}

/// Waits for `count` threads to report whether their part could start (`(index,
/// Ok(handle))` or `(index, Err(why))`), each within `limit`: the handles in index
/// order, or what went wrong, naming `what` (`delivery shard`, `SMTP listener`) and
/// the socket backend.
pub fn await_started<T>(
    reports: &crossbeam_channel::Receiver<(usize, std::io::Result<T>)>,
    count: usize,
    limit: Duration,
    what: &'static str,
    backend: &'static str,
) -> Result<Vec<T>, PartStartError> {
    let mut handles: Vec<Option<T>> = (0..count).map(|_| None).collect();
    for _ in 0..count {
        match reports.recv_timeout(limit) {
            Ok((index, Ok(handle))) => {
                if let Some(slot) = handles.get_mut(index) {
                    *slot = Some(handle);
                }
            }
            Ok((index, Err(source))) => return Err(PartStartError::Loop { what, index, backend, source }),
            Err(_) => return Err(PartStartError::Timeout { what, limit }),
        }
    }
    handles.into_iter().collect::<Option<Vec<T>>>().ok_or(PartStartError::Twice { what })
}

/// Why the threads of a part (the delivery shards, the SMTP listeners) did not all
/// start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PartStartError {
    /// One of them could not set up its socket loop (io_uring refused, say).
    #[error("{what} {index}: its {backend} loop cannot start: {source}")]
    Loop { what: &'static str, index: usize, backend: &'static str, source: std::io::Error },
    #[error("{what}s did not start within {} s", .limit.as_secs())]
    Timeout { what: &'static str, limit: Duration },
    /// One reported twice and so another never did (a bug).
    #[error("a {what} reported its start twice")]
    Twice { what: &'static str },
}

#[cfg(test)]
mod tests {
    use super::Parts;

    #[test]
    fn a_part_that_fails_or_panics_is_down_and_one_that_stops_is_not() {
        let parts = Parts::default();
        parts.set_backend("epoll");
        parts.register("shard", 0).stopped();
        parts.register("shard", 1).failed("the loop failed");
        let panicked = parts.register("smtp", 0);
        assert!(std::thread::spawn(move || {
            let _held = panicked;
            panic!("injected");
        })
        .join()
        .is_err());
        let down = parts.down();
        assert_eq!(down, ["shard-1: the loop failed", "smtp-0: the thread ended unexpectedly (panic)"]);
        assert!(parts.all_down("smtp"));
        assert!(!parts.all_down("shard"));
        let mut text = String::new();
        parts.render(&mut text);
        assert!(text.contains("ringmail_part_up{part=\"shard\",index=\"0\"} 1"), "{text}");
        assert!(text.contains("ringmail_part_up{part=\"shard\",index=\"1\"} 0"), "{text}");
        assert!(text.contains("ringmail_io_backend{backend=\"epoll\"} 1"), "{text}");
    }

    #[test]
    fn starts_are_collected_in_index_order_and_a_refusal_is_named() {
        let (tx, rx) = crossbeam_channel::bounded(3);
        for index in [2, 0, 1] {
            tx.send((index, Ok(index * 10))).unwrap();
        }
        let limit = std::time::Duration::from_secs(1);
        assert_eq!(super::await_started(&rx, 3, limit, "shard", "epoll").unwrap(), [0, 10, 20]);
        tx.send((0, Ok(0))).unwrap();
        tx.send((1, Err(std::io::Error::from_raw_os_error(1)))).unwrap();
        let error = super::await_started(&rx, 2, limit, "shard", "epoll").unwrap_err();
        assert!(matches!(error, super::PartStartError::Loop { index: 1, .. }), "{error:?}");
        assert_eq!(error.to_string(), "shard 1: its epoll loop cannot start: Operation not permitted (os error 1)");
        let error = super::await_started(&rx, 1, std::time::Duration::from_millis(10), "shard", "epoll");
        assert_eq!(error.unwrap_err().to_string(), "shards did not start within 0 s");
    }
}
