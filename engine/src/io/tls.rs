//! rustls over any [`Stream`], driven by hand with owned buffers (tokio-uring has no
//! `AsyncRead`/`AsyncWrite`, so tokio-rustls cannot be used). This is the only module
//! that names rustls types in the transport, so a rustls upgrade touches one file.
//!
//! Reading follows rustls 0.23's buffered API: one `read_tls` then one
//! `process_new_packets` per step, draining the plaintext `reader()` between steps
//! (feeding a whole socket read without draining fails with "received plaintext
//! buffer full").

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::{Stream, READ_BUFFER_BYTES};

/// How a client checks the server's certificate.
#[derive(Clone, Debug)]
pub enum Verification {
    /// The chain must lead to a trusted root (webpki roots plus `extra_roots`) and
    /// name the server.
    Verify { extra_roots: Vec<CertificateDer<'static>> },
    /// Encrypt whatever the certificate: the usual for MX delivery (RFC 7435). The
    /// chain is still checked after the handshake, and the result recorded.
    Opportunistic { extra_roots: Vec<CertificateDer<'static>> },
}

/// What a finished handshake tells the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    pub protocol: String,
    pub cipher: String,
    /// Whether the server's certificate verified (always true in `Verify` mode).
    pub verified: bool,
}

fn root_store(extra_roots: &[CertificateDer<'static>]) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for root in extra_roots {
        // A bad extra root is skipped here; configuration checking reports it.
        let _ = roots.add(root.clone());
    }
    roots
}

/// A verifier that accepts any certificate: for opportunistic TLS and
/// `required_insecure` (the chain is checked after the handshake, for the record, by
/// `ClientTls::describe`). Handshake signatures are still verified.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Client-side TLS settings, built once and shared by every connection.
#[derive(Clone, Debug)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    /// For opportunistic mode: checks the chain after the handshake, for the record.
    checker: Option<Arc<rustls::client::WebPkiServerVerifier>>,
}

impl ClientTls {
    pub fn new(verification: &Verification) -> Result<ClientTls, rustls::Error> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder =
            rustls::ClientConfig::builder_with_provider(Arc::clone(&provider)).with_safe_default_protocol_versions()?;
        let (config, checker) = match verification {
            Verification::Verify { extra_roots } => {
                (builder.with_root_certificates(root_store(extra_roots)).with_no_client_auth(), None)
            }
            Verification::Opportunistic { extra_roots } => {
                let roots = Arc::new(root_store(extra_roots));
                let checker = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&provider))
                    .build()
                    .map_err(|error| rustls::Error::General(error.to_string()))?;
                let verifier = Arc::new(AcceptAnyCertificate { provider });
                let config = builder.dangerous().with_custom_certificate_verifier(verifier).with_no_client_auth();
                (config, Some(checker))
            }
        };
        Ok(ClientTls { config: Arc::new(config), checker })
    }
}

impl ClientTls {
    /// A client connection for `server_name`, for a transport that drives rustls itself.
    pub(crate) fn client_connection(
        &self,
        server_name: ServerName<'static>,
    ) -> Result<rustls::ClientConnection, rustls::Error> {
        rustls::ClientConnection::new(Arc::clone(&self.config), server_name)
    }

    /// What a finished client handshake tells the log, with the chain checked in
    /// opportunistic mode (verify mode has refused a bad one already).
    pub(crate) fn describe(&self, connection: &rustls::ClientConnection, name: &ServerName<'static>) -> TlsInfo {
        let verified = match &self.checker {
            None => true,
            Some(checker) => chain_verifies(connection, checker, name),
        };
        describe(connection, verified)
    }
}

fn chain_verifies(
    connection: &rustls::CommonState,
    checker: &rustls::client::WebPkiServerVerifier,
    name: &ServerName<'static>,
) -> bool {
    let Some(chain) = connection.peer_certificates() else { return false };
    let Some((end_entity, intermediates)) = chain.split_first() else { return false };
    checker.verify_server_cert(end_entity, intermediates, name, &[], UnixTime::now()).is_ok()
}

fn describe(connection: &rustls::CommonState, verified: bool) -> TlsInfo {
    let protocol = connection.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default();
    let cipher = connection.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite())).unwrap_or_default();
    TlsInfo { protocol, cipher, verified }
}

/// Server-side TLS settings (ingest listener, loadgen sink).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

