//! The SMTP client session, without I/O: bytes and time in, bytes, deadlines and
//! events out. One session is one connection to one server.
//!
//! Call order (as quinn-proto's `Connection`): feed what the socket read with
//! [`ClientSession::handle_input`], call [`ClientSession::handle_timeout`] when the
//! deadline from [`ClientSession::poll_timeout`] passes, report a finished TLS
//! handshake with [`ClientSession::handle_tls_established`] and a closed socket with
//! [`ClientSession::handle_closed`]; after each, write what
//! [`ClientSession::poll_transmit`] gives and act on every [`ClientEvent`] from
//! [`ClientSession::poll_event`]. When the session is ready, hand it a
//! [`Transaction`] with [`ClientSession::send`]; end with [`ClientSession::quit`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::command::{write_command, Command, MailParameters};
use super::data;
use super::reply::{Reply, ReplyError, ReplyParser};
use super::timeouts::Timeouts;

/// Whether to use STARTTLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TlsMode {
    /// Never, even when offered.
    Disabled,
    /// When offered; plaintext otherwise.
    Opportunistic,
    /// Always, with a certificate that verifies (a trusted chain naming the MX host):
    /// a server that does not offer STARTTLS, refuses it, or presents a certificate
    /// that does not verify gets no mail. (Checking the certificate is the
    /// transport's part; this session only insists on STARTTLS.)
    Required,
    /// Always, whatever the certificate (Postfix's `encrypt`, KumoMTA's
    /// `RequiredInsecure`): for sites known to use self-signed certificates.
    RequiredInsecure,
}

impl TlsMode {
    /// Whether a session without TLS must fail.
    pub fn is_required(self) -> bool {
        matches!(self, TlsMode::Required | TlsMode::RequiredInsecure)
    }

    /// Whether the server's certificate must verify.
    pub fn verifies(self) -> bool {
        self == TlsMode::Required
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The name this client gives in EHLO/HELO.
    pub ehlo_name: String,
    pub timeouts: Timeouts,
    pub tls: TlsMode,
    /// The connection is TLS from the start (port 465): no STARTTLS.
    pub implicit_tls: bool,
    /// Use PIPELINING (RFC 2920) when the server offers it.
    pub pipelining: bool,
    /// Authenticate (AUTH PLAIN, else LOGIN) after EHLO: for smarthosts.
    pub credentials: Option<Credentials>,
    /// Allow AUTH on a connection that is not encrypted. Off by default.
    pub auth_without_tls: bool,
}

impl ClientConfig {
    pub fn new(ehlo_name: impl Into<String>) -> Self {
        ClientConfig {
            ehlo_name: ehlo_name.into(),
            timeouts: Timeouts::default(),
            tls: TlsMode::Opportunistic,
            implicit_tls: false,
            pipelining: true,
            credentials: None,
            auth_without_tls: false,
        }
    }
}

/// What the server said it supports in its EHLO reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub pipelining: bool,
    /// The SIZE limit; `Some(0)` when SIZE is offered without a number (no limit).
    pub size: Option<u64>,
    pub starttls: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub enhanced_status_codes: bool,
    pub chunking: bool,
    /// AUTH mechanisms, uppercased.
    pub auth: Vec<String>,
}

impl Capabilities {
    /// Reads the extension lines of an EHLO reply (every line after the first).
    pub fn from_ehlo(reply: &Reply) -> Self {
        let mut capabilities = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else { continue };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => capabilities.pipelining = true,
                "SIZE" => capabilities.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "STARTTLS" => capabilities.starttls = true,
                "8BITMIME" => capabilities.eight_bit_mime = true,
                "SMTPUTF8" => capabilities.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => capabilities.enhanced_status_codes = true,
                "CHUNKING" => capabilities.chunking = true,
                "AUTH" => capabilities.auth = words.map(str::to_ascii_uppercase).collect(),
                _ => {}
            }
        }
        capabilities
    }
}

/// One message to some recipients, on one connection.
#[derive(Clone, Debug)]
pub struct Transaction {
    /// Reverse-path; empty for the null sender.
    pub sender: String,
    pub recipients: Vec<String>,
    /// The RFC 5322 message; line ends are normalised and dots stuffed on the way out.
    pub message: Arc<[u8]>,
    /// Header fields sent before `message` (a recipient's own header block beside a
    /// body stored once for many): whole fields, each ending in CRLF.
    pub head: Option<Arc<[u8]>>,
}

impl Transaction {
    /// The head (if any) and the message, in the order they are sent.
    fn parts(&self) -> impl Iterator<Item = &[u8]> {
        self.head.as_deref().into_iter().chain(std::iter::once(&self.message[..]))
    }

    /// Whether any byte sent has the high bit set.
    fn is_8bit(&self) -> bool {
        self.parts().any(data::is_8bit)
    }

    /// The octets sent for head and message, the end-of-data line excluded.
    fn stuffed_len(&self) -> usize {
        self.parts().map(data::stuffed_len).sum()
    }

    /// Whether the envelope needs SMTPUTF8 (a non-ASCII address, RFC 6531).
    pub fn needs_smtputf8(&self) -> bool {
        !self.sender.is_ascii() || self.recipients.iter().any(|r| !r.is_ascii())
    }
}

/// What became of one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The server took responsibility (2xx after the final dot).
    Delivered { reply: Reply },
    /// Try again later: a 4xx, a lost connection, a timeout.
    Transient { reply: Option<Reply>, reason: String },
    /// Do not try again: a 5xx, or something this server can never accept.
    Permanent { reply: Option<Reply>, reason: String },
}

impl Outcome {
    /// The outcome a reply means for the recipients it answers.
    pub fn from_reply(reply: &Reply, context: &str) -> Outcome {
        let reason = format!("{context}: {}", reply.summary());
        match reply.code {
            200..=299 => Outcome::Delivered { reply: reply.clone() },
            500..=599 => Outcome::Permanent { reply: Some(reply.clone()), reason },
            _ => Outcome::Transient { reply: Some(reply.clone()), reason },
        }
    }

