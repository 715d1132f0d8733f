//! The SMTP server session, without I/O: a strict parser with limits, used by the
//! ingest listener and by loadgen's sink.
//!
//! Call order: feed bytes read from the client with [`ServerSession::handle_input`];
//! write what [`ServerSession::poll_transmit`] gives; act on each [`ServerEvent`]
//! from [`ServerSession::poll_event`]. Events that ask a question (`Mail`,
//! `Recipient`, `Authenticate`, `Message`) pause the session until the caller answers
//! with [`ServerSession::handle_verdict`]; input that arrives meanwhile is buffered
//! (up to a bound: stop reading while [`ServerSession::wants_input`] is false). A
//! `Message` is answered 250 only when the verdict says it is stored.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::command::{parse_command, Command, CommandError, MailParameters, COMMAND_LINE_MAX};
use super::data::{DataProblem, Unstuffed, Unstuffer};
use super::reply::{EnhancedCode, Reply};

/// Input buffered while the session waits for a verdict: a pipelined batch of
/// commands is far below this; a client that sends more is not waiting for replies.
pub const INPUT_BUFFER_MAX: usize = 64 * 1024;
/// Longest AUTH response line (RFC 4954 §4: 12,288 octets).
const AUTH_LINE_MAX: usize = 12_288;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The name in the greeting and the EHLO reply.
    pub hostname: String,
    /// Largest message accepted; advertised as SIZE.
    pub size_max: u64,
    /// Recipients per message (RFC 5321 §4.5.3.1.8 asks for at least 100).
    pub recipients_max: usize,
    /// Offer STARTTLS (the transport has a certificate).
    pub starttls: bool,
    /// Offer AUTH PLAIN and LOGIN.
    pub auth: bool,
    /// Offer 8BITMIME (RFC 6152). Default true; off only to play a server without it
    /// (loadgen's sinks).
    pub eight_bit_mime: bool,
    /// Refuse AUTH before TLS (538).
    pub auth_requires_tls: bool,
    /// Failed AUTH attempts before the connection is closed.
    pub auth_failures_max: u32,
    /// Bad commands before the connection is closed.
    pub errors_max: u32,
    /// Waiting for a command (RFC 5321 §4.5.3.2.7: 5 minutes).
    pub timeout_command: Duration,
    /// The message content, in all, plus its allowance at `min_data_rate` (RFC 5321
    /// §4.5.3.2.6 gives a client 3 minutes a block).
    pub timeout_data: Duration,
    /// A whole transaction, from MAIL to the reply after the message, in all (the
    /// content's allowance does not extend it).
    pub timeout_transaction: Duration,
    /// Bytes a second a client sending the message content must keep up on average:
    /// each byte received extends the DATA and transaction deadlines by
    /// 1/`min_data_rate` s (Postfix's `smtpd_min_data_rate`), up to `size_max` bytes.
    pub min_data_rate: u64,
    /// While the listener is short of connections ([`ServerSession::set_stress`]):
    /// the command and DATA timeouts are at most this (Postfix's stress mode).
    pub stress_timeout: Duration,
}

impl ServerConfig {
    pub fn new(hostname: impl Into<String>) -> Self {
        ServerConfig {
            hostname: hostname.into(),
            size_max: 50 * 1024 * 1024,
            recipients_max: 1000,
            starttls: false,
            auth: false,
            eight_bit_mime: true,
            auth_requires_tls: true,
            auth_failures_max: 3,
            errors_max: 10,
            timeout_command: Duration::from_secs(300),
            timeout_data: Duration::from_secs(180),
            timeout_transaction: Duration::from_secs(1800),
            min_data_rate: 500,
            stress_timeout: Duration::from_secs(10),
        }
    }
}

/// A message the client finished sending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub hello: String,
    pub from: String,
    pub recipients: Vec<String>,
    /// The message, dot-unstuffed, lines ending in CRLF.
    pub data: Vec<u8>,
    pub parameters: MailParameters,
    pub tls: bool,
    /// The authenticated identity, if the client authenticated.
    pub authenticated: Option<String>,
}

/// What the caller must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// MAIL FROM: accept or refuse (e.g. load shedding). Answer with a verdict.
    Mail { from: String },
    /// RCPT TO: accept or refuse (relay control, unknown user ...). Answer with a verdict.
    Recipient { to: String },
    /// DATA, with at least one recipient accepted: go ahead (354) or refuse before
    /// the client sends the message (e.g. load shedding). Answer with a verdict.
    Data,
    /// AUTH: check the credentials. Answer with a verdict.
    Authenticate { identity: String, password: String },
    /// Start the TLS handshake now, then call `handle_tls_established`.
    StartTls,
    /// A complete message: store it, then answer with a verdict (250 only once stored).
    Message(ReceivedMessage),
    /// The session is over: close the connection after writing what is left.
    Closed,
}

