//! The DATA phase's byte transforms (RFC 5321 §4.5.2): dot-stuffing with line-end
//! normalisation on the client side, dot-unstuffing with limits on the server side.

/// The end-of-data marker.
pub const END_OF_DATA: &[u8] = b".\r\n";

/// Appends `message` to `out` ready for the DATA phase: every line ends in CRLF
/// (a bare LF or bare CR becomes CRLF), a line that starts with `.` gets another
/// `.`, and the text ends with CRLF (added if missing) and then `.` CRLF.
pub fn stuff(message: &[u8], out: &mut Vec<u8>) {
    stuff_lines(message, out);
    out.extend_from_slice(END_OF_DATA);
}

/// [`stuff`] without the end-of-data line: for a part sent before the rest of the
/// message (it ends in a line end, as `stuff` makes every part do).
pub fn stuff_lines(message: &[u8], out: &mut Vec<u8>) {
    out.reserve(message.len() + message.len() / 64 + 5);
    let mut rest = message;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            out.push(b'.');
        }
        // A line runs to the next CR or LF; memchr scans far faster than a byte loop.
        let Some(end) = memchr::memchr2(b'\r', b'\n', rest) else {
            out.extend_from_slice(rest);
            out.extend_from_slice(b"\r\n");
            break;
        };
        out.extend_from_slice(&rest[..end]);
        out.extend_from_slice(b"\r\n");
        // CRLF, bare LF and bare CR each end one line.
        let ending = if rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n') { 2 } else { 1 };
        rest = &rest[end + ending..];
    }
}

/// How many octets `stuff` writes for `message`, the end-of-data line excluded: the
/// size that SIZE= declares (RFC 1870 counts the message as transmitted).
pub fn stuffed_len(message: &[u8]) -> usize {
    let mut length = 0;
    let mut rest = message;
    while !rest.is_empty() {
        length += usize::from(rest[0] == b'.');
        let Some(end) = memchr::memchr2(b'\r', b'\n', rest) else {
            return length + rest.len() + 2;
        };
        length += end + 2;
        let ending = if rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n') { 2 } else { 1 };
        rest = &rest[end + ending..];
    }
    length
}

/// Whether a message needs `BODY=8BITMIME` (any byte above 127).
pub fn is_8bit(message: &[u8]) -> bool {
    // `is_ascii` checks a word at a time: this runs on every message sent.
    !message.is_ascii()
}

/// What the server's DATA reader found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unstuffed {
    /// More input needed.
    Partial,
    /// The end-of-data line was read; `used` bytes of the last input belong to DATA.
    Complete { used: usize },
}

/// Why a DATA stream is refused (the reader keeps reading to the end marker so the
/// session stays in step, then answers with this).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProblem {
    /// The message exceeded the size limit (552 5.3.4).
    TooLarge,
    /// A text line exceeded 1000 octets with its CRLF (RFC 5321 §4.5.3.1.6; 500 5.5.6).
    LineTooLong,
}

/// Longest text line the server accepts, CRLF included (RFC 5321 §4.5.3.1.6).
pub const TEXT_LINE_MAX: usize = 1000;

/// Server-side DATA reader: removes dot-stuffing, finds the end marker, and bounds the
/// message size and line length. Once over a limit it stops storing bytes but keeps
/// scanning for the end marker.
#[derive(Debug)]
pub struct Unstuffer {
    size_max: usize,
    line: Vec<u8>,
    problem: Option<DataProblem>,
    /// The previous line ended in CRLF (true at the start). The end of data is
    /// `CRLF . CRLF` only: a `.` line after a bare LF, or ending in a bare LF, is
    /// content. Accepting those is what "SMTP smuggling" (CVE-2023-51764) exploits.
    after_crlf: bool,
}

impl Unstuffer {
    pub fn new(size_max: usize) -> Self {
        Unstuffer { size_max, line: Vec::with_capacity(256), problem: None, after_crlf: true }
    }

    pub fn problem(&self) -> Option<DataProblem> {
        self.problem
    }

    /// Reads from `input`, appending unstuffed message bytes to `message`.
    pub fn read(&mut self, input: &[u8], message: &mut Vec<u8>) -> Unstuffed {
        let mut used = 0;
        while used < input.len() {
            let rest = &input[used..];
            let (chunk, complete) = super::line_prefix(rest);
            used += chunk.len();
            if self.line.len() + chunk.len() > TEXT_LINE_MAX + 1 {
                // Keep only enough to recognise the line's end; the content is lost anyway.
                self.problem.get_or_insert(DataProblem::LineTooLong);
                let keep = chunk.len().min(2);
                self.line.clear();
                self.line.extend_from_slice(b"xx");
                self.line.extend_from_slice(&chunk[chunk.len() - keep..]);
            } else {
                self.line.extend_from_slice(chunk);
            }
            if complete && self.finish_line(message) {
                return Unstuffed::Complete { used };
            }
        }
        Unstuffed::Partial
    }