    pub fn is_delivered(&self) -> bool {
        matches!(self, Outcome::Delivered { .. })
    }
}

/// Why a session ended early. Sticky: once failed, a session stays failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    #[error("timed out waiting for the {0} reply")]
    Timeout(&'static str),
    #[error("connection lost while waiting for the {0} reply")]
    ConnectionLost(&'static str),
    #[error("protocol error: {0}")]
    Protocol(ReplyError),
    #[error("unexpected reply to {phase}: {reply}")]
    UnexpectedReply { phase: &'static str, reply: Reply },
    /// The server is closing the connection (421): slow down.
    #[error("server closing: {0}")]
    ServiceClosing(Reply),
    /// The server refused the session (554 greeting, or EHLO and HELO refused).
    #[error("session refused: {0}")]
    Refused(Reply),
    #[error("TLS required by policy but the server {0}")]
    TlsRequired(&'static str),
    #[error("TLS handshake failed: {0}")]
    TlsFailed(String),
    #[error("AUTH refused to run over a connection without TLS")]
    AuthRequiresTls,
    #[error("the server offers neither AUTH PLAIN nor AUTH LOGIN")]
    AuthUnavailable,
    #[error("authentication failed: {0}")]
    AuthFailed(Reply),
}

/// A caller's mistake: the session is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MisuseError {
    #[error("the session is not ready for a transaction")]
    NotReady,
    #[error("a transaction needs at least one recipient")]
    NoRecipients,
    #[error("an envelope address holds a control character or an angle bracket")]
    BadAddress,
    #[error("the session has failed: {0}")]
    Failed(SessionError),
}

/// What the caller must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// Ready for a transaction (after the greeting, TLS and AUTH; and after each one).
    Ready,
    /// Start the TLS handshake on this connection now, then call
    /// `handle_tls_established` (or `handle_tls_failed`).
    StartTls,
    /// A transaction ended: one outcome per recipient, in order.
    TransactionDone(Vec<(String, Outcome)>),
    /// The session is over: close the connection. `None` after a clean QUIT.
    Closed(Option<SessionError>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Banner,
    Ehlo,
    Helo,
    StartTls,
    TlsHandshake,
    AuthPlain,
    /// `AUTH PLAIN` sent without its response (too long for one command line):
    /// waiting for the 334 that asks for it.
    AuthPlainAsked,
    AuthLoginUser,
    AuthLoginPassword,
    AuthLoginDone,
    Ready,
    Rset,
    Transaction,
    Quit,
    Closed,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Banner => "greeting",
            Phase::Ehlo => "EHLO",
            Phase::Helo => "HELO",
            Phase::StartTls => "STARTTLS",
            Phase::TlsHandshake => "TLS handshake",
            Phase::AuthPlain
            | Phase::AuthPlainAsked
            | Phase::AuthLoginUser
            | Phase::AuthLoginPassword
            | Phase::AuthLoginDone => "AUTH",
            Phase::Ready => "idle",
            Phase::Rset => "RSET",
            Phase::Transaction => "transaction",
            Phase::Quit => "QUIT",
            Phase::Closed => "closed",
        }
    }
}

/// The reply a transaction waits for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Mail,
    Rcpt(usize),
    Data,
    /// The reply after the final dot; `false` when only an empty "." was sent to
    /// close a DATA the server should not have accepted (RFC 2920 §3.1).
    Dot {
        real: bool,
    },
}

#[derive(Debug)]
struct Active {
    transaction: Transaction,
    expected: VecDeque<Expect>,
    pipelined: bool,
    mail: Option<Reply>,
    rcpt: Vec<Option<Reply>>,
    data: Option<Reply>,
    dot: Option<Reply>,
}

impl Active {
    fn accepted(&self) -> usize {
        self.rcpt.iter().filter(|reply| reply.as_ref().is_some_and(is_success)).count()
    }

    fn mail_accepted(&self) -> bool {
        self.mail.as_ref().is_some_and(is_success)
    }
}

/// See the module docs for the call order.
#[derive(Debug)]
pub struct ClientSession {
    config: Arc<ClientConfig>,
    phase: Phase,
    parser: ReplyParser,
    out: Vec<u8>,
    events: VecDeque<ClientEvent>,
    deadline: Option<Instant>,
    capabilities: Capabilities,
    tls_active: bool,
    active: Option<Active>,
    /// A transaction begun behind `active`, whose content is sent and awaits only the
    /// final reply: RFC 2920 §3.1 lets message content lead the next group, so the
    /// next MAIL/RCPT/DATA go out in the same write as the content.
    next: Option<Active>,
    /// A transaction waiting for the RSET that clears an aborted one.
    queued: Option<Transaction>,
    needs_rset: bool,
    /// `Ready` was announced and no transaction has been sent since.
    ready_announced: bool,
    /// QUIT once the transactions under way are done.
    quit_pending: bool,
    error: Option<SessionError>,
}

