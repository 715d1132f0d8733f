//! The completion a caller waits on for a request the writer thread serves.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::error::StoreError;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// The answer to a request, once the writer has handled it (for an enqueue: once it
/// is synced). Wait from a plain thread with [`Pending::wait`], or `.await` it on any
/// async runtime (tokio, tokio-uring, ...): awaiting never blocks the runtime's thread.
#[derive(Debug)]
#[must_use = "a request's outcome is only known by waiting for it"]
pub struct Pending<T> {
    receiver: oneshot::Receiver<Result<T, StoreError>>,
}

pub(crate) fn pending<T>() -> (Reply<T>, Pending<T>) {
    let (sender, receiver) = oneshot::channel();
    (sender, Pending { receiver })
}

impl<T> Pending<T> {
    /// Blocks this thread until the answer comes. Must not be called on an async
    /// runtime's thread (tokio panics if it is): `.await` the `Pending` there.
    pub fn wait(self) -> Result<T, StoreError> {
        self.receiver.blocking_recv().unwrap_or(Err(StoreError::Closed))
    }
}

impl<T> Pending<T> {
    /// The answer, or `Unhealthy(Stalled)` as soon as the store counts as stalled
    /// ([`crate::Store::stall_signal`]): a bound on the wait for hung storage. The
    /// request itself is not withdrawn: it may still be carried out (whole, never in
    /// part) once the storage returns.
    pub async fn or_stalled(self, signal: StallSignal) -> Result<T, StoreError> {
        let mut stalled = std::pin::pin!(signal.stalled());
        let mut answer = self;
        // The answer first: one that is ready wins over a stall.
        std::future::poll_fn(|cx| {
            if let Poll::Ready(answer) = Pin::new(&mut answer).poll(cx) {
                return Poll::Ready(answer);
            }
            match stalled.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(StoreError::Unhealthy(crate::error::Health::Stalled))),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

/// What [`Pending::or_stalled`] watches; from [`crate::Store::stall_signal`].
#[derive(Clone, Debug)]
pub struct StallSignal(pub(crate) std::sync::Arc<crate::shared::Shared>);

impl StallSignal {
    /// Ready once the store counts as stalled (at once if it does now).
    pub async fn stalled(&self) {
        let mut notified = std::pin::pin!(self.0.stall.notified());
        notified.as_mut().enable();
        if self.0.stalled.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.receiver).poll(cx).map(|answer| answer.unwrap_or(Err(StoreError::Closed)))
    }
}
