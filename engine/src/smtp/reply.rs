//! SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 3463, RFC 2034):
//! an incremental parser for the client side, and formatting for the server side.

use std::fmt;

/// Longest reply line accepted, CRLF included. RFC 5321 §4.5.3.1.5 says 512; real
/// servers send longer texts (policy URLs), so allow 4x before calling it garbage.
pub const REPLY_LINE_MAX: usize = 2048;
/// Most lines in one reply. An EHLO reply has one per extension (about 10–20 seen
/// in practice); 64 leaves room without letting a peer grow our buffers for ever.
pub const REPLY_LINES_MAX: usize = 64;

/// An enhanced status code `class.subject.detail` (RFC 3463), e.g. `5.1.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

impl EnhancedCode {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        EnhancedCode { class, subject, detail }
    }

    /// Parses `2.0.0` at the start of `text`; returns the code and the rest.
    pub fn parse_prefix(text: &str) -> Option<(EnhancedCode, &str)> {
        let end = text.find(' ').unwrap_or(text.len());
        let mut parts = text[..end].split('.');
        let class: u8 = parse_digits(parts.next()?, 1)?;
        let subject: u16 = parse_digits(parts.next()?, 3)?;
        let detail: u16 = parse_digits(parts.next()?, 3)?;
        if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
            return None;
        }
        Some((EnhancedCode { class, subject, detail }, text[end..].trim_start()))
    }
}

fn parse_digits<T: std::str::FromStr>(text: &str, max_len: usize) -> Option<T> {
    if text.is_empty() || text.len() > max_len || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// A complete reply: the code, the enhanced code of its first line when present, and
/// the text of each line (without code, separator, enhanced code or CRLF).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: Option<EnhancedCode>,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, enhanced: Option<EnhancedCode>, text: impl Into<String>) -> Self {
        Reply { code, enhanced, lines: vec![text.into()] }
    }

    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The reply as one line for logs: `550 5.1.1 user unknown`.
    pub fn summary(&self) -> String {
        let text = self.lines.join(" / ");
        match self.enhanced {
            Some(enhanced) => format!("{} {enhanced} {text}", self.code),
            None => format!("{} {text}", self.code),
        }
    }

    /// Appends the reply in wire form, CRLF after each line; the enhanced code,
    /// when present, leads every line (RFC 2034 §3).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (index, line) in self.lines.iter().enumerate() {
            let separator = if index == last { ' ' } else { '-' };
            let enhanced = self.enhanced.map(|e| format!("{e} ")).unwrap_or_default();
            out.extend_from_slice(format!("{}{separator}{enhanced}{line}\r\n", self.code).as_bytes());
        }
        if self.lines.is_empty() {
            out.extend_from_slice(format!("{} \r\n", self.code).as_bytes());
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.summary())
    }
}

/// Why bytes from a server are not a reply. The session fails on the first one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    #[error("reply line longer than {REPLY_LINE_MAX} octets")]
    LineTooLong,
    #[error("reply of more than {REPLY_LINES_MAX} lines")]
    TooManyLines,
    #[error("malformed reply line: {0:?}")]
    Malformed(String),
    #[error("reply code changed within a multi-line reply ({first} then {then})")]
    CodeChanged { first: u16, then: u16 },
}

/// Incremental reply parser: feed bytes as they arrive, take replies as they complete.
/// Accepts LF as well as CRLF line ends (some servers send bare LF).
#[derive(Debug, Default)]
pub struct ReplyParser {
    line: Vec<u8>,
    partial: Option<Reply>,
}

impl ReplyParser {
    pub fn new() -> Self {
        ReplyParser::default()
    }

    /// Whether a reply has been started but not finished (or bytes are buffered).
    pub fn is_mid_reply(&self) -> bool {
        !self.line.is_empty() || self.partial.is_some()
    }

    /// Consumes bytes from `input` until a reply completes; returns it and how many
    /// bytes were used. `Ok((None, n))` means all `n == input.len()` bytes were taken
    /// and more are needed.
    pub fn parse(&mut self, input: &[u8]) -> Result<(Option<Reply>, usize), ReplyError> {
        let mut used = 0;
        while used < input.len() {
            let rest = &input[used..];
            let (chunk, complete) = super::line_prefix(rest);
            used += chunk.len();
            if self.line.len() + chunk.len() > REPLY_LINE_MAX {
                return Err(ReplyError::LineTooLong);
            }
            self.line.extend_from_slice(chunk);
            if complete {
                let line = std::mem::take(&mut self.line);
                if let Some(reply) = self.line_done(&line)? {
                    return Ok((Some(reply), used));
                }
            }
        }
        Ok((None, used))
    }