fn to_io(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// A TLS connection over a [`Stream`].
#[derive(Debug)]
pub struct TlsStream<S> {
    inner: S,
    tls: rustls::Connection,
    /// Socket read buffer, reused.
    incoming: Vec<u8>,
    /// Decrypted bytes not yet handed to the reader.
    plaintext: Vec<u8>,
    info: Option<TlsInfo>,
    /// The peer sent close_notify: the stream ends once `plaintext` is drained.
    peer_closed: bool,
}

impl<S: Stream> TlsStream<S> {
    /// Client handshake; `server_name` is the MX host name (or an IP address).
    pub async fn connect(inner: S, tls: &ClientTls, server_name: ServerName<'static>) -> io::Result<Self> {
        let connection = rustls::ClientConnection::new(Arc::clone(&tls.config), server_name.clone()).map_err(to_io)?;
        let mut stream = TlsStream::new(inner, connection.into());
        stream.handshake().await?;
        let verified = match &tls.checker {
            None => true,
            Some(checker) => chain_verifies(&stream.tls, checker, &server_name),
        };
        stream.record(verified);
        Ok(stream)
    }

    /// Server handshake.
    pub async fn accept(inner: S, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let connection = rustls::ServerConnection::new(config).map_err(to_io)?;
        let mut stream = TlsStream::new(inner, connection.into());
        stream.handshake().await?;
        stream.record(false);
        Ok(stream)
    }

    fn new(inner: S, tls: rustls::Connection) -> Self {
        let incoming = Vec::with_capacity(READ_BUFFER_BYTES);
        TlsStream { inner, tls, incoming, plaintext: Vec::new(), info: None, peer_closed: false }
    }

    pub fn info(&self) -> Option<&TlsInfo> {
        self.info.as_ref()
    }

    fn record(&mut self, verified: bool) {
        self.info = Some(describe(&self.tls, verified));
    }

    /// Says close_notify (best effort: the connection is closing anyway).
    pub async fn close_notify(&mut self) {
        self.tls.send_close_notify();
        let _ = self.flush_tls().await;
    }

    async fn handshake(&mut self) -> io::Result<()> {
        while self.tls.is_handshaking() {
            if self.tls.wants_write() {
                self.flush_tls().await?;
            } else if !self.read_tls().await? {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed during the TLS handshake"));
            }
        }
        self.flush_tls().await
    }

    async fn flush_tls(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            let mut out = Vec::new();
            self.tls.write_tls(&mut out)?;
            let (result, _) = self.inner.write_all_owned(out).await;
            result?;
        }
        Ok(())
    }

    /// Reads from the socket once and decrypts; false at the end of the stream.
    async fn read_tls(&mut self) -> io::Result<bool> {
        let buf = std::mem::take(&mut self.incoming);
        let (result, buf) = self.inner.read_owned(buf).await;
        self.incoming = buf;
        if result? == 0 {
            return Ok(false);
        }
        if self.peer_closed {
            return Ok(false);
        }
        let mut rest: &[u8] = &self.incoming;
        while !rest.is_empty() {
            if self.tls.read_tls(&mut rest)? == 0 {
                return Err(io::Error::other("TLS layer took no input"));
            }
            let state = match self.tls.process_new_packets() {
                Ok(state) => state,
                Err(error) => {
                    // Send the alert rustls queued, best effort, then fail.
                    let mut alert = Vec::new();
                    let _ = self.tls.write_tls(&mut alert);
                    let _ = self.inner.write_all_owned(alert).await;
                    return Err(to_io(error));
                }
            };
            let available = state.plaintext_bytes_to_read();
            self.peer_closed |= state.peer_has_closed();
            if available > 0 {
                let start = self.plaintext.len();
                self.plaintext.resize(start + available, 0);
                self.tls.reader().read_exact(&mut self.plaintext[start..])?;
            }
        }
        Ok(true)
    }
}

impl<S: Stream> Stream for TlsStream<S> {
    async fn read_owned(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        buf.clear();
        while self.plaintext.is_empty() {
            match self.read_tls().await {
                Ok(true) => {
                    if self.tls.wants_write() {
                        // Key updates, alerts: answer them.
                        if let Err(error) = self.flush_tls().await {
                            return (Err(error), buf);
                        }
                    }
                }
                Ok(false) => return (Ok(0), buf),
                Err(error) => return (Err(error), buf),
            }
        }
        std::mem::swap(&mut buf, &mut self.plaintext);
        let read = buf.len();
        (Ok(read), buf)
    }

