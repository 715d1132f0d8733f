//! Deterministic in-memory harness: ringmail's SMTP client session against its server
//! session, with a simulated clock and seeded faults (slow banner, truncated reply,
//! garbage reply, 421 at every stage, reset mid-DATA, a server that stops answering).
//! Every run must end with the session closed and an outcome for every recipient,
//! never a panic or a hang, and never a delivery the server did not store. A failing
//! seed is printed; replay it with `SMTP_SEED=<seed>`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringmail::smtp::{
    ClientConfig, ClientEvent, ClientSession, Outcome, ReceivedMessage, Reply, ServerConfig, ServerEvent,
    ServerSession, SessionError, Transaction, Verdict,
};

/// Steps a run may take: a clean run takes a few dozen; more means a hang.
const STEPS_MAX: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Banner,
    Mail,
    Rcpt,
    Dot,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    /// The greeting arrives after this many seconds.
    SlowBanner(u64),
    /// The server's n-th output is cut in half and the connection closed.
    Truncated(usize),
    /// The server's n-th output is replaced by garbage.
    Garbage(usize),
    /// The server answers 421 at this stage.
    Closing(Stage),
    /// The connection drops after this many bytes of message data reach the server.
    ResetMidData(usize),
    /// The server's output is lost from its n-th on: it never answers again.
    Silent(usize),
}

struct Run {
    fault: Fault,
    now: Instant,
    start: Instant,
    client: ClientSession,
    server: ServerSession,
    to_send: VecDeque<Transaction>,
    sent: Vec<Transaction>,
    results: Vec<Vec<(String, Outcome)>>,
    stored: Vec<ReceivedMessage>,
    closed: Option<Option<SessionError>>,
    link_up: bool,
    outputs: usize,
    data_bytes: usize,
    in_data: bool,
    held: Vec<u8>,
}

fn server_config() -> Arc<ServerConfig> {
    let mut config = ServerConfig::new("mx.harness.test");
    config.size_max = 1 << 20;
    // Longer than the client's, so the client's own timeouts are what the runs show.
    config.timeout_command = Duration::from_secs(3600);
    config.timeout_data = Duration::from_secs(3600);
    Arc::new(config)
}

impl Run {
    fn new(fault: Fault, transactions: Vec<Transaction>, pipelining: bool) -> Run {
        let start = Instant::now();
        let mut client_config = ClientConfig::new("client.harness.test");
        client_config.pipelining = pipelining;
        let server = match fault {
            Fault::Closing(Stage::Banner) => {
                let refusal = Reply::new(421, None, "4.3.2 too busy");
                ServerSession::refuse(server_config(), refusal, start)
            }
            _ => ServerSession::new(server_config(), false, start),
        };
        Run {
            fault,
            now: start,
            start,
            client: ClientSession::new(Arc::new(client_config), start),
            server,
            to_send: transactions.into(),
            sent: Vec::new(),
            results: Vec::new(),
            stored: Vec::new(),
            closed: None,
            link_up: true,
            outputs: 0,
            data_bytes: 0,
            in_data: false,
            held: Vec::new(),
        }
    }

    fn drop_link(&mut self) {
        if self.link_up {
            self.link_up = false;
            self.client.handle_closed(self.now);
            self.server.handle_closed();
        }
    }

    /// Moves client bytes to the server; true if anything moved.
    fn client_to_server(&mut self) -> bool {
        let mut bytes = Vec::new();
        self.client.poll_transmit(&mut bytes);
        if bytes.is_empty() || !self.link_up {
            return false;
        }
        if let Fault::ResetMidData(limit) = self.fault {
            if self.in_data {
                self.data_bytes += bytes.len();
                if self.data_bytes > limit {
                    let keep = bytes.len() - (self.data_bytes - limit);
                    self.server.handle_input(&bytes[..keep], self.now);
                    self.drop_link();
                    return true;
                }
            }
        }
        self.server.handle_input(&bytes, self.now);
        true
    }