    fn line_done(&mut self, raw: &[u8]) -> Result<Option<Reply>, ReplyError> {
        let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let text = String::from_utf8_lossy(raw);
        let malformed = || ReplyError::Malformed(text.chars().take(80).collect());
        let bytes = text.as_bytes();
        if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
            return Err(malformed());
        }
        let code: u16 = text[..3].parse().map_err(|_| malformed())?;
        if !(200..600).contains(&code) {
            return Err(malformed());
        }
        let (last, body) = match bytes.get(3) {
            None => (true, ""),
            Some(b' ') => (true, &text[4..]),
            Some(b'-') => (false, &text[4..]),
            Some(_) => return Err(malformed()),
        };
        let (enhanced, body) = match EnhancedCode::parse_prefix(body) {
            Some((enhanced, rest)) if u16::from(enhanced.class) == code / 100 => (Some(enhanced), rest),
            _ => (None, body),
        };
        let reply = self.partial.get_or_insert_with(|| Reply { code, enhanced, lines: Vec::new() });
        if reply.code != code {
            return Err(ReplyError::CodeChanged { first: reply.code, then: code });
        }
        if reply.lines.len() >= REPLY_LINES_MAX {
            return Err(ReplyError::TooManyLines);
        }
        reply.lines.push(body.to_string());
        Ok(if last { self.partial.take() } else { None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Reply>, ReplyError> {
        let mut parser = ReplyParser::new();
        let mut out = Vec::new();
        let mut at = 0;
        while at < input.len() {
            let (reply, used) = parser.parse(&input[at..])?;
            at += used;
            out.extend(reply);
        }
        Ok(out)
    }

    #[test]
    fn single_and_multi_line_replies_with_enhanced_codes() {
        let replies = parse_all(b"220 mx.test ESMTP\r\n250-mx.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n").unwrap();
        assert_eq!(replies.len(), 2);
        assert_eq!(replies[0].lines, vec!["mx.test ESMTP"]);
        assert_eq!(replies[1].lines, vec!["mx.test", "PIPELINING", "SIZE 1000"]);
        let r = &parse_all(b"550-5.1.1 The email account does not exist.\r\n550 5.1.1 Try again\r\n").unwrap()[0];
        assert_eq!(r.enhanced, Some(EnhancedCode::new(5, 1, 1)));
        assert_eq!(r.lines, vec!["The email account does not exist.", "Try again"]);
        assert_eq!(r.summary(), "550 5.1.1 The email account does not exist. / Try again");
        // An enhanced code of another class is text, not a code.
        let r = &parse_all(b"250 5.1.1 odd\n").unwrap()[0];
        assert_eq!((r.enhanced, r.lines[0].as_str()), (None, "5.1.1 odd"));
        assert_eq!(parse_all(b"354\r\n").unwrap()[0].lines, vec![""]);
    }

    #[test]
    fn replies_split_at_any_byte_parse_the_same() {
        let wire = b"250-first\r\n250-2.0.0 second\r\n250 third\r\n221 2.0.0 bye\r\n";
        let whole = parse_all(wire).unwrap();
        for split in 0..wire.len() {
            let mut parser = ReplyParser::new();
            let mut out = Vec::new();
            for part in [&wire[..split], &wire[split..]] {
                let mut at = 0;
                while at < part.len() {
                    let (reply, used) = parser.parse(&part[at..]).unwrap();
                    at += used;
                    out.extend(reply);
                }
            }
            assert_eq!(out, whole, "split at {split}");
        }
    }

    #[test]
    fn garbage_gets_a_typed_error() {
        assert!(matches!(parse_all(b"hello\r\n"), Err(ReplyError::Malformed(_))));
        assert!(matches!(parse_all(b"25\r\n"), Err(ReplyError::Malformed(_))));
        assert!(matches!(parse_all(b"999 no\r\n"), Err(ReplyError::Malformed(_))));
        assert!(matches!(parse_all(b"250x\r\n"), Err(ReplyError::Malformed(_))));
        assert_eq!(parse_all(b"250-a\r\n251 b\r\n"), Err(ReplyError::CodeChanged { first: 250, then: 251 }));
        assert_eq!(parse_all(&[b'2'; REPLY_LINE_MAX + 1]), Err(ReplyError::LineTooLong));
        let many: Vec<u8> = b"250-x\r\n".repeat(REPLY_LINES_MAX + 1);
        assert_eq!(parse_all(&many), Err(ReplyError::TooManyLines));
    }

    #[test]
    fn written_replies_parse_back() {
        let reply = Reply {
            code: 421,
            enhanced: Some(EnhancedCode::new(4, 7, 0)),
            lines: vec!["[TSS04] Messages temporarily deferred".into(), "see the FAQ".into()],
        };
        let mut wire = Vec::new();
        reply.write_to(&mut wire);
        assert_eq!(parse_all(&wire).unwrap(), vec![reply]);
    }
}