    /// Handles one whole line; true at the end marker.
    fn finish_line(&mut self, message: &mut Vec<u8>) -> bool {
        let line = std::mem::take(&mut self.line);
        if line == b".\r\n" && self.after_crlf {
            return true;
        }
        self.after_crlf = line.ends_with(b"\r\n");
        if line.len() > TEXT_LINE_MAX {
            self.problem.get_or_insert(DataProblem::LineTooLong);
        }
        let text = line.strip_prefix(b".").unwrap_or(&line);
        if self.problem.is_none() {
            if message.len() + text.len() > self.size_max {
                self.problem = Some(DataProblem::TooLarge);
            } else {
                message.extend_from_slice(text);
            }
        }
        self.line = line;
        self.line.clear();
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unstuff_all(wire: &[u8], size_max: usize) -> (Vec<u8>, Option<DataProblem>, usize) {
        let mut reader = Unstuffer::new(size_max);
        let mut message = Vec::new();
        match reader.read(wire, &mut message) {
            Unstuffed::Complete { used } => (message, reader.problem(), used),
            Unstuffed::Partial => panic!("no end marker"),
        }
    }

    #[test]
    fn stuffing_normalises_line_ends_and_doubles_leading_dots() {
        let mut out = Vec::new();
        stuff(b"a\n.b\r\n..c\rd", &mut out);
        assert_eq!(out, b"a\r\n..b\r\n...c\r\nd\r\n.\r\n");
        let mut out = Vec::new();
        stuff(b".", &mut out);
        assert_eq!(out, b"..\r\n.\r\n");
        let mut out = Vec::new();
        stuff(b"", &mut out);
        assert_eq!(out, b".\r\n");
    }

    #[test]
    fn stuffed_len_is_what_stuff_writes() {
        for message in [&b""[..], b"a", b".", b"a\n.b\r\n..c\rd", b"x\r\n", b"\n\n", b"..\r\n.\r"] {
            let mut out = Vec::new();
            stuff(message, &mut out);
            assert_eq!(stuffed_len(message) + END_OF_DATA.len(), out.len(), "{message:?}");
        }
    }

    #[test]
    fn unstuffing_restores_what_stuffing_wrote() {
        for message in [&b"Subject: x\r\n\r\n.hidden\r\n..two\r\nend\r\n"[..], b".\r\n", b"x\r\n"] {
            let mut wire = Vec::new();
            stuff(message, &mut wire);
            wire.extend_from_slice(b"QUIT\r\n");
            let (back, problem, used) = unstuff_all(&wire, 1 << 20);
            assert_eq!((back.as_slice(), problem), (message, None));
            assert_eq!(&wire[used..], b"QUIT\r\n", "the reader stops right after the marker");
        }
    }

    #[test]
    fn limits_are_reported_and_the_marker_still_found() {
        let (_, problem, _) = unstuff_all(b"0123456789\r\n0123456789\r\n.\r\n", 15);
        assert_eq!(problem, Some(DataProblem::TooLarge));
        let mut wire = vec![b'a'; 5000];
        wire.extend_from_slice(b"\r\n.\r\n");
        let (message, problem, used) = unstuff_all(&wire, 1 << 20);
        assert_eq!((problem, used), (Some(DataProblem::LineTooLong), wire.len()));
        assert!(message.is_empty());
    }

    #[test]
    fn input_split_anywhere_reads_the_same() {
        let mut wire = Vec::new();
        stuff(b"one\r\n.two\r\nthree", &mut wire);
        for split in 0..wire.len() {
            let mut reader = Unstuffer::new(1 << 20);
            let mut message = Vec::new();
            assert_eq!(reader.read(&wire[..split], &mut message), Unstuffed::Partial);
            assert!(matches!(reader.read(&wire[split..], &mut message), Unstuffed::Complete { .. }));
            assert_eq!(message, b"one\r\n.two\r\nthree\r\n", "split at {split}");
        }
    }
}

#[cfg(test)]
mod smuggling_tests {
    use super::*;

    #[test]
    fn only_crlf_dot_crlf_ends_the_data() {
        // A bare-LF "end" followed by a smuggled transaction stays message content.
        let wire = b"hi\n.\r\nMAIL FROM:<ceo@victim.test>\r\nx\r\n.\n\r\n.\r\n";
        let mut reader = Unstuffer::new(1 << 20);
        let mut message = Vec::new();
        assert_eq!(reader.read(wire, &mut message), Unstuffed::Complete { used: wire.len() });
        // (Lines that begin with a dot lose it: that is dot-unstuffing, not an end.)
        assert_eq!(message, b"hi\n\r\nMAIL FROM:<ceo@victim.test>\r\nx\r\n\n\r\n");
    }
}
