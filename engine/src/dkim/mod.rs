//! DKIM signing at ingest (RFC 6376; Ed25519 by RFC 8463; RSA keys of at least
//! 1,024 bits by RFC 8301): the `[[dkim]]` entries compiled into [`Signing`], and
//! the [`pool::SignerPool`] of threads that applies them before a message is
//! stored, so that the stored message is the signed one and a retry never signs
//! again. Canonicalisation, hashing and the signature itself are `mail-auth`'s (on
//! the aws-lc-rs provider rustls uses); which entries apply, the key loading and the
//! threads are ringmail's.

pub mod pool;

use std::path::Path;

use mail_auth::common::crypto::{Ed25519Key, HashAlgorithm, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderStream, HeaderWriter, Writable, Writer};
use mail_auth::dkim::canonicalize::CanonicalHeaders;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done, Signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;

use crate::config::{Config, DkimEntry, SettingError, DKIM_HEADERS};

/// RFC 8301: verifiers may refuse RSA keys under 1,024 bits; signers must not use them.
pub const RSA_BITS_MIN: usize = 1024;

/// What one message was signed with, for the Reception record: `d=`, `s=`, `a=`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SignatureNote {
    pub d: String,
    pub s: String,
    pub a: &'static str,
}

/// A message to sign: its bytes, and the header blocks of its recipients when each
/// has its own (a body stored once for many, `queue_store::NewRecipient::head`).
#[derive(Debug, Default)]
pub struct Draft {
    pub message: Vec<u8>,
    pub heads: Vec<Vec<u8>>,
}

impl Draft {
    /// A message whose recipients share every header field.
    pub fn whole(message: Vec<u8>) -> Draft {
        Draft { message, heads: Vec::new() }
    }
}

/// A message after signing: without header blocks, the signature fields on top of
/// the message; with them, on top of each block (each recipient's header set signed
/// on its own, the shared body hashed once). And what the signatures were.
#[derive(Debug, Default)]
pub struct Signed {
    pub message: Vec<u8>,
    pub heads: Vec<Vec<u8>>,
    pub signatures: Vec<SignatureNote>,
    /// Body hashes computed (`bh=`): one per message signed, however many
    /// signatures and recipients.
    pub body_hashes: u64,
}

impl Signed {
    fn unsigned(draft: Draft) -> Signed {
        Signed { message: draft.message, heads: draft.heads, signatures: Vec::new(), body_hashes: 0 }
    }

    /// Signatures made: one per entry for the message, or per entry and header block.
    pub fn signature_count(&self) -> u64 {
        self.signatures.len() as u64 * self.heads.len().max(1) as u64
    }
}

/// Why a message could not be signed (it is then refused, never sent unsigned).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    #[error("DKIM signing failed for {entry}: {reason}")]
    Failed { entry: String, reason: String },
    /// Every signer thread is busy and the queue is full.
    #[error("DKIM signers busy ({0} messages waiting)")]
    Busy(usize),
    /// The signer threads are gone (the engine is stopping).
    #[error("DKIM signers stopped")]
    Stopped,
}

enum Key {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// One compiled `[[dkim]]` entry.
struct Signer {
    name: String,
    domain: String,
    selector: String,
    from_domains: Vec<String>,
    tenant: Option<String>,
    key: Key,
}

impl Signer {
    fn applies(&self, from_domain: &str, tenant: Option<&str>) -> bool {
        if self.tenant.as_deref().is_some_and(|wanted| Some(wanted) != tenant) {
            return false;
        }
        match self.from_domains.is_empty() {
            true => {
                from_domain == self.domain
                    || from_domain.strip_suffix(&self.domain).is_some_and(|head| head.ends_with('.'))
            }
            false => self.from_domains.iter().any(|domain| domain == from_domain),
        }
    }

    fn algorithm(&self) -> &'static str {
        match self.key {
            Key::Rsa(_) => "rsa-sha256",
            Key::Ed25519(_) => "ed25519-sha256",
        }
    }

    /// The DKIM-Signature field over `fields` (the message's header fields in order,
    /// as `mail_auth` parses them) with the body hash `bh`, made at `now`.
    fn sign(&self, fields: &[(&[u8], &[u8])], bh: &[u8], now: u64) -> Result<String, SignError> {
        let signature = match &self.key {
            Key::Rsa(signer) => sign_fields(signer, fields, bh, now),
            Key::Ed25519(signer) => sign_fields(signer, fields, bh, now),
        };
        signature
            .map(|signature| signature.to_header())
            .map_err(|error| SignError::Failed { entry: self.name.clone(), reason: error.to_string() })
    }
}