    async fn write_all_owned(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        // rustls buffers at most 64 KiB of plaintext: feed it in pieces, sending each.
        let mut written = 0;
        while written < buf.len() {
            match self.tls.writer().write(&buf[written..]) {
                Ok(0) if !self.tls.wants_write() => {
                    return (Err(io::Error::new(io::ErrorKind::WriteZero, "TLS layer took no plaintext")), buf);
                }
                Ok(taken) => written += taken,
                Err(error) => return (Err(error), buf),
            }
            if let Err(error) = self.flush_tls().await {
                return (Err(error), buf);
            }
        }
        (Ok(()), buf)
    }
}

/// A connection that may be upgraded to TLS in place (STARTTLS).
#[derive(Debug)]
pub enum Connection<S> {
    Plain(S),
    Tls(Box<TlsStream<S>>),
    /// Left behind by a failed upgrade: every use fails.
    Broken,
}

impl<S: Stream> Connection<S> {
    pub fn is_tls(&self) -> bool {
        matches!(self, Connection::Tls(_))
    }

    pub fn tls_info(&self) -> Option<&TlsInfo> {
        match self {
            Connection::Tls(stream) => stream.info(),
            _ => None,
        }
    }

    /// Ends the session politely: close_notify on TLS, nothing on plaintext.
    pub async fn close(&mut self) {
        if let Connection::Tls(stream) = self {
            stream.close_notify().await;
        }
    }

    pub async fn upgrade_client(&mut self, tls: &ClientTls, server_name: ServerName<'static>) -> io::Result<()> {
        let Connection::Plain(inner) = std::mem::replace(self, Connection::Broken) else {
            return Err(io::Error::other("STARTTLS on a connection that is not plaintext"));
        };
        *self = Connection::Tls(Box::new(TlsStream::connect(inner, tls, server_name).await?));
        Ok(())
    }

    pub async fn upgrade_server(&mut self, config: Arc<rustls::ServerConfig>) -> io::Result<()> {
        let Connection::Plain(inner) = std::mem::replace(self, Connection::Broken) else {
            return Err(io::Error::other("STARTTLS on a connection that is not plaintext"));
        };
        *self = Connection::Tls(Box::new(TlsStream::accept(inner, config).await?));
        Ok(())
    }
}

fn broken() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "connection broken by a failed TLS upgrade")
}

impl<S: Stream> Stream for Connection<S> {
    async fn read_owned(&mut self, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        match self {
            Connection::Plain(stream) => stream.read_owned(buf).await,
            Connection::Tls(stream) => stream.read_owned(buf).await,
            Connection::Broken => (Err(broken()), buf),
        }
    }

    async fn write_all_owned(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        match self {
            Connection::Plain(stream) => stream.write_all_owned(buf).await,
            Connection::Tls(stream) => stream.write_all_owned(buf).await,
            Connection::Broken => (Err(broken()), buf),
        }
    }
}

// The in-memory rustls glue of both socket loops (`ring.rs`, `serve.rs`): records in,
// plaintext out, and the reverse.

/// Runs TLS records through rustls; the plaintext they held goes to `plain`.
/// `Ok(true)`: the server said close_notify.
pub(crate) fn decrypt<D>(
    connection: &mut rustls::ConnectionCommon<D>,
    mut input: &[u8],
    plain: &mut Vec<u8>,
) -> io::Result<bool> {
    while !input.is_empty() {
        if connection.read_tls(&mut input)? == 0 {
            return Err(io::Error::other("TLS layer took no input"));
        }
        let state = connection.process_new_packets().map_err(io::Error::other)?;
        let available = state.plaintext_bytes_to_read();
        if available > 0 {
            let start = plain.len();
            plain.resize(start + available, 0);
            connection.reader().read_exact(&mut plain[start..])?;
        }
        if state.peer_has_closed() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Encrypts `plain` into `out`, with whatever else rustls has to send (handshake
/// messages, alerts, close_notify). rustls buffers a bounded amount of plaintext:
/// it is fed and drained in turns.
pub(crate) fn encrypt<D>(
    connection: &mut rustls::ConnectionCommon<D>,
    mut plain: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<()> {
    loop {
        while connection.wants_write() {
            connection.write_tls(out)?;
        }
        if plain.is_empty() {
            return Ok(());
        }
        let taken = connection.writer().write(plain)?;
        if taken == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "TLS layer took no plaintext"));
        }
        plain = &plain[taken..];
    }
}