    fn serve_events(&mut self) -> bool {
        let mut moved = false;
        while let Some(event) = self.server.poll_event() {
            moved = true;
            let closing = Verdict::Reject(Reply::new(421, None, "4.7.0 try again later"));
            let verdict = match event {
                ServerEvent::Mail { .. } if self.fault == Fault::Closing(Stage::Mail) => closing,
                ServerEvent::Recipient { .. } if self.fault == Fault::Closing(Stage::Rcpt) => closing,
                ServerEvent::Recipient { to } if to.starts_with("reject") => {
                    Verdict::Reject(Reply::new(550, None, "5.1.1 user unknown"))
                }
                ServerEvent::Message(_) if self.fault == Fault::Closing(Stage::Dot) => closing,
                ServerEvent::Message(message) => {
                    self.stored.push(message);
                    Verdict::Accept
                }
                ServerEvent::StartTls => {
                    self.server.handle_tls_established(self.now);
                    continue;
                }
                ServerEvent::Closed => {
                    continue;
                }
                ServerEvent::Mail { .. }
                | ServerEvent::Recipient { .. }
                | ServerEvent::Authenticate { .. }
                | ServerEvent::Data => Verdict::Accept,
            };
            self.server.handle_verdict(verdict, self.now);
        }
        moved
    }

    /// Moves server bytes to the client, through the fault; true if anything moved.
    fn server_to_client(&mut self) -> bool {
        let mut bytes = Vec::new();
        self.server.poll_transmit(&mut bytes);
        if !bytes.is_empty() {
            // Message data flows once a 354 went out, until the next reply.
            self.in_data = bytes.starts_with(b"354") || bytes.windows(5).any(|w| w == b"\n354 ");
            let index = self.outputs;
            self.outputs += 1;
            match self.fault {
                Fault::Silent(from) if index >= from => bytes.clear(),
                Fault::Garbage(at) if index == at => bytes = b"\x00\xffgarbage{}\r\n".to_vec(),
                Fault::Truncated(at) if index == at => {
                    bytes.truncate(bytes.len() / 2);
                    self.held.extend_from_slice(&bytes);
                    let held = std::mem::take(&mut self.held);
                    if self.link_up {
                        self.client.handle_input(&held, self.now);
                    }
                    self.drop_link();
                    return true;
                }
                _ => {}
            }
            self.held.extend_from_slice(&bytes);
        }
        if let Fault::SlowBanner(seconds) = self.fault {
            if self.now < self.start + Duration::from_secs(seconds) {
                return false;
            }
        }
        if self.held.is_empty() || !self.link_up {
            return false;
        }
        let held = std::mem::take(&mut self.held);
        self.client.handle_input(&held, self.now);
        true
    }

    fn client_events(&mut self) -> bool {
        let mut moved = false;
        while let Some(event) = self.client.poll_event() {
            moved = true;
            match event {
                ClientEvent::Ready => match self.to_send.pop_front() {
                    Some(transaction) => {
                        self.sent.push(transaction.clone());
                        self.client.send(transaction, self.now).expect("ready for a transaction");
                    }
                    None => self.client.quit(self.now),
                },
                ClientEvent::StartTls => self.client.handle_tls_established(self.now),
                ClientEvent::TransactionDone(outcomes) => self.results.push(outcomes),
                ClientEvent::Closed(error) => {
                    self.closed = Some(error);
                    self.drop_link();
                }
            }
        }
        if self.server.is_closed() && self.held.is_empty() && self.link_up {
            self.drop_link();
            moved = true;
        }
        moved
    }

    /// Advances the clock to the next deadline; false if there is none.
    fn advance_clock(&mut self) -> bool {
        let mut next = [self.client.poll_timeout(), self.server.poll_timeout()].into_iter().flatten().min();
        if let Fault::SlowBanner(seconds) = self.fault {
            let release = self.start + Duration::from_secs(seconds);
            if self.now < release && !self.held.is_empty() {
                next = Some(next.map_or(release, |n| n.min(release)));
            }
        }
        let Some(next) = next else { return false };
        self.now = self.now.max(next);
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
        true
    }