/// `mail_auth`'s signing step (`DkimSigner::sign`) with the body hash given
/// rather than computed: the canonicalisation of the header fields, the signature
/// field's own text and the key operation are all `mail_auth`'s; what differs is
/// only that `bh=` comes from [`body_hash`], once per body, not once per signature
/// and recipient.
fn sign_fields<T: SigningKey>(
    signer: &DkimSigner<T, Done>,
    fields: &[(&[u8], &[u8])],
    bh: &[u8],
    now: u64,
) -> mail_auth::Result<Signature> {
    let (_, headers, signed, _) = signer.template.canonicalize(Fields(fields.iter()));
    let mut signature = signer.template.clone();
    signature.bh = bh.to_vec();
    signature.t = now;
    signature.x = if signature.x > 0 { now + signature.x } else { 0 };
    signature.h = signed;
    signature.b = signer.key.sign(Signable { headers, signature: &signature })?;
    Ok(signature)
}

/// Header fields as `mail_auth`'s canonicalisation reads them.
struct Fields<'a, 'x>(std::slice::Iter<'a, (&'x [u8], &'x [u8])>);

impl<'x> HeaderStream<'x> for Fields<'_, 'x> {
    fn next_header(&mut self) -> Option<(&'x [u8], &'x [u8])> {
        self.0.next().copied()
    }

    fn body(&mut self) -> &'x [u8] {
        b"" // the body hash is given
    }
}

/// What the signature's `b=` covers: the signed header fields, then the
/// DKIM-Signature field itself without its `b=` value (RFC 6376 §3.7).
struct Signable<'a> {
    headers: CanonicalHeaders<'a>,
    signature: &'a Signature,
}

impl Writable for Signable<'_> {
    fn write(self, writer: &mut impl Writer) {
        self.headers.write(writer);
        self.signature.write(writer, false);
    }
}

/// The relaxed body hash (SHA-256, RFC 6376 §3.4.4 and §3.7) of the body of `message`:
/// what `bh=` says for every entry (both algorithms hash with SHA-256).
fn body_hash(body: &[u8]) -> Vec<u8> {
    HashAlgorithm::Sha256.hash(Canonicalization::Relaxed.canonical_body(body, u64::MAX)).as_ref().to_vec()
}

/// The `[[dkim]]` entries of one configuration, keys loaded.
#[derive(Default)]
pub struct Signing {
    signers: Vec<Signer>,
}

impl std::fmt::Debug for Signing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.signers.iter().map(|s| s.name.as_str()).collect();
        f.debug_struct("Signing").field("signers", &names).finish()
    }
}

impl Signing {
    /// Loads every entry's key; the first that fails is the error (naming the
    /// entry and the file).
    pub fn load(config: &Config) -> Result<Signing, SettingError> {
        let signers = config.dkim.iter().map(compile).collect::<Result<_, _>>()?;
        Ok(Signing { signers })
    }

    pub fn is_empty(&self) -> bool {
        self.signers.is_empty()
    }

    /// Whether any entry applies to mail of this tenant whose From is in `from_domain`.
    pub fn applies(&self, from_domain: &str, tenant: Option<&str>) -> bool {
        self.signers.iter().any(|signer| signer.applies(from_domain, tenant))
    }