/// The caller's answer to a question event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The standard positive reply.
    Accept,
    /// A positive reply of the caller's (e.g. `250 2.0.0 Ok: queued as <id>`).
    AcceptWith(Reply),
    /// A refusal with its reply (4xx or 5xx).
    Reject(Reply),
    /// Close the connection without answering (a test sink simulating a crash).
    Close,
}

#[derive(Debug)]
enum Waiting {
    Mail { from: String, parameters: MailParameters },
    Recipient { to: String },
    Authenticate { identity: String },
    Data,
    Message,
    Tls,
}

#[derive(Debug)]
enum Mode {
    Command,
    /// Reading message data into `data`.
    Data(Unstuffer),
    /// AUTH PLAIN without an initial response: waiting for it.
    AuthPlain,
    AuthLoginUser,
    AuthLoginPassword {
        user: String,
    },
    /// Discarding an over-long command line up to its end.
    Discard,
    Closed,
}

fn reply(code: u16, enhanced: (u8, u16, u16), text: &str) -> Reply {
    Reply::new(code, Some(EnhancedCode::new(enhanced.0, enhanced.1, enhanced.2)), text)
}

/// See the module docs for the call order.
#[derive(Debug)]
pub struct ServerSession {
    config: std::sync::Arc<ServerConfig>,
    mode: Mode,
    waiting: Option<Waiting>,
    input: Vec<u8>,
    /// Drop the rest of the buffered input once the current step ends (STARTTLS).
    discard_input: bool,
    out: Vec<u8>,
    events: VecDeque<ServerEvent>,
    /// When the wait for the current command (or the message content) began: its
    /// deadline counts from here in all, however the client dribbles its bytes.
    phase_started: Instant,
    /// Bytes received since `phase_started` (the message content's allowance).
    phase_bytes: u64,
    /// When the current transaction's MAIL was accepted.
    transaction_started: Option<Instant>,
    /// Stress mode: shorter timeouts while the listener is short of connections.
    /// The current command's (or message's) deadline keeps it once it applied.
    stress: bool,
    /// What the next command gets (stress may have ended meanwhile).
    stress_next: bool,
    hello: Option<String>,
    mail: Option<(String, MailParameters)>,
    recipients: Vec<String>,
    data: Vec<u8>,
    tls: bool,
    authenticated: Option<String>,
    errors: u32,
    auth_failures: u32,
}

impl ServerSession {
    /// A session for a connection just accepted; the greeting is ready to send.
    /// `tls` is true for implicit TLS (port 465) once its handshake is done.
    pub fn new(config: std::sync::Arc<ServerConfig>, tls: bool, now: Instant) -> Self {
        let mut session = ServerSession {
            phase_started: now,
            phase_bytes: 0,
            transaction_started: None,
            stress: false,
            stress_next: false,
            config,
            mode: Mode::Command,
            waiting: None,
            input: Vec::new(),
            discard_input: false,
            out: Vec::new(),
            events: VecDeque::new(),
            hello: None,
            mail: None,
            recipients: Vec::new(),
            data: Vec::new(),
            tls,
            authenticated: None,
            errors: 0,
            auth_failures: 0,
        };
        let greeting = format!("{} ESMTP ringmail", session.config.hostname);
        session.send(Reply::new(220, None, greeting));
        session
    }

    /// A session that refuses service at once (load shedding, too many connections):
    /// it greets with `refusal` (e.g. 421 4.3.2), then closes.
    pub fn refuse(config: std::sync::Arc<ServerConfig>, refusal: Reply, now: Instant) -> Self {
        let mut session = ServerSession::new(config, false, now);
        session.out.clear();
        session.send(refusal);
        session.close();
        session
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    pub fn authenticated(&self) -> Option<&str> {
        self.authenticated.as_deref()
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.mode, Mode::Closed)
    }

    /// Whether the caller should keep reading from the socket.
    pub fn wants_input(&self) -> bool {
        !self.is_closed() && self.input.len() < INPUT_BUFFER_MAX
    }