    fn run(mut self) -> Run {
        for _ in 0..STEPS_MAX {
            if self.closed.is_some() {
                return self;
            }
            let moved = self.client_to_server() | self.serve_events() | self.server_to_client() | self.client_events();
            if !moved && !self.advance_clock() {
                panic!("stuck: nothing to do and no deadline (fault {:?})", self.fault);
            }
        }
        panic!("no end after {STEPS_MAX} steps (fault {:?})", self.fault);
    }
}

/// CRLF everywhere: what a message looks like after stuffing and unstuffing.
fn normalized(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut index = 0;
    while index < message.len() {
        match message[index] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if message.get(index + 1) == Some(&b'\n') {
                    index += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            byte => out.push(byte),
        }
        index += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn random_transactions(rng: &mut fastrand::Rng) -> Vec<Transaction> {
    (0..rng.usize(1..4))
        .map(|t| {
            let recipients = (0..rng.usize(1..5))
                .map(|r| if rng.u8(..10) == 0 { format!("reject{r}@d.test") } else { format!("u{t}.{r}@d.test") })
                .collect();
            let mut message = format!("Message-ID: <{t}@harness.test>\r\nSubject: t\r\n\r\n").into_bytes();
            for _ in 0..rng.usize(0..40) {
                let line = match rng.u8(..6) {
                    0 => ".leading dot\r\n".to_string(),
                    1 => "..two dots\n".to_string(),
                    2 => ".\r\n".to_string(),
                    3 => "bare lf\n".to_string(),
                    _ => format!("{}\r\n", "x".repeat(rng.usize(0..200))),
                };
                message.extend_from_slice(line.as_bytes());
            }
            Transaction { sender: "s@sender.test".into(), recipients, message: message.into(), head: None }
        })
        .collect()
}

fn random_fault(rng: &mut fastrand::Rng) -> Fault {
    let stages = [Stage::Banner, Stage::Mail, Stage::Rcpt, Stage::Dot];
    match rng.u8(..8) {
        0 => Fault::None,
        1 => Fault::SlowBanner(rng.u64(0..600)),
        2 => Fault::Truncated(rng.usize(0..8)),
        3 => Fault::Garbage(rng.usize(0..8)),
        4 => Fault::Closing(stages[rng.usize(..stages.len())]),
        5 => Fault::ResetMidData(rng.usize(0..2000)),
        6 => Fault::Silent(rng.usize(0..8)),
        _ => Fault::None,
    }
}

/// What must hold after any run, whatever the fault.
fn check_invariants(run: &Run) {
    assert!(run.closed.is_some(), "the session ended");
    assert!(run.results.len() <= run.sent.len());
    let stored: Vec<(&str, &[u8])> =
        run.stored.iter().flat_map(|m| m.recipients.iter().map(move |r| (r.as_str(), m.data.as_slice()))).collect();
    for (transaction, outcomes) in run.sent.iter().zip(&run.results) {
        let names: Vec<&String> = outcomes.iter().map(|(r, _)| r).collect();
        assert_eq!(names, transaction.recipients.iter().collect::<Vec<_>>(), "an outcome per recipient");
        for (recipient, outcome) in outcomes {
            if outcome.is_delivered() {
                let found = stored.iter().find(|(r, _)| r == recipient);
                let (_, data) = found.unwrap_or_else(|| panic!("{recipient} delivered but never stored"));
                assert_eq!(*data, normalized(&transaction.message).as_slice(), "stored bytes of {recipient}");
            }
            if recipient.starts_with("reject") && !matches!(outcome, Outcome::Transient { .. }) {
                assert!(matches!(outcome, Outcome::Permanent { reply: Some(r), .. } if r.code == 550));
            }
        }
    }
    // A transaction handed to the session and not answered is only possible if the
    // session failed while it was queued: then its outcome was still reported.
    assert_eq!(run.results.len(), run.sent.len(), "every transaction sent was answered");
}

#[test]
fn clean_runs_deliver_everything_intact_pipelined_or_not() {
    for pipelining in [true, false] {
        let mut rng = fastrand::Rng::with_seed(7);
        let transactions = random_transactions(&mut rng);
        let run = Run::new(Fault::None, transactions.clone(), pipelining).run();
        check_invariants(&run);
        assert_eq!(run.closed, Some(None), "clean QUIT");
        assert_eq!(run.results.len(), transactions.len());
        for outcomes in &run.results {
            for (recipient, outcome) in outcomes {
                assert_eq!(outcome.is_delivered(), !recipient.starts_with("reject"), "{recipient}: {outcome:?}");
            }
        }
    }
}

#[test]
fn a_421_at_every_stage_defers_the_recipients_and_closes() {
    for stage in [Stage::Banner, Stage::Mail, Stage::Rcpt, Stage::Dot] {
        let transaction = Transaction {
            sender: "s@x.test".into(),
            recipients: vec!["a@d.test".into(), "b@d.test".into()],
            message: b"Subject: x\r\n\r\nbody\r\n".to_vec().into(),
            head: None,
        };
        let run = Run::new(Fault::Closing(stage), vec![transaction], true).run();
        check_invariants(&run);
        assert!(
            matches!(&run.closed, Some(Some(SessionError::ServiceClosing(reply))) if reply.code == 421),
            "{stage:?}: {:?}",
            run.closed
        );
        assert!(run.stored.is_empty());
        for outcomes in &run.results {
            for (_, outcome) in outcomes {
                assert!(matches!(outcome, Outcome::Transient { reply: Some(r), .. } if r.code == 421), "{outcome:?}");
            }
        }
    }
}

#[test]
fn a_server_that_never_answers_times_out_in_the_right_phase() {
    let transaction = Transaction {
        sender: "s@x.test".into(),
        recipients: vec!["a@d.test".into()],
        message: b"x\r\n".to_vec().into(),
        head: None,
    };
    let cases = [(0, "greeting", 300), (1, "EHLO", 300), (2, "transaction", 300)];
    for (silent_from, phase, seconds) in cases {
        let run = Run::new(Fault::Silent(silent_from), vec![transaction.clone()], true).run();
        check_invariants(&run);
        assert_eq!(run.closed, Some(Some(SessionError::Timeout(phase))));
        assert_eq!(run.now - run.start, Duration::from_secs(seconds), "{phase} timeout");
    }
    // A slow greeting within the timeout is fine; past it, it is a timeout.
    let slow = Run::new(Fault::SlowBanner(299), vec![transaction.clone()], true).run();
    assert_eq!(slow.closed, Some(None));
    let too_slow = Run::new(Fault::SlowBanner(301), vec![transaction], true).run();
    assert_eq!(too_slow.closed, Some(Some(SessionError::Timeout("greeting"))));
}

#[test]
fn seeded_faults_never_panic_hang_or_invent_a_delivery() {
    let first = std::env::var("SMTP_SEED").ok().and_then(|s| s.parse::<u64>().ok());
    let seeds: Vec<u64> = match first {
        Some(seed) => vec![seed],
        None => (0..3000).collect(),
    };
    let runs = seeds.len();
    let (mut delivered, mut failed_sessions) = (0, 0);
    for seed in seeds {
        let outcome = std::panic::catch_unwind(|| {
            let mut rng = fastrand::Rng::with_seed(seed);
            let fault = random_fault(&mut rng);
            let pipelining = rng.bool();
            let run = Run::new(fault, random_transactions(&mut rng), pipelining).run();
            check_invariants(&run);
            let delivered = run.results.iter().flatten().filter(|(_, o)| o.is_delivered()).count();
            (delivered, matches!(run.closed, Some(Some(_))))
        });
        match outcome {
            Ok((count, failed)) => {
                delivered += count;
                failed_sessions += usize::from(failed);
            }
            Err(_) => panic!("harness failed for seed {seed}: replay with SMTP_SEED={seed}"),
        }
    }
    // The runs exercised both paths: deliveries, and sessions cut short by a fault.
    if runs > 1 {
        assert!(delivered > runs / 2, "{delivered} deliveries in {runs} runs");
        assert!(failed_sessions > runs / 4, "{failed_sessions} failed sessions in {runs} runs");
    }
}