    /// The draft with a DKIM-Signature field for every entry that applies to
    /// `from_domain` (its [`header_from_domain`]) and `tenant`: on top of the message,
    /// or of each recipient's header block (its fields signed with the message's);
    /// unchanged when no entry applies.
    pub fn sign(&self, draft: Draft, from_domain: &str, tenant: Option<&str>) -> Result<Signed, SignError> {
        let signers: Vec<&Signer> = self.signers.iter().filter(|signer| signer.applies(from_domain, tenant)).collect();
        if signers.is_empty() {
            return Ok(Signed::unsigned(draft));
        }
        let message = crlf_normalized(draft.message);
        let heads: Vec<Vec<u8>> = draft.heads.into_iter().map(crlf_normalized).collect();
        let unparsable =
            || SignError::Failed { entry: signers[0].name.clone(), reason: "the message has no header fields".into() };
        let parsed = mail_auth::AuthenticatedMessage::parse(&message).ok_or_else(unparsable)?;
        let bh = body_hash(message.get(parsed.body_offset as usize..).unwrap_or_default());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let signatures: Vec<SignatureNote> = signers
            .iter()
            .map(|signer| SignatureNote { d: signer.domain.clone(), s: signer.selector.clone(), a: signer.algorithm() })
            .collect();
        let fields_for = |fields: &[(&[u8], &[u8])]| -> Result<String, SignError> {
            let mut out = String::new();
            for signer in &signers {
                out.push_str(&signer.sign(fields, &bh, now)?);
            }
            Ok(out)
        };
        if heads.is_empty() {
            let fields = fields_for(&parsed.headers)?;
            let mut signed = Vec::with_capacity(fields.len() + message.len());
            signed.extend_from_slice(fields.as_bytes());
            signed.extend_from_slice(&message);
            return Ok(Signed { message: signed, heads, signatures, body_hashes: 1 });
        }
        // The author is the message's: a From (or a signature) in a header block would
        // be signed under this domain beside it.
        let authored = |head: &[u8]| {
            mail_auth::AuthenticatedMessage::parse(head).is_some_and(|fields| {
                fields.headers.iter().any(|(name, _)| {
                    let name = name.trim_ascii();
                    name.eq_ignore_ascii_case(b"from") || name.eq_ignore_ascii_case(b"dkim-signature")
                })
            })
        };
        if heads.iter().any(|head| authored(head)) {
            let reason = "a header block with a From or DKIM-Signature field".to_string();
            return Err(SignError::Failed { entry: signers[0].name.clone(), reason });
        }
        let mut signed_heads = Vec::with_capacity(heads.len());
        for head in &heads {
            // The recipient's fields first, as they are sent, then the message's.
            let combined =
                mail_auth::AuthenticatedMessage::parse_with_opts(&message, Some(head), true).ok_or_else(unparsable)?;
            let fields = fields_for(&combined.headers)?;
            let mut out = Vec::with_capacity(fields.len() + head.len());
            out.extend_from_slice(fields.as_bytes());
            out.extend_from_slice(head);
            signed_heads.push(out);
        }
        Ok(Signed { message, heads: signed_heads, signatures, body_hashes: 1 })
    }
}

fn compile(entry: &DkimEntry) -> Result<Signer, SettingError> {
    let name = entry.name();
    let problem = |what: String| SettingError::new(&name, format!("key {}: {what}", entry.key.display()));
    let der = read_key(&entry.key).map_err(problem)?;
    let mut headers: Vec<String> = match entry.headers.is_empty() {
        true => DKIM_HEADERS.iter().map(|h| h.to_string()).collect(),
        false => entry.headers.clone(),
    };
    // Every field once more than it appears (mail-auth signs each instance present
    // and a listed name it finds no more of as absent): a second Subject, From or
    // List-Unsubscribe added on the way breaks the signature.
    headers.extend(headers.clone());
    let key = match entry.algorithm.as_str() {
        "ed25519-sha256" => {
            let PrivateKeyDer::Pkcs8(pkcs8) = der else {
                return Err(problem("an Ed25519 key must be PKCS#8 (BEGIN PRIVATE KEY)".into()));
            };
            let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der())
                .map_err(|error| problem(format!("not an Ed25519 key: {error}")))?;
            Key::Ed25519(signer(key, entry, &headers))
        }
        _ => {
            let bits = rsa_bits(&der).map_err(problem)?;
            if bits < RSA_BITS_MIN {
                return Err(problem(format!("an RSA key of {bits} bits; at least {RSA_BITS_MIN} (RFC 8301)")));
            }
            let key =
                RsaKey::<Sha256>::from_key_der(der).map_err(|error| problem(format!("not an RSA key: {error}")))?;
            Key::Rsa(signer(key, entry, &headers))
        }
    };
    Ok(Signer {
        name,
        domain: entry.domain.to_ascii_lowercase(),
        selector: entry.selector.clone(),
        from_domains: entry.from_domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
        tenant: entry.tenant.clone(),
        key,
    })
}

/// The entry's signer for `key`: relaxed/relaxed, `x=` when it expires, never `l=`.
fn signer<T: SigningKey>(key: T, entry: &DkimEntry, headers: &[String]) -> DkimSigner<T, Done> {
    DkimSigner::from_key(key)
        .domain(&entry.domain)
        .selector(&entry.selector)
        .headers(headers.iter().map(String::as_str))
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
        .expiration(entry.expire_seconds.unwrap_or(0))
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| match error {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no private key in the file (PEM expected)".into(),
        other => other.to_string(),
    })
}