    pub fn poll_transmit(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.out);
    }

    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// When the session times out, unless input completes the command (or the
    /// message) first. `None` while closed or waiting for a verdict.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.is_closed() && self.waiting.is_none()).then(|| self.deadline())
    }

    /// Stress mode on or off (the listener is, or is no longer, short of
    /// connections). On: the deadline under way shortens at once. Off: from the next
    /// command on; a client caught dribbling keeps its shortened deadline, or the
    /// first such client to be closed would lift the stress for the others.
    pub fn set_stress(&mut self, on: bool) {
        self.stress_next = on;
        self.stress |= on;
    }

    fn deadline(&self) -> Instant {
        let stressed = |normal: Duration| if self.stress { normal.min(self.config.stress_timeout) } else { normal };
        let in_data = matches!(self.mode, Mode::Data(_));
        // The content's allowance, for at most a message's worth of bytes.
        let allowance = match in_data {
            true => {
                let bytes = self.phase_bytes.min(self.config.size_max.saturating_add(64 * 1024));
                Duration::from_secs_f64(bytes as f64 / self.config.min_data_rate.max(1) as f64)
            }
            false => Duration::ZERO,
        };
        let phase = match in_data {
            true => self.phase_started + stressed(self.config.timeout_data) + allowance,
            false => self.phase_started + stressed(self.config.timeout_command),
        };
        match self.transaction_started {
            // Absolute: the content's allowance does not extend it, or a client at
            // exactly min_data_rate could hold a connection for a day.
            Some(started) => phase.min(started + self.config.timeout_transaction),
            None => phase,
        }
    }

    /// The wait for the next command (or the message content) begins.
    fn begin_phase(&mut self, now: Instant) {
        self.phase_started = now;
        self.phase_bytes = 0;
        self.stress = self.stress_next;
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|deadline| now >= deadline) {
            self.send(reply(421, (4, 4, 2), "Timeout, closing connection"));
            self.close();
        }
    }

    /// The client closed the connection.
    pub fn handle_closed(&mut self) {
        self.close();
    }

    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        if self.is_closed() {
            return;
        }
        self.input.extend_from_slice(bytes);
        // Input does not move the deadline: a command (or the message) must be
        // complete in time, however its bytes are spread out.
        self.phase_bytes = self.phase_bytes.saturating_add(bytes.len() as u64);
        self.process(now);
    }

    pub fn handle_tls_established(&mut self, now: Instant) {
        if matches!(self.waiting, Some(Waiting::Tls)) {
            self.waiting = None;
            self.tls = true;
            // RFC 3207 §4.2: forget everything learnt before TLS.
            self.hello = None;
            self.authenticated = None;
            self.reset_transaction();
            self.begin_phase(now);
            self.process(now);
        }
    }

    /// Answers the question the session is paused on.
    pub fn handle_verdict(&mut self, verdict: Verdict, now: Instant) {
        let Some(waiting) = self.waiting.take() else { return };
        if verdict == Verdict::Close {
            self.input.clear();
            return self.close();
        }
        // The reply's class decides: an AcceptWith carrying a refusal refuses.
        let accepted = match &verdict {
            Verdict::Accept => true,
            Verdict::AcceptWith(reply) => reply.code < 400,
            Verdict::Reject(_) | Verdict::Close => false,
        };
        // 421 means "closing the connection" whatever the stage (RFC 5321 §3.8).
        let closing = matches!(&verdict, Verdict::Reject(reply) if reply.code == 421);
        let positive = |standard: Reply| match &verdict {
            Verdict::Accept => standard,
            Verdict::AcceptWith(reply) | Verdict::Reject(reply) => reply.clone(),
            Verdict::Close => standard, // handled above
        };
        match waiting {
            Waiting::Mail { from, parameters } => {
                if accepted {
                    self.mail = Some((from, parameters));
                    self.transaction_started = Some(now);
                }
                self.send(positive(reply(250, (2, 1, 0), "Ok")));
            }
            Waiting::Recipient { to } => {
                // A recipient given twice is delivered once (Postfix's duplicate
                // filter): the same local part, the domain in any case.
                if accepted && !self.recipients.iter().any(|known| same_address(known, &to)) {
                    self.recipients.push(to);
                }
                self.send(positive(reply(250, (2, 1, 5), "Ok")));
            }
            Waiting::Authenticate { identity } => {
                if accepted {
                    self.authenticated = Some(identity);
                    self.send(positive(reply(235, (2, 7, 0), "Authentication successful")));
                } else {
                    self.send(positive(reply(535, (5, 7, 8), "Authentication credentials invalid")));
                    self.auth_failures += 1;
                    if self.auth_failures >= self.config.auth_failures_max {
                        self.send(reply(421, (4, 7, 0), "Too many failed authentications"));
                        self.close();
                    }
                }
            }
            Waiting::Data if accepted => {
                self.send(positive(Reply::new(354, None, "End data with <CR><LF>.<CR><LF>")));
                // The unstuffer stops storing past the limit (plus room for line ends).
                self.mode = Mode::Data(Unstuffer::new(self.config.size_max as usize));
            }
            Waiting::Data => {
                self.send(positive(reply(451, (4, 3, 0), "Try again later")));
                self.reset_transaction();
            }
            Waiting::Message => {
                self.send(positive(reply(250, (2, 0, 0), "Ok")));
                self.reset_transaction();
            }
            Waiting::Tls => self.waiting = Some(Waiting::Tls),
        }
        if closing {
            return self.close();
        }
        self.begin_phase(now);
        self.process(now);
    }

    fn send(&mut self, reply: Reply) {
        reply.write_to(&mut self.out);
    }

    fn close(&mut self) {
        if !self.is_closed() {
            self.mode = Mode::Closed;
            self.waiting = None;
            self.events.push_back(ServerEvent::Closed);
        }
    }

    fn reset_transaction(&mut self) {
        self.transaction_started = None;
        self.mail = None;
        self.recipients.clear();
        self.data = Vec::new();
    }

    /// Handles buffered input until it runs out or a question is asked.
    fn process(&mut self, now: Instant) {
        let mut consumed = 0;
        while self.waiting.is_none() && consumed < self.input.len() {
            let rest = &self.input[consumed..];
            let used = match &mut self.mode {
                Mode::Closed => break,
                Mode::Data(unstuffer) => match unstuffer.read(rest, &mut self.data) {
                    Unstuffed::Partial => rest.len(),
                    Unstuffed::Complete { used } => {
                        let problem = unstuffer.problem();
                        self.mode = Mode::Command;
                        self.data_done(problem);
                        used
                    }
                },
                Mode::Discard => match rest.iter().position(|&b| b == b'\n') {
                    Some(at) => {
                        self.mode = Mode::Command;
                        at + 1
                    }
                    None => rest.len(),
                },
                Mode::Command | Mode::AuthPlain | Mode::AuthLoginUser | Mode::AuthLoginPassword { .. } => {
                    let limit = if matches!(self.mode, Mode::Command) { COMMAND_LINE_MAX } else { AUTH_LINE_MAX };
                    match rest.iter().position(|&b| b == b'\n') {
                        Some(at) if at < limit => {
                            let line = rest[..=at].to_vec();
                            self.line(&line);
                            self.begin_phase(now);
                            at + 1
                        }
                        None if rest.len() <= limit => break, // wait for the rest of the line
                        _ => {
                            self.mode = Mode::Discard;
                            self.bad_command(CommandError::LineTooLong.reply());
                            0
                        }
                    }
                }
            };
            consumed += used;
        }
        if std::mem::take(&mut self.discard_input) {
            self.input.clear();
        } else {
            self.input.drain(..consumed);
        }
    }

    fn line(&mut self, line: &[u8]) {
        match std::mem::replace(&mut self.mode, Mode::Command) {
            Mode::AuthPlain => self.auth_plain_response(line),
            Mode::AuthLoginUser => self.auth_login_user(line),
            Mode::AuthLoginPassword { user } => self.auth_login_password(&user, line),
            _ => match parse_command(line) {
                Ok(command) => self.command(command),
                Err(error) => self.bad_command(error.reply()),
            },
        }
    }

    fn bad_command(&mut self, refusal: Reply) {
        self.send(refusal);
        self.errors += 1;
        if self.errors >= self.config.errors_max {
            self.send(reply(421, (4, 7, 0), "Too many errors, closing connection"));
            self.close();
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Ehlo(name) => self.hello(name, true),
            Command::Helo(name) => self.hello(name, false),
            Command::Mail { from, parameters } => self.mail(from, parameters),
            Command::Rcpt { to } => self.rcpt(to),
            Command::Data => self.data(),
            Command::Rset => {
                self.reset_transaction();
                self.send(reply(250, (2, 0, 0), "Ok"));
            }
            Command::Noop => self.send(reply(250, (2, 0, 0), "Ok")),
            Command::Vrfy => self.send(reply(252, (2, 5, 0), "Cannot VRFY user, but will accept message")),
            Command::Help => self.send(reply(214, (2, 0, 0), "See RFC 5321")),
            Command::Quit => {
                self.send(reply(221, (2, 0, 0), "Bye"));
                self.close();
            }
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(&mechanism, initial),
        }
    }

    fn hello(&mut self, name: String, extended: bool) {
        self.reset_transaction();
        let hostname = self.config.hostname.clone();
        if !extended {
            self.hello = Some(name);
            return self.send(Reply::new(250, None, hostname));
        }
        let mut lines = vec![hostname, "PIPELINING".into(), format!("SIZE {}", self.config.size_max)];
        if self.config.eight_bit_mime {
            lines.push("8BITMIME".into());
        }
        lines.extend(["SMTPUTF8", "ENHANCEDSTATUSCODES"].map(String::from));
        if self.config.starttls && !self.tls {
            lines.push("STARTTLS".into());
        }
        if self.config.auth && (self.tls || !self.config.auth_requires_tls) && self.authenticated.is_none() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        self.hello = Some(name);
        self.send(Reply { code: 250, enhanced: None, lines });
    }

    fn mail(&mut self, from: String, parameters: MailParameters) {
        if self.hello.is_none() {
            return self.bad_command(reply(503, (5, 5, 1), "Send EHLO or HELO first"));
        }
        if self.mail.is_some() {
            return self.bad_command(reply(503, (5, 5, 1), "Nested MAIL command"));
        }
        if parameters.size.is_some_and(|size| size > self.config.size_max) {
            return self.send(reply(552, (5, 3, 4), "Message size exceeds fixed maximum message size"));
        }
        self.events.push_back(ServerEvent::Mail { from: from.clone() });
        self.waiting = Some(Waiting::Mail { from, parameters });
    }

    fn rcpt(&mut self, to: String) {
        if self.mail.is_none() {
            return self.bad_command(reply(503, (5, 5, 1), "Need MAIL command"));
        }
        if self.recipients.len() >= self.config.recipients_max {
            return self.send(reply(452, (4, 5, 3), "Too many recipients"));
        }
        self.events.push_back(ServerEvent::Recipient { to: to.clone() });
        self.waiting = Some(Waiting::Recipient { to });
    }

    fn data(&mut self) {
        if self.mail.is_none() {
            return self.bad_command(reply(503, (5, 5, 1), "Need MAIL command"));
        }
        if self.recipients.is_empty() {
            return self.send(reply(554, (5, 5, 1), "No valid recipients"));
        }
        self.events.push_back(ServerEvent::Data);
        self.waiting = Some(Waiting::Data);
    }

    fn data_done(&mut self, problem: Option<DataProblem>) {
        match problem {
            Some(DataProblem::TooLarge) => {
                self.send(reply(552, (5, 3, 4), "Message size exceeds fixed maximum message size"));
                self.reset_transaction();
            }
            Some(DataProblem::LineTooLong) => {
                self.send(reply(500, (5, 5, 2), "Line too long (RFC 5321 allows 1000 octets)"));
                self.reset_transaction();
            }
            None => {
                let Some((from, parameters)) = self.mail.clone() else { return };
                let message = ReceivedMessage {
                    hello: self.hello.clone().unwrap_or_default(),
                    from,
                    recipients: std::mem::take(&mut self.recipients),
                    data: std::mem::take(&mut self.data),
                    parameters,
                    tls: self.tls,
                    authenticated: self.authenticated.clone(),
                };
                self.events.push_back(ServerEvent::Message(message));
                self.waiting = Some(Waiting::Message);
            }
        }
    }

    fn starttls(&mut self) {
        if !self.config.starttls || self.tls {
            return self.bad_command(reply(454, (4, 7, 0), "TLS not available"));
        }
        self.send(reply(220, (2, 0, 0), "Ready to start TLS"));
        // RFC 3207 §5: nothing sent before the handshake may be acted on after it.
        self.discard_input = true;
        self.events.push_back(ServerEvent::StartTls);
        self.waiting = Some(Waiting::Tls);
    }

    fn auth(&mut self, mechanism: &str, initial: Option<String>) {
        if !self.config.auth {
            return self.bad_command(reply(503, (5, 5, 1), "AUTH not available"));
        }
        if self.config.auth_requires_tls && !self.tls {
            return self.send(reply(538, (5, 7, 11), "Encryption required for requested authentication mechanism"));
        }
        if self.authenticated.is_some() || self.mail.is_some() {
            return self.bad_command(reply(503, (5, 5, 1), "AUTH not allowed now"));
        }
        match (mechanism, initial) {
            ("PLAIN", Some(initial)) => self.auth_plain_response(initial.as_bytes()),
            ("PLAIN", None) => {
                self.send(Reply::new(334, None, ""));
                self.mode = Mode::AuthPlain;
            }
            ("LOGIN", None) => {
                self.send(Reply::new(334, None, "VXNlcm5hbWU6"));
                self.mode = Mode::AuthLoginUser;
            }
            ("LOGIN", Some(user)) => self.auth_login_user(user.as_bytes()),
            _ => self.send(reply(504, (5, 5, 4), "Unrecognized authentication type")),
        }
    }

    /// Decodes one base64 AUTH line; `None` after answering a cancel or bad encoding.
    fn auth_decode(&mut self, line: &[u8]) -> Option<Vec<u8>> {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches(['\r', '\n']);
        if text == "*" {
            self.send(reply(501, (5, 7, 0), "Authentication cancelled"));
            return None;
        }
        match base64::engine::general_purpose::STANDARD.decode(text) {
            Ok(bytes) => Some(bytes),
            Err(_) => {
                self.send(reply(501, (5, 5, 2), "Cannot decode response"));
                None
            }
        }
    }

    fn auth_plain_response(&mut self, line: &[u8]) {
        let Some(token) = self.auth_decode(line) else { return };
        // authzid \0 authcid \0 password (RFC 4616)
        let mut parts = token.split(|&b| b == 0);
        let (Some(_), Some(identity), Some(password), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return self.send(reply(501, (5, 5, 2), "Malformed PLAIN response"));
        };
        self.ask_authenticate(identity, password);
    }

    fn auth_login_user(&mut self, line: &[u8]) {
        let Some(user) = self.auth_decode(line) else { return };
        self.send(Reply::new(334, None, "UGFzc3dvcmQ6"));
        self.mode = Mode::AuthLoginPassword { user: String::from_utf8_lossy(&user).into_owned() };
    }

    fn auth_login_password(&mut self, user: &str, line: &[u8]) {
        let Some(password) = self.auth_decode(line) else { return };
        self.ask_authenticate(user.as_bytes(), &password);
    }

    fn ask_authenticate(&mut self, identity: &[u8], password: &[u8]) {
        let identity = String::from_utf8_lossy(identity).into_owned();
        let password = String::from_utf8_lossy(password).into_owned();
        self.events.push_back(ServerEvent::Authenticate { identity: identity.clone(), password });
        self.waiting = Some(Waiting::Authenticate { identity });
    }
}

