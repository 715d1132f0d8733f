//! One loop per connection: moves bytes between a [`Connection`] and a sans-IO
//! session, applies the session's deadlines, performs STARTTLS when asked, and hands
//! events to the caller.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use rustls::pki_types::ServerName;

use super::tls::{ClientTls, Connection};
use super::{Stream, READ_BUFFER_BYTES};
use crate::smtp::{ClientEvent, ClientSession, Outcome, ServerEvent, ServerSession, Transaction, Verdict};

/// What the caller decides for a server session's questions.
#[allow(async_fn_in_trait)] // single-threaded runtimes: the futures need not be Send
pub trait ServerHandler {
    /// Answers `Mail`, `Recipient`, `Authenticate` and `Message` events.
    async fn decide(&mut self, event: ServerEvent, tls: bool) -> Verdict;
}

/// Hands the session the next transaction it takes, or says QUIT when none is left.
/// A transaction the session refuses (a caller's mistake) is reported as unsent.
/// Hands the session the next transaction it takes; QUIT when none is left.
pub(super) fn send_next(
    session: &mut ClientSession,
    pending: &mut VecDeque<Transaction>,
    unsent: &mut Vec<Transaction>,
) {
    while let Some(transaction) = pending.pop_front() {
        match session.send(transaction.clone(), Instant::now()) {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, "transaction refused by the session");
                unsent.push(transaction);
            }
        }
    }
    session.quit(Instant::now());
}

/// Runs `work` until `deadline`; `None` when the deadline came first.
async fn until<T>(deadline: Option<Instant>, work: impl std::future::Future<Output = T>) -> Option<T> {
    match deadline {
        None => Some(work.await),
        Some(deadline) => tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), work).await.ok(),
    }
}

/// How one client connection ended.
#[derive(Debug)]
pub struct ClientReport {
    /// One entry per transaction handed to the session, in order.
    pub results: Vec<Vec<(String, Outcome)>>,
    /// Transactions never started (the session ended first); retry them elsewhere.
    pub unsent: Vec<Transaction>,
    /// `None` after a clean QUIT.
    pub error: Option<crate::smtp::SessionError>,
    pub tls: bool,
    /// What the TLS handshake gave, when the connection was upgraded.
    pub tls_info: Option<super::tls::TlsInfo>,
}

/// Runs a client session over `connection` until every transaction is done (then
/// QUIT) or the session fails.
pub async fn run_client<S: Stream>(
    mut connection: Connection<S>,
    mut session: ClientSession,
    tls: &ClientTls,
    server_name: ServerName<'static>,
    transactions: Vec<Transaction>,
) -> ClientReport {
    let mut pending = VecDeque::from(transactions);
    let mut report = ClientReport { results: Vec::new(), unsent: Vec::new(), error: None, tls: false, tls_info: None };
    let mut out = Vec::with_capacity(READ_BUFFER_BYTES);
    let mut buf = Vec::with_capacity(READ_BUFFER_BYTES);
    loop {
        // Events first, so that what they set going (the next transaction behind a
        // message's content) leaves in the same write: one segment, no Nagle stall.
        while let Some(event) = session.poll_event() {
            match event {
                ClientEvent::Ready => send_next(&mut session, &mut pending, &mut report.unsent),
                ClientEvent::StartTls => {
                    // The STARTTLS reply has been read; nothing may be pending to write.
                    let upgrade = connection.upgrade_client(tls, server_name.clone());
                    match until(session.poll_timeout(), upgrade).await {
                        Some(Ok(())) => session.handle_tls_established(Instant::now()),
                        Some(Err(error)) => session.handle_tls_failed(error.to_string()),
                        None => session.handle_tls_failed("handshake timed out".into()),
                    }
                }
                ClientEvent::TransactionDone(outcomes) => report.results.push(outcomes),
                ClientEvent::Closed(error) => {
                    let deadline = Some(Instant::now() + CLOSE_TIMEOUT);
                    let _ = until(deadline, connection.close()).await;
                    report.error = error;
                    report.tls = connection.is_tls();
                    report.tls_info = connection.tls_info().cloned();
                    report.unsent.extend(pending);
                    return report;
                }
            }
        }
        session.poll_transmit(&mut out);
        if !out.is_empty() {
            // A peer that stops reading must not hold us: RFC 5321's data-block timeout.
            let deadline = Some(Instant::now() + session.write_timeout());
            match until(deadline, connection.write_all_owned(std::mem::take(&mut out))).await {
                Some((result, returned)) => {
                    out = returned;
                    out.clear();
                    if result.is_err() {
                        session.handle_closed(Instant::now());
                    }
                }
                None => session.handle_closed(Instant::now()),
            }
            continue;
        }
        match until(session.poll_timeout(), connection.read_owned(std::mem::take(&mut buf))).await {
            None => session.handle_timeout(Instant::now()),
            Some((Ok(0) | Err(_), returned)) => {
                buf = returned;
                session.handle_closed(Instant::now());
            }
            Some((Ok(_), returned)) => {
                session.handle_input(&returned, Instant::now());
                buf = returned;
            }
        }
    }
}