/// The RSA key pair of a private key (PKCS#1 or PKCS#8); else what is wrong with
/// it, as the error says it.
fn rsa_pair(der: &PrivateKeyDer<'_>) -> Result<aws_lc_rs::rsa::KeyPair, String> {
    let pair = match der {
        PrivateKeyDer::Pkcs1(der) => aws_lc_rs::rsa::KeyPair::from_der(der.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(der) => aws_lc_rs::rsa::KeyPair::from_pkcs8(der.secret_pkcs8_der()),
        _ => return Err("not an RSA key: neither PKCS#1 nor PKCS#8".into()),
    };
    pair.map_err(|error| match error.to_string().as_str() {
        "TooSmall" => format!("an RSA key under {RSA_BITS_MIN} bits (RFC 8301)"),
        other => format!("not an RSA key: {other}"),
    })
}

/// The modulus size of an RSA private key, in bits.
fn rsa_bits(der: &PrivateKeyDer<'_>) -> Result<usize, String> {
    rsa_pair(der).map(|pair| pair.public_modulus_len() * 8)
}

/// The public half of the private key in `path`, in the forms a DKIM record may
/// publish it (SubjectPublicKeyInfo and PKCS#1 RSAPublicKey for RSA, the 32 bytes for
/// Ed25519, RFC 8463), and the RSA modulus size in bits (`None`: Ed25519).
pub fn public_key(path: &Path, algorithm: &str) -> Result<(Vec<Vec<u8>>, Option<usize>), String> {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair;
    let der = read_key(path)?;
    if algorithm == "ed25519-sha256" {
        let PrivateKeyDer::Pkcs8(pkcs8) = der else { return Err("an Ed25519 key must be PKCS#8".into()) };
        let pair = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8.secret_pkcs8_der())
            .map_err(|error| format!("not an Ed25519 key: {error}"))?;
        return Ok((vec![pair.public_key().as_ref().to_vec()], None));
    }
    let pair = rsa_pair(&der)?;
    let pkcs1 = pair.public_key().as_ref().to_vec();
    let spki = pair.public_key().as_der().map_err(|_| "its public key does not encode".to_string())?;
    Ok((vec![spki.as_ref().to_vec(), pkcs1], Some(pair.public_modulus_len() * 8)))
}

/// The domain of the header From address (lowercase), as a receiver's DMARC check
/// reads it (`mail_auth`'s parse, the one its DMARC check uses). `None` unless
/// there is exactly one From field, named exactly so (the signer matches names
/// exactly: `From :` would be signed as absent), with one mailbox.
pub fn header_from_domain(message: &[u8]) -> Option<String> {
    let parsed = mail_auth::AuthenticatedMessage::parse(message)?;
    let named = |exact: bool| {
        parsed
            .headers
            .iter()
            .filter(|(name, _)| match exact {
                true => name.eq_ignore_ascii_case(b"from"),
                false => name.trim_ascii().eq_ignore_ascii_case(b"from"),
            })
            .count()
    };
    if named(true) != 1 || named(false) != 1 {
        return None;
    }
    let [address] = parsed.from.as_slice() else { return None };
    let domain = address.rsplit_once('@')?.1.trim().trim_end_matches('.').to_ascii_lowercase();
    let valid = !domain.is_empty() && domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    valid.then_some(domain)
}