impl ClientSession {
    /// A session on a connection just opened (the greeting not yet read).
    pub fn new(config: Arc<ClientConfig>, now: Instant) -> Self {
        let deadline = Some(now + config.timeouts.banner);
        let tls_active = config.implicit_tls;
        ClientSession {
            config,
            phase: Phase::Banner,
            parser: ReplyParser::new(),
            out: Vec::new(),
            events: VecDeque::new(),
            deadline,
            capabilities: Capabilities::default(),
            tls_active,
            active: None,
            next: None,
            queued: None,
            needs_rset: false,
            ready_announced: false,
            quit_pending: false,
            error: None,
        }
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    pub fn is_tls(&self) -> bool {
        self.tls_active
    }

    /// Whether `send` takes a transaction now: when idle, and (with PIPELINING) while
    /// the one under way awaits only its final reply.
    pub fn is_ready(&self) -> bool {
        if self.queued.is_some() || self.quit_pending {
            return false;
        }
        match self.phase {
            Phase::Ready => true,
            Phase::Transaction => self.next.is_none() && !self.needs_rset && self.awaits_only_final_reply(),
            _ => false,
        }
    }

    fn awaits_only_final_reply(&self) -> bool {
        self.active.as_ref().is_some_and(|active| {
            active.pipelined && active.expected.len() == 1 && active.expected[0] == Expect::Dot { real: true }
        })
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    pub fn error(&self) -> Option<&SessionError> {
        self.error.as_ref()
    }

    /// How long the transport may take to write one block of message data.
    pub fn write_timeout(&self) -> Duration {
        self.config.timeouts.data_block
    }

    /// Appends the bytes to send to `out`.
    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.out);
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must be called, if the session is waiting for a reply.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Bytes read from the server.
    pub fn handle_input(&mut self, mut input: &[u8], now: Instant) {
        while !input.is_empty() && self.phase != Phase::Closed {
            match self.parser.parse(input) {
                Ok((reply, used)) => {
                    input = &input[used..];
                    if let Some(reply) = reply {
                        self.handle_reply(reply, now);
                    }
                }
                Err(error) => return self.fail(SessionError::Protocol(error)),
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|deadline| now >= deadline) {
            self.fail(SessionError::Timeout(self.phase.name()));
        }
    }

    /// The connection closed (or reset) under us.
    pub fn handle_closed(&mut self, _now: Instant) {
        match self.phase {
            Phase::Closed => {}
            Phase::Quit => self.close(None),
            phase => self.fail(SessionError::ConnectionLost(phase.name())),
        }
    }

    /// The TLS handshake asked for by `ClientEvent::StartTls` succeeded: greet again.
    pub fn handle_tls_established(&mut self, now: Instant) {
        if self.phase != Phase::TlsHandshake {
            return;
        }
        if self.parser.is_mid_reply() {
            // Bytes after the 220 that would be read as if they came over TLS (RFC 3207 §6).
            return self.fail(SessionError::TlsFailed("plaintext after the STARTTLS reply".into()));
        }
        self.parser = ReplyParser::new();
        self.tls_active = true;
        self.capabilities = Capabilities::default();
        self.command(Command::Ehlo(self.config.ehlo_name.clone()), Phase::Ehlo, self.config.timeouts.command, now);
    }

    pub fn handle_tls_failed(&mut self, reason: String) {
        self.fail(SessionError::TlsFailed(reason));
    }

    /// Starts a transaction. Only when ready; the outcome comes as
    /// `ClientEvent::TransactionDone`.
    pub fn send(&mut self, transaction: Transaction, now: Instant) -> Result<(), MisuseError> {
        if let Some(error) = &self.error {
            return Err(MisuseError::Failed(error.clone()));
        }
        if !self.is_ready() {
            return Err(MisuseError::NotReady);
        }
        if transaction.recipients.is_empty() {
            return Err(MisuseError::NoRecipients);
        }
        let unsafe_path = |path: &str| path.chars().any(|c| c.is_control() || c == '<' || c == '>');
        if unsafe_path(&transaction.sender) || transaction.recipients.iter().any(|r| unsafe_path(r)) {
            return Err(MisuseError::BadAddress);
        }
        self.ready_announced = false;
        if let Some(reason) = self.unsendable(&transaction) {
            let outcomes = transaction
                .recipients
                .into_iter()
                .map(|r| (r, Outcome::Permanent { reply: None, reason: reason.clone() }))
                .collect();
            self.events.push_back(ClientEvent::TransactionDone(outcomes));
            self.announce_ready();
            return Ok(());
        }
        if self.needs_rset {
            self.queued = Some(transaction);
            self.command(Command::Rset, Phase::Rset, self.config.timeouts.command, now);
            return Ok(());
        }
        self.begin(transaction, now);
        Ok(())
    }

    /// Says QUIT when idle, or once the transaction under way is done; the session
    /// then ends with `Closed(None)`.
    pub fn quit(&mut self, now: Instant) {
        match self.phase {
            Phase::Ready => self.command(Command::Quit, Phase::Quit, self.config.timeouts.quit, now),
            Phase::Transaction | Phase::Rset => self.quit_pending = true,
            Phase::Closed | Phase::Quit => {}
            _ => self.close(None),
        }
    }

    /// Why this server can never take this transaction, if so.
    fn unsendable(&self, transaction: &Transaction) -> Option<String> {
        if transaction.needs_smtputf8() && !self.capabilities.smtputf8 {
            return Some("the message needs SMTPUTF8 and the server does not offer it".into());
        }
        // RFC 6152: 8-bit content only to a server that says 8BITMIME. Converting it
        // here would break a DKIM signature made at ingest: refused instead.
        if !self.capabilities.eight_bit_mime && transaction.is_8bit() {
            return Some(
                "554 5.6.3 the message has 8-bit content and the server does not offer 8BITMIME \
                 (RFC 6152); ringmail does not convert at delivery"
                    .into(),
            );
        }
        match self.capabilities.size {
            Some(limit) if limit > 0 && transaction.stuffed_len() as u64 > limit => {
                let size = transaction.stuffed_len();
                Some(format!("the message ({size} octets) exceeds the server's SIZE {limit}"))
            }
            _ => None,
        }
    }

    fn begin(&mut self, transaction: Transaction, now: Instant) {
        let parameters = MailParameters {
            size: self.capabilities.size.map(|_| transaction.stuffed_len() as u64),
            body_8bit: self.capabilities.eight_bit_mime && transaction.is_8bit(),
            smtputf8: transaction.needs_smtputf8(),
        };
        let pipelined = self.config.pipelining && self.capabilities.pipelining;
        let count = transaction.recipients.len();
        write_command(&Command::Mail { from: transaction.sender.clone(), parameters }, &mut self.out);
        let mut expected = VecDeque::from([Expect::Mail]);
        if pipelined {
            for (index, recipient) in transaction.recipients.iter().enumerate() {
                write_command(&Command::Rcpt { to: recipient.clone() }, &mut self.out);
                expected.push_back(Expect::Rcpt(index));
            }
            write_command(&Command::Data, &mut self.out);
            expected.push_back(Expect::Data);
        }
        let begun =
            Active { transaction, expected, pipelined, mail: None, rcpt: vec![None; count], data: None, dot: None };
        if self.active.is_some() {
            // Behind the content of the one under way; its deadline stands.
            self.next = Some(begun);
            return;
        }
        self.active = Some(begun);
        self.phase = Phase::Transaction;
        self.deadline = Some(now + self.config.timeouts.mail);
    }

    fn command(&mut self, command: Command, phase: Phase, timeout: Duration, now: Instant) {
        write_command(&command, &mut self.out);
        self.phase = phase;
        self.deadline = Some(now + timeout);
    }

    fn handle_reply(&mut self, reply: Reply, now: Instant) {
        if reply.code == 421 && self.phase != Phase::Quit {
            return self.fail(SessionError::ServiceClosing(reply));
        }
        match self.phase {
            Phase::Banner => self.on_banner(reply, now),
            Phase::Ehlo => self.on_ehlo(reply, now),
            Phase::Helo => self.on_helo(reply),
            Phase::StartTls => self.on_starttls(reply, now),
            Phase::AuthPlain
            | Phase::AuthPlainAsked
            | Phase::AuthLoginUser
            | Phase::AuthLoginPassword
            | Phase::AuthLoginDone => self.on_auth(reply, now),
            Phase::Rset => self.on_rset(reply, now),
            Phase::Transaction => self.on_transaction_reply(reply, now),
            Phase::Quit => self.close(None),
            Phase::Ready | Phase::TlsHandshake | Phase::Closed => {
                let phase = self.phase.name();
                self.fail(SessionError::UnexpectedReply { phase, reply })
            }
        }
    }

    fn on_banner(&mut self, reply: Reply, now: Instant) {
        match reply.code {
            220 => {
                let hello = Command::Ehlo(self.config.ehlo_name.clone());
                self.command(hello, Phase::Ehlo, self.config.timeouts.command, now);
            }
            // 554: no service here (RFC 5321 §3.1); say QUIT as the RFC asks.
            code if code >= 500 => {
                self.error = Some(SessionError::Refused(reply));
                self.command(Command::Quit, Phase::Quit, self.config.timeouts.quit, now);
            }
            _ => self.fail(SessionError::UnexpectedReply { phase: "greeting", reply }),
        }
    }

    fn on_ehlo(&mut self, reply: Reply, now: Instant) {
        if reply.code == 250 {
            self.capabilities = Capabilities::from_ehlo(&reply);
            return self.after_hello(now);
        }
        if reply.is_permanent() {
            // EHLO not understood: an old server; HELO gives no extensions.
            let hello = Command::Helo(self.config.ehlo_name.clone());
            return self.command(hello, Phase::Helo, self.config.timeouts.command, now);
        }
        self.fail(SessionError::Refused(reply));
    }

    fn on_helo(&mut self, reply: Reply) {
        if reply.code != 250 {
            return self.fail(SessionError::Refused(reply));
        }
        self.capabilities = Capabilities::default();
        if self.config.tls.is_required() && !self.tls_active {
            return self.fail(SessionError::TlsRequired("does not speak ESMTP (no STARTTLS)"));
        }
        if self.config.credentials.is_some() {
            return self.fail(SessionError::AuthUnavailable);
        }
        self.become_ready();
    }

    fn after_hello(&mut self, now: Instant) {
        if !self.tls_active && self.config.tls != TlsMode::Disabled {
            if self.capabilities.starttls {
                return self.command(Command::StartTls, Phase::StartTls, self.config.timeouts.command, now);
            }
            if self.config.tls.is_required() {
                return self.fail(SessionError::TlsRequired("does not offer STARTTLS"));
            }
        }
        self.authenticate(now);
    }

    fn on_starttls(&mut self, reply: Reply, now: Instant) {
        if reply.code == 220 {
            self.phase = Phase::TlsHandshake;
            self.deadline = Some(now + self.config.timeouts.command);
            self.events.push_back(ClientEvent::StartTls);
            return;
        }
        if self.config.tls.is_required() {
            return self.fail(SessionError::TlsRequired("refused STARTTLS"));
        }
        self.authenticate(now);
    }

    fn authenticate(&mut self, now: Instant) {
        let Some(credentials) = self.config.credentials.clone() else {
            return self.become_ready();
        };
        if !self.tls_active && !self.config.auth_without_tls {
            return self.fail(SessionError::AuthRequiresTls);
        }
        let timeout = self.config.timeouts.command;
        let offered = |name: &str| self.capabilities.auth.iter().any(|m| m == name);
        if offered("PLAIN") {
            let token = plain_token(&credentials);
            // RFC 4954 §4: no initial response if the command would pass 512 octets.
            if "AUTH PLAIN ".len() + token.len() + 2 > super::command::COMMAND_LINE_MAX {
                let ask = Command::Auth { mechanism: "PLAIN".into(), initial: None };
                self.command(ask, Phase::AuthPlainAsked, timeout, now);
            } else {
                let initial = Some(token);
                self.command(Command::Auth { mechanism: "PLAIN".into(), initial }, Phase::AuthPlain, timeout, now);
            }
        } else if offered("LOGIN") {
            self.command(
                Command::Auth { mechanism: "LOGIN".into(), initial: None },
                Phase::AuthLoginUser,
                timeout,
                now,
            );
        } else {
            self.fail(SessionError::AuthUnavailable);
        }
    }

    fn on_auth(&mut self, reply: Reply, now: Instant) {
        let Some(credentials) = self.config.credentials.clone() else { return };
        let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        match (self.phase, reply.code) {
            (Phase::AuthPlain | Phase::AuthLoginDone, 235) => self.become_ready(),
            (Phase::AuthPlainAsked, 334) => self.line(plain_token(&credentials), Phase::AuthPlain, now),
            (Phase::AuthLoginUser, 334) => self.line(encode(&credentials.username), Phase::AuthLoginPassword, now),
            (Phase::AuthLoginPassword, 334) => self.line(encode(&credentials.password), Phase::AuthLoginDone, now),
            _ => self.fail(SessionError::AuthFailed(reply)),
        }
    }

    fn line(&mut self, text: String, phase: Phase, now: Instant) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
        self.phase = phase;
        self.deadline = Some(now + self.config.timeouts.command);
    }

    fn on_rset(&mut self, reply: Reply, now: Instant) {
        if !reply.is_positive() {
            return self.fail(SessionError::UnexpectedReply { phase: "RSET", reply });
        }
        self.needs_rset = false;
        match self.queued.take() {
            Some(transaction) => self.begin(transaction, now),
            None if std::mem::take(&mut self.quit_pending) => {
                self.command(Command::Quit, Phase::Quit, self.config.timeouts.quit, now)
            }
            None => self.become_ready(),
        }
    }

    fn become_ready(&mut self) {
        self.phase = Phase::Ready;
        self.deadline = None;
        self.announce_ready();
    }

    /// Tells the caller, once, that `send` would take a transaction.
    fn announce_ready(&mut self) {
        if !self.ready_announced && self.is_ready() {
            self.ready_announced = true;
            self.events.push_back(ClientEvent::Ready);
        }
    }

    fn on_transaction_reply(&mut self, reply: Reply, now: Instant) {
        let Some(active) = self.active.as_mut() else {
            return self.fail(SessionError::UnexpectedReply { phase: "transaction", reply });
        };
        let Some(expect) = active.expected.pop_front() else {
            return self.fail(SessionError::UnexpectedReply { phase: "transaction", reply });
        };
        match expect {
            Expect::Mail => active.mail = Some(reply),
            Expect::Rcpt(index) => active.rcpt[index] = Some(reply),
            Expect::Data => active.data = Some(reply),
            Expect::Dot { .. } => active.dot = Some(reply),
        }
        self.advance(expect, now);
    }

    /// Decides what to send after the reply to `answered`.
    fn advance(&mut self, answered: Expect, now: Instant) {
        let timeouts = self.config.timeouts;
        let Some(active) = self.active.as_mut() else { return };
        if !active.expected.is_empty() {
            // Pipelined: more replies to the batch are on their way.
            self.deadline = Some(now + timeouts.rcpt);
            return;
        }
        let next = match answered {
            Expect::Mail if !active.mail_accepted() => None,
            Expect::Mail if !active.pipelined => Some(Expect::Rcpt(0)),
            Expect::Rcpt(index) if !active.pipelined && index + 1 < active.rcpt.len() => Some(Expect::Rcpt(index + 1)),
            Expect::Rcpt(_) if !active.pipelined && active.accepted() > 0 => Some(Expect::Data),
            Expect::Data if active.data.as_ref().is_some_and(|r| r.code == 354) => {
                Some(Expect::Dot { real: active.mail_accepted() && active.accepted() > 0 })
            }
            _ => None,
        };
        match next {
            Some(Expect::Rcpt(index)) => {
                let to = active.transaction.recipients[index].clone();
                write_command(&Command::Rcpt { to }, &mut self.out);
                self.deadline = Some(now + timeouts.rcpt);
            }
            Some(Expect::Data) => {
                write_command(&Command::Data, &mut self.out);
                self.deadline = Some(now + timeouts.data_init);
            }
            Some(Expect::Dot { real }) => {
                if real {
                    if let Some(head) = &active.transaction.head {
                        data::stuff_lines(head, &mut self.out);
                    }
                    data::stuff(&active.transaction.message, &mut self.out);
                } else {
                    self.out.extend_from_slice(data::END_OF_DATA);
                }
                self.deadline = Some(now + timeouts.data_end);
            }
            Some(Expect::Mail) | None => return self.finish_transaction(now),
        }
        if let Some(expect) = next {
            active.expected.push_back(expect);
        }
        // Content sent: the next transaction may follow it in the same write.
        self.announce_ready();
    }

    fn finish_transaction(&mut self, now: Instant) {
        let Some(active) = self.active.take() else { return };
        let completed = active.dot.is_some() && active.expected.is_empty();
        // A transaction the server still holds open must be cleared before the next.
        self.needs_rset = active.mail_accepted() && !completed;
        let outcomes = outcomes(&active, None);
        self.events.push_back(ClientEvent::TransactionDone(outcomes));
        if let Some(next) = self.next.take() {
            // Its replies are next on the wire.
            self.active = Some(next);
            self.deadline = Some(now + self.config.timeouts.mail);
        } else if std::mem::take(&mut self.quit_pending) {
            self.command(Command::Quit, Phase::Quit, self.config.timeouts.quit, now);
        } else {
            self.become_ready();
        }
    }

    fn fail(&mut self, error: SessionError) {
        for active in [self.active.take(), self.next.take()].into_iter().flatten() {
            let outcomes = outcomes(&active, Some(&error));
            self.events.push_back(ClientEvent::TransactionDone(outcomes));
        }
        if let Some(transaction) = self.queued.take() {
            let pending = Active {
                rcpt: vec![None; transaction.recipients.len()],
                transaction,
                expected: VecDeque::new(),
                pipelined: false,
                mail: None,
                data: None,
                dot: None,
            };
            self.events.push_back(ClientEvent::TransactionDone(outcomes(&pending, Some(&error))));
        }
        self.close(Some(error));
    }

    fn close(&mut self, error: Option<SessionError>) {
        if self.phase == Phase::Closed {
            return;
        }
        let error = error.or_else(|| self.error.clone());
        self.error = error.clone();
        self.phase = Phase::Closed;
        self.deadline = None;
        self.events.push_back(ClientEvent::Closed(error));
    }
}

/// The AUTH PLAIN response (RFC 4616): no authorization identity, base64.
fn plain_token(credentials: &Credentials) -> String {
    let token = format!("\0{}\0{}", credentials.username, credentials.password);
    base64::engine::general_purpose::STANDARD.encode(token)
}

/// A 2xx: what accepts a MAIL or RCPT (a 3xx there is a protocol error, not a yes).
fn is_success(reply: &Reply) -> bool {
    (200..300).contains(&reply.code)
}

/// Each recipient's outcome from the replies gathered (and the error that cut the
/// transaction short, if one did).
fn outcomes(active: &Active, error: Option<&SessionError>) -> Vec<(String, Outcome)> {
    let cut_short = |stage: &str| match error {
        Some(SessionError::ServiceClosing(reply)) => Outcome::from_reply(reply, stage),
        Some(error) => Outcome::Transient { reply: None, reason: format!("{stage}: {error}") },
        None => Outcome::Transient { reply: None, reason: format!("{stage}: no reply") },
    };
    let decided = |reply: &Option<Reply>, stage: &str| match reply {
        Some(reply) => Outcome::from_reply(reply, stage),
        None => cut_short(stage),
    };
    let data_refused = active.data.as_ref().filter(|reply| reply.code != 354);
    active
        .transaction
        .recipients
        .iter()
        .enumerate()
        .map(|(index, recipient)| {
            let outcome = if !active.mail_accepted() {
                decided(&active.mail, "MAIL FROM")
            } else if !active.rcpt[index].as_ref().is_some_and(is_success) {
                decided(&active.rcpt[index], "RCPT TO")
            } else if let Some(reply) = data_refused {
                // Anything but 354 means no content went: never a delivery.
                match Outcome::from_reply(reply, "DATA") {
                    Outcome::Delivered { reply } => Outcome::Transient {
                        reason: format!("DATA: unexpected reply {}", reply.summary()),
                        reply: Some(reply),
                    },
                    outcome => outcome,
                }
            } else {
                decided(&active.dot, "end of data")
            };
            (recipient.clone(), outcome)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(configure: impl FnOnce(&mut ClientConfig)) -> (ClientSession, Instant) {
        let mut config = ClientConfig::new("me.test");
        configure(&mut config);
        let now = Instant::now();
        (ClientSession::new(Arc::new(config), now), now)
    }

    /// Feeds `reply` and returns what the client sent in answer.
    fn exchange(client: &mut ClientSession, reply: &str, now: Instant) -> String {
        client.handle_input(reply.as_bytes(), now);
        let mut out = Vec::new();
        client.poll_transmit(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn events(client: &mut ClientSession) -> Vec<ClientEvent> {
        std::iter::from_fn(|| client.poll_event()).collect()
    }

    fn transaction(recipients: &[&str], message: &[u8]) -> Transaction {
        Transaction {
            sender: "s@x.test".into(),
            recipients: recipients.iter().map(|r| r.to_string()).collect(),
            message: message.to_vec().into(),
            head: None,
        }
    }

    const EHLO_OK: &str =
        "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 100\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n";

    #[test]
    fn ehlo_refused_falls_back_to_helo() {
        let (mut client, now) = session(|_| {});
        assert_eq!(exchange(&mut client, "220 old.test\r\n", now), "EHLO me.test\r\n");
        assert_eq!(exchange(&mut client, "502 5.5.1 what?\r\n", now), "HELO me.test\r\n");
        exchange(&mut client, "250 old.test\r\n", now);
        assert_eq!(events(&mut client), vec![ClientEvent::Ready]);
        assert!(!client.capabilities().pipelining);
        // No PIPELINING: one command at a time.
        client.send(transaction(&["a@d.test", "b@d.test"], b"hi"), now).unwrap();
        assert_eq!(exchange(&mut client, "", now), "MAIL FROM:<s@x.test>\r\n");
        assert_eq!(exchange(&mut client, "250 ok\r\n", now), "RCPT TO:<a@d.test>\r\n");
        assert_eq!(exchange(&mut client, "550 no\r\n", now), "RCPT TO:<b@d.test>\r\n");
        assert_eq!(exchange(&mut client, "250 ok\r\n", now), "DATA\r\n");
        assert_eq!(exchange(&mut client, "354 go\r\n", now), "hi\r\n.\r\n");
        exchange(&mut client, "250 2.0.0 queued\r\n", now);
        let done = events(&mut client);
        let ClientEvent::TransactionDone(outcomes) = &done[0] else { panic!("{done:?}") };
        assert!(matches!(outcomes[0].1, Outcome::Permanent { .. }));
        assert!(outcomes[1].1.is_delivered());
    }

    #[test]
    fn pipelining_sends_mail_rcpt_data_in_one_write_and_8bit_is_flagged() {
        let (mut client, now) = session(|_| {});
        exchange(&mut client, "220 mx.test\r\n", now);
        exchange(&mut client, EHLO_OK, now);
        assert_eq!(events(&mut client), vec![ClientEvent::Ready]);
        client.send(transaction(&["a@d.test", "b@d.test"], "caf\u{e9}".as_bytes()), now).unwrap();
        let batch = exchange(&mut client, "", now);
        assert_eq!(
            batch,
            "MAIL FROM:<s@x.test> SIZE=7 BODY=8BITMIME\r\nRCPT TO:<a@d.test>\r\nRCPT TO:<b@d.test>\r\nDATA\r\n"
        );
        let data = exchange(&mut client, "250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n", now);
        assert_eq!(data, "caf\u{e9}\r\n.\r\n");
        // Content sent: the next transaction may follow it (RFC 2920 §3.1).
        assert_eq!(events(&mut client), vec![ClientEvent::Ready]);
        exchange(&mut client, "250 ok\r\n", now);
        let done = events(&mut client);
        assert_eq!(done.len(), 1, "no second Ready: {done:?}");
        assert!(matches!(&done[0], ClientEvent::TransactionDone(o) if o.iter().all(|(_, x)| x.is_delivered())));
        assert!(client.is_ready());
    }

    #[test]
    fn the_next_transaction_rides_behind_the_content_of_the_last() {
        let (mut client, now) = session(|_| {});
        exchange(&mut client, "220 mx.test\r\n", now);
        exchange(&mut client, EHLO_OK, now);
        events(&mut client);
        client.send(transaction(&["a@d.test"], b"one"), now).unwrap();
        exchange(&mut client, "", now);
        exchange(&mut client, "250 ok\r\n250 ok\r\n354 go\r\n", now);
        assert_eq!(events(&mut client), vec![ClientEvent::Ready]);
        client.send(transaction(&["b@d.test"], b"two"), now).unwrap();
        assert!(!client.is_ready(), "one transaction behind another at most");
        let group = exchange(&mut client, "", now);
        assert_eq!(group, "MAIL FROM:<s@x.test> SIZE=5\r\nRCPT TO:<b@d.test>\r\nDATA\r\n");
        // The final reply of the first, then the replies of the second, in one read.
        let content = exchange(&mut client, "250 first\r\n250 ok\r\n250 ok\r\n354 go\r\n", now);
        assert_eq!(content, "two\r\n.\r\n");
        client.quit(now);
        let first = events(&mut client);
        assert!(matches!(&first[0], ClientEvent::TransactionDone(o) if o[0].0 == "a@d.test" && o[0].1.is_delivered()));
        // QUIT waits for the second's final reply.
        assert_eq!(exchange(&mut client, "250 second\r\n", now), "QUIT\r\n");
        let second = events(&mut client);
        assert!(matches!(&second[0], ClientEvent::TransactionDone(o) if o[0].0 == "b@d.test" && o[0].1.is_delivered()));
        exchange(&mut client, "221 bye\r\n", now);
        assert_eq!(events(&mut client), vec![ClientEvent::Closed(None)]);
    }

    #[test]
    fn a_failure_with_two_transactions_under_way_answers_both() {
        let (mut client, now) = session(|_| {});
        exchange(&mut client, "220 mx.test\r\n", now);
        exchange(&mut client, EHLO_OK, now);
        events(&mut client);
        client.send(transaction(&["a@d.test"], b"one"), now).unwrap();
        exchange(&mut client, "250 ok\r\n250 ok\r\n354 go\r\n", now);
        events(&mut client);
        client.send(transaction(&["b@d.test"], b"two"), now).unwrap();
        exchange(&mut client, "421 4.7.0 closing\r\n", now);
        let done: Vec<ClientEvent> = events(&mut client);
        assert_eq!(done.len(), 3, "{done:?}");
        for event in &done[..2] {
            let ClientEvent::TransactionDone(outcomes) = event else { panic!("{event:?}") };
            assert!(matches!(&outcomes[0].1, Outcome::Transient { reply: Some(r), .. } if r.code == 421));
        }
        assert!(matches!(&done[2], ClientEvent::Closed(Some(SessionError::ServiceClosing(_)))));
    }

    #[test]
    fn data_answered_with_anything_but_354_is_never_a_delivery() {
        let (mut client, now) = session(|_| {});
        exchange(&mut client, "220 mx.test\r\n", now);
        exchange(&mut client, EHLO_OK, now);
        events(&mut client);
        assert_eq!(
            client.send(transaction(&["a@d.test>\r\nRCPT TO:<b@d.test"], b"x"), now),
            Err(MisuseError::BadAddress),
            "CRLF in an address would inject a command"
        );
        client.send(transaction(&["a@d.test"], b"x"), now).unwrap();
        exchange(&mut client, "250 ok\r\n250 ok\r\n250 odd\r\n", now);
        let done = events(&mut client);
        let ClientEvent::TransactionDone(outcomes) = &done[0] else { panic!("{done:?}") };
        assert!(matches!(&outcomes[0].1, Outcome::Transient { reason, .. } if reason.contains("unexpected")));
    }

    #[test]
    fn an_aborted_transaction_is_reset_before_the_next() {
        let (mut client, now) = session(|_| {});
        exchange(&mut client, "220 mx.test\r\n", now);
        exchange(&mut client, EHLO_OK, now);
        events(&mut client);
        client.send(transaction(&["a@d.test"], b"x"), now).unwrap();
        exchange(&mut client, "", now);
        // Recipient refused; the DATA the client pipelined is refused too.
        assert_eq!(exchange(&mut client, "250 ok\r\n550 5.1.1 unknown\r\n554 5.5.1 no valid recipients\r\n", now), "");
        let done = events(&mut client);
        assert!(matches!(&done[0], ClientEvent::TransactionDone(o) if matches!(o[0].1, Outcome::Permanent { .. })));
        client.send(transaction(&["b@d.test"], b"y"), now).unwrap();
        assert_eq!(exchange(&mut client, "", now), "RSET\r\n");
        assert!(exchange(&mut client, "250 ok\r\n", now).starts_with("MAIL FROM:<s@x.test>"));
    }

    #[test]
    fn messages_the_server_cannot_take_fail_permanently_without_being_sent() {
        let (mut client, now) = session(|_| {});
        exchange(&mut client, "220 mx.test\r\n", now);
        exchange(&mut client, EHLO_OK, now);
        events(&mut client);
        client.send(transaction(&["j\u{f6}rg@d.test"], b"x"), now).unwrap();
        let too_big = transaction(&["a@d.test"], &[b'x'; 101]);
        assert_eq!(exchange(&mut client, "", now), "");
        client.send(too_big, now).unwrap();
        let reasons: Vec<String> = events(&mut client)
            .into_iter()
            .filter_map(|event| match event {
                ClientEvent::TransactionDone(o) => match &o[0].1 {
                    Outcome::Permanent { reason, .. } => Some(reason.clone()),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        assert_eq!(reasons.len(), 2);
        assert!(reasons[0].contains("SMTPUTF8"), "{}", reasons[0]);
        assert!(reasons[1].contains("SIZE 100"), "{}", reasons[1]);
        assert!(client.is_ready());
    }

    #[test]
    fn starttls_then_ehlo_again_and_required_tls_is_never_skipped() {
        let (mut client, now) = session(|c| c.tls = TlsMode::Required);
        exchange(&mut client, "220 mx.test\r\n", now);
        assert_eq!(exchange(&mut client, "250-mx.test\r\n250 STARTTLS\r\n", now), "STARTTLS\r\n");
        exchange(&mut client, "220 2.0.0 go ahead\r\n", now);
        assert_eq!(events(&mut client), vec![ClientEvent::StartTls]);
        client.handle_tls_established(now);
        assert!(client.is_tls());
        assert_eq!(exchange(&mut client, "", now), "EHLO me.test\r\n");
        exchange(&mut client, "250-mx.test\r\n250 PIPELINING\r\n", now);
        assert_eq!(events(&mut client), vec![ClientEvent::Ready]);

        let (mut plain, now) = session(|c| c.tls = TlsMode::Required);
        exchange(&mut plain, "220 mx.test\r\n", now);
        assert_eq!(exchange(&mut plain, "250-mx.test\r\n250 PIPELINING\r\n", now), "");
        let closed = events(&mut plain);
        assert_eq!(closed, vec![ClientEvent::Closed(Some(SessionError::TlsRequired("does not offer STARTTLS")))]);
        assert!(matches!(plain.send(transaction(&["a@d.test"], b"x"), now), Err(MisuseError::Failed(_))));
    }

    #[test]
    fn auth_plain_and_login_and_never_in_plaintext_by_default() {
        let credentials = Credentials { username: "user".into(), password: "secret".into() };
        let (mut client, now) = session(|c| {
            c.implicit_tls = true;
            c.credentials = Some(credentials.clone());
        });
        exchange(&mut client, "220 smarthost.test\r\n", now);
        let auth = exchange(&mut client, "250-smarthost.test\r\n250 AUTH PLAIN LOGIN\r\n", now);
        assert_eq!(auth, "AUTH PLAIN AHVzZXIAc2VjcmV0\r\n");
        exchange(&mut client, "235 2.7.0 ok\r\n", now);
        assert_eq!(events(&mut client), vec![ClientEvent::Ready]);

        let (mut login, now) = session(|c| {
            c.implicit_tls = true;
            c.credentials = Some(credentials.clone());
        });
        exchange(&mut login, "220 smarthost.test\r\n", now);
        assert_eq!(exchange(&mut login, "250-smarthost.test\r\n250 AUTH LOGIN\r\n", now), "AUTH LOGIN\r\n");
        assert_eq!(exchange(&mut login, "334 VXNlcm5hbWU6\r\n", now), "dXNlcg==\r\n");
        assert_eq!(exchange(&mut login, "334 UGFzc3dvcmQ6\r\n", now), "c2VjcmV0\r\n");
        exchange(&mut login, "535 5.7.8 no\r\n", now);
        assert!(matches!(&events(&mut login)[0], ClientEvent::Closed(Some(SessionError::AuthFailed(_)))));

        let (mut plaintext, now) = session(|c| {
            c.tls = TlsMode::Disabled;
            c.credentials = Some(credentials);
        });
        exchange(&mut plaintext, "220 smarthost.test\r\n", now);
        exchange(&mut plaintext, "250-smarthost.test\r\n250 AUTH PLAIN\r\n", now);
        assert_eq!(events(&mut plaintext), vec![ClientEvent::Closed(Some(SessionError::AuthRequiresTls))]);
    }

    #[test]
    fn a_long_auth_plain_response_goes_after_the_334() {
        let long = Credentials { username: "user".into(), password: "p".repeat(400) };
        let (mut client, now) = session(|c| {
            c.implicit_tls = true;
            c.credentials = Some(long.clone());
        });
        exchange(&mut client, "220 smarthost.test\r\n", now);
        assert_eq!(exchange(&mut client, "250-smarthost.test\r\n250 AUTH PLAIN\r\n", now), "AUTH PLAIN\r\n");
        let response = exchange(&mut client, "334 \r\n", now);
        assert_eq!(response, format!("{}\r\n", plain_token(&long)));
        exchange(&mut client, "235 2.7.0 ok\r\n", now);
        assert_eq!(events(&mut client), vec![ClientEvent::Ready]);
    }

    #[test]
    fn a_lost_connection_defers_what_was_not_answered() {
        let (mut client, now) = session(|_| {});
        exchange(&mut client, "220 mx.test\r\n", now);
        exchange(&mut client, EHLO_OK, now);
        events(&mut client);
        client.send(transaction(&["a@d.test", "b@d.test"], b"x"), now).unwrap();
        exchange(&mut client, "250 ok\r\n550 no\r\n250 ok\r\n354 go\r\n", now);
        assert_eq!(events(&mut client), vec![ClientEvent::Ready]);
        client.handle_closed(now);
        let done = events(&mut client);
        let ClientEvent::TransactionDone(outcomes) = &done[0] else { panic!("{done:?}") };
        assert!(matches!(outcomes[0].1, Outcome::Permanent { .. }), "a refusal stays a refusal");
        assert!(matches!(&outcomes[1].1, Outcome::Transient { reason, .. } if reason.contains("connection lost")));
        assert_eq!(done[1], ClientEvent::Closed(Some(SessionError::ConnectionLost("transaction"))));
    }
}