/// Whether two addresses name the same mailbox: the local part as given, the
/// domain case-insensitively.
fn same_address(a: &str, b: &str) -> bool {
    match (a.rsplit_once('@'), b.rsplit_once('@')) {
        (Some((local_a, domain_a)), Some((local_b, domain_b))) => {
            local_a == local_b && domain_a.eq_ignore_ascii_case(domain_b)
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_recipient_given_twice_is_in_the_message_once() {
        let (mut server, now) = session(|_| {});
        let input = "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nRCPT TO:<x@Y.TEST>\r\n\
                     RCPT TO:<X@y.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n";
        assert_eq!(codes(&mut server, input, now), vec![250, 250, 250, 250, 250, 250, 354]);
        server.handle_input(b"body\r\n.\r\n", now);
        let Some(ServerEvent::Message(message)) = server.poll_event() else { panic!("no message") };
        assert_eq!(message.recipients, vec!["x@y.test", "X@y.test"], "local parts as given, domains in any case");
    }

    fn session(configure: impl FnOnce(&mut ServerConfig)) -> (ServerSession, Instant) {
        let mut config = ServerConfig::new("mx.test");
        configure(&mut config);
        let now = Instant::now();
        let mut session = ServerSession::new(Arc::new(config), false, now);
        session.poll_transmit(&mut Vec::new()); // the greeting
        (session, now)
    }

    /// Sends `input`, accepting every question, and returns the reply codes.
    fn codes(session: &mut ServerSession, input: &str, now: Instant) -> Vec<u16> {
        session.handle_input(input.as_bytes(), now);
        while let Some(event) = session.poll_event() {
            if matches!(
                event,
                ServerEvent::Mail { .. } | ServerEvent::Recipient { .. } | ServerEvent::Data | ServerEvent::Message(_)
            ) {
                session.handle_verdict(Verdict::Accept, now);
            }
        }
        let mut out = Vec::new();
        session.poll_transmit(&mut out);
        let text = String::from_utf8(out).unwrap();
        text.lines().filter(|l| l.as_bytes().get(3) == Some(&b' ')).map(|l| l[..3].parse().unwrap()).collect()
    }

    #[test]
    fn commands_out_of_sequence_get_503_and_a_full_transaction_works() {
        let (mut server, now) = session(|_| {});
        assert_eq!(codes(&mut server, "MAIL FROM:<a@b.test>\r\n", now), vec![503]);
        assert_eq!(codes(&mut server, "EHLO c.test\r\nRCPT TO:<x@y.test>\r\nDATA\r\n", now), vec![250, 503, 503]);
        let pipelined = "MAIL FROM:<a@b.test>\r\nMAIL FROM:<a@b.test>\r\nDATA\r\nRCPT TO:<x@y.test>\r\nDATA\r\n";
        assert_eq!(codes(&mut server, pipelined, now), vec![250, 503, 554, 250, 354]);
        assert_eq!(codes(&mut server, "..dot\r\nline\r\n.\r\n", now), vec![250]);
        assert_eq!(codes(&mut server, "QUIT\r\n", now), vec![221]);
        assert!(server.is_closed());
    }

    #[test]
    fn the_message_is_handed_over_and_250_waits_for_the_verdict() {
        let (mut server, now) = session(|_| {});
        server.handle_input(b"EHLO c.test\r\nMAIL FROM:<> SIZE=20\r\n", now);
        assert_eq!(server.poll_event(), Some(ServerEvent::Mail { from: String::new() }));
        server.handle_verdict(Verdict::Accept, now);
        server.handle_input(b"RCPT TO:<x@y.test>\r\nDATA\r\n", now);
        server.poll_event();
        server.handle_verdict(Verdict::Accept, now);
        assert_eq!(server.poll_event(), Some(ServerEvent::Data));
        server.handle_verdict(Verdict::Accept, now);
        server.handle_input(b".a\r\nb\r\n.\r\nQUIT\r\n", now);
        let Some(ServerEvent::Message(message)) = server.poll_event() else { panic!("no message") };
        assert_eq!(message.data, b"a\r\nb\r\n");
        assert_eq!(message.recipients, vec!["x@y.test"]);
        let mut out = Vec::new();
        server.poll_transmit(&mut out);
        assert!(!String::from_utf8_lossy(&out).contains("250 2.0.0"), "no 250 before the verdict");
        let stored = Reply::new(250, Some(EnhancedCode::new(2, 0, 0)), "Ok: queued as 42");
        server.handle_verdict(Verdict::AcceptWith(stored), now);
        server.poll_transmit(&mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("250 2.0.0 Ok: queued as 42\r\n221"), "{text}");
    }

    #[test]
    fn a_refused_data_ends_the_transaction_before_the_message_is_sent() {
        let (mut server, now) = session(|_| {});
        codes(&mut server, "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\n", now);
        server.handle_input(b"DATA\r\n", now);
        assert_eq!(server.poll_event(), Some(ServerEvent::Data));
        let busy = Reply::new(451, Some(EnhancedCode::new(4, 3, 0)), "Mail system busy");
        server.handle_verdict(Verdict::Reject(busy), now);
        let mut out = Vec::new();
        server.poll_transmit(&mut out);
        assert!(String::from_utf8_lossy(&out).ends_with("451 4.3.0 Mail system busy\r\n"));
        assert_eq!(codes(&mut server, "RCPT TO:<x@y.test>\r\n", now), vec![503], "the transaction is gone");
    }

    #[test]
    fn a_silent_client_is_closed_after_the_command_and_data_timeouts() {
        let (mut server, now) = session(|c| {
            c.timeout_command = Duration::from_secs(300);
            c.timeout_data = Duration::from_secs(180);
        });
        assert_eq!(server.poll_timeout(), Some(now + Duration::from_secs(300)));
        codes(&mut server, "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n", now);
        assert_eq!(server.poll_timeout(), Some(now + Duration::from_secs(180)), "the DATA timeout while data flows");
        server.handle_timeout(now + Duration::from_secs(181));
        let mut out = Vec::new();
        server.poll_transmit(&mut out);
        assert!(String::from_utf8_lossy(&out).contains("421 4.4.2"), "{}", String::from_utf8_lossy(&out));
        assert!(server.is_closed());
    }

    /// Slowloris: bytes that trickle in do not move the deadline. A command line
    /// must be whole within the command timeout of the server being ready for it.
    #[test]
    fn a_client_dribbling_a_command_is_closed_at_the_command_deadline() {
        let (mut server, now) = session(|c| c.timeout_command = Duration::from_secs(300));
        for second in 1..300 {
            server.handle_input(b"E", now + Duration::from_secs(second));
        }
        assert_eq!(server.poll_timeout(), Some(now + Duration::from_secs(300)), "no byte moved it");
        server.handle_timeout(now + Duration::from_secs(300));
        assert!(server.is_closed());
        // A whole command starts the next one's clock.
        let (mut server, now) = session(|c| c.timeout_command = Duration::from_secs(300));
        codes(&mut server, "EHLO c.test\r\n", now + Duration::from_secs(200));
        assert_eq!(server.poll_timeout(), Some(now + Duration::from_secs(500)));
    }

    /// The message content must come at `min_data_rate` on average: a byte a second
    /// is closed about when the DATA timeout says; a fast sender of a big message is
    /// given the time its bytes earn.
    #[test]
    fn message_content_must_keep_up_the_minimum_data_rate() {
        let configure = |c: &mut ServerConfig| {
            c.timeout_data = Duration::from_secs(180);
            c.min_data_rate = 500;
            c.timeout_transaction = Duration::from_secs(600);
        };
        let (mut server, now) = session(configure);
        codes(&mut server, "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n", now);
        for second in 1..=180 {
            server.handle_input(b"x", now + Duration::from_secs(second));
        }
        // 180 bytes earned 0.36 s.
        assert_eq!(server.poll_timeout(), Some(now + Duration::from_millis(180_360)));
        let (mut server, now) = session(configure);
        codes(&mut server, "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nDATA\r\n", now);
        let block = vec![b'x'; 1000];
        for second in 1..=400 {
            server.handle_input(&block, now + Duration::from_secs(second));
        }
        // 400,000 bytes earned 800 s (980 s in all), but the transaction ends at 600 s.
        assert_eq!(server.poll_timeout(), Some(now + Duration::from_secs(600)));
    }

    /// Stress mode (the listener short of connections) shortens the deadline under
    /// way at once, and lifting it gives it back.
    #[test]
    fn stress_mode_shortens_the_deadlines_of_open_sessions() {
        let (mut server, now) = session(|c| {
            c.timeout_command = Duration::from_secs(300);
            c.stress_timeout = Duration::from_secs(2);
        });
        server.set_stress(true);
        assert_eq!(server.poll_timeout(), Some(now + Duration::from_secs(2)));
        // Lifted: the command under way keeps its short deadline; the next is normal.
        server.set_stress(false);
        assert_eq!(server.poll_timeout(), Some(now + Duration::from_secs(2)));
        codes(&mut server, "NOOP\r\n", now + Duration::from_secs(1));
        assert_eq!(server.poll_timeout(), Some(now + Duration::from_secs(301)));
    }

    /// A transaction has a total deadline too: slow RCPTs, each in time, end it.
    #[test]
    fn a_transaction_has_a_total_deadline() {
        let (mut server, now) = session(|c| {
            c.timeout_command = Duration::from_secs(300);
            c.timeout_transaction = Duration::from_secs(600);
        });
        codes(&mut server, "EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n", now);
        codes(&mut server, "RCPT TO:<x1@y.test>\r\n", now + Duration::from_secs(299));
        codes(&mut server, "RCPT TO:<x2@y.test>\r\n", now + Duration::from_secs(598));
        assert_eq!(server.poll_timeout(), Some(now + Duration::from_secs(600)), "the transaction's, not 898 s");
        // RSET ends the transaction and its deadline.
        codes(&mut server, "RSET\r\n", now + Duration::from_secs(599));
        assert_eq!(server.poll_timeout(), Some(now + Duration::from_secs(899)));
    }

    #[test]
    fn limits_get_their_reply_codes() {
        let (mut server, now) = session(|c| {
            c.size_max = 10;
            c.recipients_max = 1;
        });
        codes(&mut server, "EHLO c.test\r\n", now);
        assert_eq!(codes(&mut server, "MAIL FROM:<a@b.test> SIZE=11\r\n", now), vec![552]);
        let two = "MAIL FROM:<a@b.test>\r\nRCPT TO:<x@y.test>\r\nRCPT TO:<z@y.test>\r\nDATA\r\n";
        assert_eq!(codes(&mut server, two, now), vec![250, 250, 452, 354]);
        assert_eq!(codes(&mut server, "0123456789\r\nmore\r\n.\r\n", now), vec![552]);
        let long = format!("MAIL FROM:<{}@b.test>\r\nNOOP\r\n", "a".repeat(600));
        assert_eq!(codes(&mut server, &long, now), vec![500, 250]);
    }

    #[test]
    fn starttls_discards_pipelined_input_and_auth_needs_tls() {
        let (mut server, now) = session(|c| {
            c.starttls = true;
            c.auth = true;
        });
        codes(&mut server, "EHLO c.test\r\n", now);
        assert_eq!(codes(&mut server, "AUTH PLAIN AGEAYg==\r\n", now), vec![538]);
        assert_eq!(codes(&mut server, "STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n", now), vec![220]);
        server.handle_tls_established(now);
        assert!(server.poll_event().is_none(), "the injected MAIL was dropped");
        assert_eq!(codes(&mut server, "MAIL FROM:<a@b.test>\r\n", now), vec![503], "EHLO again after TLS");
        codes(&mut server, "EHLO c.test\r\n", now);
        server.handle_input(b"AUTH PLAIN AHVzZXIAc2VjcmV0\r\n", now);
        let expected = ServerEvent::Authenticate { identity: "user".into(), password: "secret".into() };
        assert_eq!(server.poll_event(), Some(expected));
        server.handle_verdict(Verdict::Accept, now);
        assert_eq!(server.authenticated(), Some("user"));
    }

    #[test]
    fn too_many_errors_or_failed_logins_close_the_connection() {
        let (mut server, now) = session(|c| c.errors_max = 3);
        assert_eq!(codes(&mut server, "X\r\nY\r\nZ\r\nNOOP\r\n", now), vec![500, 500, 500, 421]);
        assert!(server.is_closed());
        let (mut server, now) = session(|c| {
            c.auth = true;
            c.auth_requires_tls = false;
            c.auth_failures_max = 2;
        });
        codes(&mut server, "EHLO c.test\r\n", now);
        for expected in [vec![535], vec![535, 421]] {
            server.handle_input(b"AUTH LOGIN dXNlcg==\r\nYmFk\r\n", now);
            while let Some(event) = server.poll_event() {
                if matches!(event, ServerEvent::Authenticate { .. }) {
                    server.handle_verdict(Verdict::Reject(Reply::new(535, None, "5.7.8 no")), now);
                }
            }
            let mut out = Vec::new();
            server.poll_transmit(&mut out);
            let text = String::from_utf8(out).unwrap();
            let got: Vec<u16> =
                text.lines().filter(|l| !l.starts_with("334")).map(|l| l[..3].parse().unwrap()).collect();
            assert_eq!(got, expected);
        }
        assert!(server.is_closed());
    }
}