/// `message` with every line ending CRLF: delivery sends a bare CR or LF as CRLF,
/// and the signature must cover what is sent.
fn crlf_normalized(message: Vec<u8>) -> Vec<u8> {
    // Only the line ends are looked at (memchr: a byte loop over every message was
    // as costly as an Ed25519 signature in the relay's profile).
    let clean = memchr::memchr2_iter(b'\r', b'\n', &message).all(|at| match message[at] {
        b'\r' => message.get(at + 1) == Some(&b'\n'),
        _ => at > 0 && message[at - 1] == b'\r',
    });
    if clean {
        return message;
    }
    let mut out = Vec::with_capacity(message.len() + 64);
    let mut at = 0;
    while at < message.len() {
        match message[at] {
            b'\r' if message.get(at + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                at += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        at += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_from_domain_is_found_folded_or_bare() {
        let message = b"Subject: x\r\nFROM: \"A, B\" <a@Mail.Example.COM>\r\nTo: c@d.test\r\n\r\nFrom: x@body.test\r\n";
        assert_eq!(header_from_domain(message).as_deref(), Some("mail.example.com"));
        let folded = b"From: Someone\r\n <someone@example.test>\r\n\r\nbody";
        assert_eq!(header_from_domain(folded).as_deref(), Some("example.test"));
        assert_eq!(header_from_domain(b"From: bare@example.test\r\n\r\n").as_deref(), Some("example.test"));
        assert_eq!(header_from_domain(b"To: a@b.test\r\n\r\nFrom: body@x.test\r\n"), None);
        assert_eq!(header_from_domain(b"From: nobody\r\n\r\n"), None);
        // Comments, a comment that looks like an address, group syntax.
        assert_eq!(header_from_domain(b"From: a@ours.test (The Team)\r\n\r\n").as_deref(), Some("ours.test"));
        let comment = b"From: (<evil@other.test>) Real <a@ours.test>\r\n\r\n";
        assert_eq!(header_from_domain(comment).as_deref(), Some("ours.test"));
        assert_eq!(header_from_domain(b"From: Team: a@ours.test;\r\n\r\n").as_deref(), Some("ours.test"));
        // A "From:" inside another field's folded value is not the From field.
        let folded_subject = b"Subject: hello\r\n From: a@evil.test\r\nFrom: news@ours.test\r\n\r\n";
        assert_eq!(header_from_domain(folded_subject).as_deref(), Some("ours.test"));
        // Not one author: two From fields, two mailboxes, a name the signer does
        // not read as From.
        assert_eq!(header_from_domain(b"From: a@ours.test\r\nFrom: b@other.test\r\n\r\n"), None);
        assert_eq!(header_from_domain(b"From: a@ours.test, b@other.test\r\n\r\n"), None);
        assert_eq!(header_from_domain(b"From : a@ours.test\r\n\r\n"), None);
    }

    #[test]
    fn line_endings_become_crlf_before_signing() {
        assert_eq!(crlf_normalized(b"a\r\nb\r\n".to_vec()), b"a\r\nb\r\n");
        assert_eq!(crlf_normalized(b"a\nb\rc\r\n".to_vec()), b"a\r\nb\r\nc\r\n");
        assert_eq!(crlf_normalized(b"\na\r".to_vec()), b"\r\na\r\n", "at either end");
        assert_eq!(crlf_normalized(b"no line end".to_vec()), b"no line end");
    }

    #[test]
    fn an_entry_covers_its_domain_and_subdomains_only() {
        let signer = |from_domains: Vec<String>, tenant: Option<String>| Signer {
            name: "t".into(),
            domain: "example.com".into(),
            selector: "s".into(),
            from_domains,
            tenant,
            key: Key::Ed25519(
                DkimSigner::from_key(
                    Ed25519Key::from_seed_and_public_key(&[1; 32], &[0; 32])
                        .or_else(|_| Ed25519Key::from_pkcs8_der(&Ed25519Key::generate_pkcs8().unwrap()))
                        .unwrap(),
                )
                .domain("example.com")
                .selector("s")
                .headers(["From"]),
            ),
        };
        let plain = signer(Vec::new(), None);
        assert!(plain.applies("example.com", None) && plain.applies("news.example.com", Some("any")));
        assert!(!plain.applies("badexample.com", None) && !plain.applies("example.com.evil.test", None));
        let listed = signer(vec!["brand.test".into()], Some("acme".into()));
        assert!(listed.applies("brand.test", Some("acme")));
        assert!(!listed.applies("brand.test", None) && !listed.applies("example.com", Some("acme")));

        // Header blocks: each signed, the body hashed once; a block that speaks for
        // the author is refused, not signed under the domain.
        let signing = Signing { signers: vec![plain] };
        let message = b"From: news@example.com\r\nSubject: s\r\n\r\nbody\r\n".to_vec();
        let draft =
            |heads: &[&[u8]]| Draft { message: message.clone(), heads: heads.iter().map(|h| h.to_vec()).collect() };
        let signed = signing.sign(draft(&[b"To: a@d.test\r\n", b"To: b@d.test\r\n"]), "example.com", None).unwrap();
        assert_eq!((signed.body_hashes, signed.signature_count(), signed.message), (1, 2, message.clone()));
        assert!(signed.heads.iter().all(|head| head.starts_with(b"DKIM-Signature: ")));
        assert!(signed.heads[1].ends_with(b"To: b@d.test\r\n"));
        for bad in [&b"From: ceo@bank.test\r\n"[..], b"DKIM-Signature: v=1; d=x\r\n", b"from : a@b.test\r\n"] {
            let refused = signing.sign(draft(&[b"To: a@d.test\r\n", bad]), "example.com", None);
            assert!(matches!(refused, Err(SignError::Failed { .. })), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