/// Runs a server session over `connection` until it closes. `tls_config` enables
/// STARTTLS (the session's config must offer it too).
pub async fn run_server<S: Stream, H: ServerHandler>(
    mut connection: Connection<S>,
    mut session: ServerSession,
    tls_config: Option<Arc<rustls::ServerConfig>>,
    handler: &mut H,
) {
    let mut out = Vec::with_capacity(READ_BUFFER_BYTES);
    let mut buf = Vec::with_capacity(READ_BUFFER_BYTES);
    loop {
        while let Some(event) = session.poll_event() {
            match event {
                ServerEvent::StartTls => {
                    flush(&mut connection, &mut session, &mut out).await;
                    let Some(config) = tls_config.clone() else { return };
                    let deadline = Some(Instant::now() + SERVER_HANDSHAKE_TIMEOUT);
                    match until(deadline, connection.upgrade_server(config)).await {
                        Some(Ok(())) => session.handle_tls_established(Instant::now()),
                        Some(Err(error)) => {
                            tracing::debug!(%error, "server-side TLS handshake failed");
                            return;
                        }
                        None => return,
                    }
                }
                ServerEvent::Closed => {
                    flush(&mut connection, &mut session, &mut out).await;
                    let _ = until(Some(Instant::now() + CLOSE_TIMEOUT), connection.close()).await;
                    return;
                }
                question => {
                    let verdict = handler.decide(question, connection.is_tls()).await;
                    session.handle_verdict(verdict, Instant::now());
                }
            }
        }
        if !flush(&mut connection, &mut session, &mut out).await {
            return;
        }
        if session.is_closed() {
            return;
        }
        match until(session.poll_timeout(), connection.read_owned(std::mem::take(&mut buf))).await {
            None => session.handle_timeout(Instant::now()),
            Some((Ok(0) | Err(_), _)) => return,
            Some((Ok(_), returned)) => {
                session.handle_input(&returned, Instant::now());
                buf = returned;
            }
        }
    }
}

/// Saying close_notify may take this long; the connection closes either way.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// A client gets this long to finish a server-side TLS handshake.
const SERVER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// Writing one batch of replies must finish within this (a client that stops
/// reading is dropped, not waited for).
const SERVER_WRITE_TIMEOUT: Duration = Duration::from_secs(300);

/// Writes what the server session has to say; false if the connection failed.
async fn flush<S: Stream>(connection: &mut Connection<S>, session: &mut ServerSession, out: &mut Vec<u8>) -> bool {
    out.clear();
    session.poll_transmit(out);
    if out.is_empty() {
        return true;
    }
    let deadline = Some(Instant::now() + SERVER_WRITE_TIMEOUT);
    match until(deadline, connection.write_all_owned(std::mem::take(out))).await {
        Some((result, returned)) => {
            *out = returned;
            result.is_ok()
        }
        None => false,
    }
}
