//! SMTP commands (RFC 5321 §4.1): the server's strict parser and the client's writer.

use super::reply::{EnhancedCode, Reply};

/// Longest command line, CRLF included (RFC 5321 §4.5.3.1.4).
pub const COMMAND_LINE_MAX: usize = 512;
/// Longest path between the angle brackets (RFC 5321 §4.5.3.1.3: 256 with them).
pub const PATH_MAX: usize = 254;

/// MAIL FROM parameters ringmail understands (RFC 1870, 6152, 6531).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParameters {
    pub size: Option<u64>,
    pub body_8bit: bool,
    pub smtputf8: bool,
}

/// One parsed command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    /// The reverse-path; empty for the null sender `<>`.
    Mail {
        from: String,
        parameters: MailParameters,
    },
    Rcpt {
        to: String,
    },
    Data,
    Rset,
    Noop,
    Quit,
    StartTls,
    /// `AUTH mechanism [initial-response]`.
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
    Vrfy,
    Help,
}

/// A command the server refuses to parse, with the reply it deserves.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    #[error("line too long")]
    LineTooLong,
    #[error("command unrecognized")]
    Unrecognized,
    #[error("syntax error in parameters: {0}")]
    Syntax(&'static str),
    #[error("bad sender address syntax")]
    BadSender,
    #[error("bad recipient address syntax")]
    BadRecipient,
    #[error("parameter not implemented: {0}")]
    ParameterNotImplemented(String),
}

impl CommandError {
    /// The reply for this error (RFC 5321 §4.2.2, RFC 3463).
    pub fn reply(&self) -> Reply {
        let (code, enhanced, text) = match self {
            CommandError::LineTooLong => (500, EnhancedCode::new(5, 5, 2), "Line too long".to_string()),
            CommandError::Unrecognized => (500, EnhancedCode::new(5, 5, 1), "Command unrecognized".to_string()),
            CommandError::Syntax(what) => (501, EnhancedCode::new(5, 5, 4), format!("Syntax error: {what}")),
            CommandError::BadSender => (501, EnhancedCode::new(5, 1, 7), "Bad sender address syntax".to_string()),
            CommandError::BadRecipient => (501, EnhancedCode::new(5, 1, 3), "Bad recipient address syntax".to_string()),
            CommandError::ParameterNotImplemented(name) => {
                (555, EnhancedCode::new(5, 5, 4), format!("Parameter not implemented: {name}"))
            }
        };
        Reply::new(code, Some(enhanced), text)
    }
}

/// Parses one command line (with or without its CRLF).
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    if line.len() > COMMAND_LINE_MAX {
        return Err(CommandError::LineTooLong);
    }
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let text = std::str::from_utf8(line).map_err(|_| CommandError::Syntax("not UTF-8"))?;
    let (verb, rest) = match text.find(' ') {
        Some(at) => (&text[..at], &text[at + 1..]),
        None => (text, ""),
    };
    let no_argument = |command: Command| {
        if rest.trim().is_empty() {
            Ok(command)
        } else {
            Err(CommandError::Syntax("no argument expected"))
        }
    };
    match verb.to_ascii_uppercase().as_str() {
        "EHLO" => domain_argument(rest).map(Command::Ehlo),
        "HELO" => domain_argument(rest).map(Command::Helo),
        "MAIL" => parse_mail(rest),
        "RCPT" => parse_rcpt(rest),
        "DATA" => no_argument(Command::Data),
        "RSET" => no_argument(Command::Rset),
        "QUIT" => no_argument(Command::Quit),
        "STARTTLS" => no_argument(Command::StartTls),
        "NOOP" => Ok(Command::Noop),
        "VRFY" => Ok(Command::Vrfy),
        "HELP" => Ok(Command::Help),
        "AUTH" => parse_auth(rest),
        _ => Err(CommandError::Unrecognized),
    }
}

fn domain_argument(rest: &str) -> Result<String, CommandError> {
    let domain = rest.trim();
    if domain.is_empty() || domain.contains(char::is_whitespace) || domain.chars().any(char::is_control) {
        return Err(CommandError::Syntax("a domain or address literal is required"));
    }
    Ok(domain.to_string())
}

fn parse_mail(rest: &str) -> Result<Command, CommandError> {
    let argument = strip_prefix_ignore_case(rest, "FROM:").ok_or(CommandError::Syntax("MAIL FROM:<address>"))?;
    let (from, parameters) = split_path(argument).ok_or(CommandError::BadSender)?;
    let from = mailbox(from, true).ok_or(CommandError::BadSender)?;
    let mut parsed = MailParameters::default();
    for parameter in parameters.split_ascii_whitespace() {
        let (name, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        match name.to_ascii_uppercase().as_str() {
            "SIZE" => parsed.size = Some(value.parse().map_err(|_| CommandError::Syntax("SIZE=<number>"))?),
            "BODY" => match value.to_ascii_uppercase().as_str() {
                "7BIT" => parsed.body_8bit = false,
                "8BITMIME" => parsed.body_8bit = true,
                _ => return Err(CommandError::ParameterNotImplemented(format!("BODY={value}"))),
            },
            "SMTPUTF8" if value.is_empty() => parsed.smtputf8 = true,
            // Harmless DSN and AUTH parameters: accepted and not acted on.
            "RET" | "ENVID" | "AUTH" => {}
            _ => return Err(CommandError::ParameterNotImplemented(name.to_string())),
        }
    }
    Ok(Command::Mail { from, parameters: parsed })
}

fn parse_rcpt(rest: &str) -> Result<Command, CommandError> {
    let argument = strip_prefix_ignore_case(rest, "TO:").ok_or(CommandError::Syntax("RCPT TO:<address>"))?;
    let (to, parameters) = split_path(argument).ok_or(CommandError::BadRecipient)?;
    let to = mailbox(to, false).ok_or(CommandError::BadRecipient)?;
    for parameter in parameters.split_ascii_whitespace() {
        let name = parameter.split('=').next().unwrap_or(parameter).to_ascii_uppercase();
        // DSN's NOTIFY and ORCPT are accepted and not acted on.
        if name != "NOTIFY" && name != "ORCPT" {
            return Err(CommandError::ParameterNotImplemented(name));
        }
    }
    Ok(Command::Rcpt { to })
}

fn parse_auth(rest: &str) -> Result<Command, CommandError> {
    let mut words = rest.split_ascii_whitespace();
    let mechanism = words.next().ok_or(CommandError::Syntax("AUTH <mechanism>"))?.to_ascii_uppercase();
    let initial = words.next().map(str::to_string);
    if words.next().is_some() {
        return Err(CommandError::Syntax("AUTH <mechanism> [initial-response]"));
    }
    Ok(Command::Auth { mechanism, initial })
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| text[prefix.len()..].trim_start())
}

/// Splits `<path> params` into the path between the brackets and the parameters.
fn split_path(argument: &str) -> Option<(&str, &str)> {
    let inner = argument.strip_prefix('<')?;
    let close = inner.find('>')?;
    let rest = &inner[close + 1..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return None;
    }
    Some((&inner[..close], rest.trim()))
}

/// Checks a mailbox (dropping an obsolete source route `@a,@b:`); `<>` only where
/// `null_ok`.
fn mailbox(path: &str, null_ok: bool) -> Option<String> {
    let path = match path.strip_prefix('@') {
        Some(_) => path.split_once(':')?.1,
        None => path,
    };
    if path.is_empty() {
        return null_ok.then(String::new);
    }
    if path.len() > PATH_MAX || path.chars().any(|c| c.is_control() || c == ' ' || c == '<' || c == '>') {
        // A quoted local part may hold spaces; anything else may not.
        if !(path.starts_with('"') && path.chars().all(|c| !c.is_control() && c != '<' && c != '>')) {
            return None;
        }
    }
    let (local, domain) = path.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() || domain.contains(char::is_whitespace) {
        return None;
    }
    Some(path.to_string())
}

/// Appends a command in wire form (the client side).
pub fn write_command(command: &Command, out: &mut Vec<u8>) {
    let line = match command {
        Command::Ehlo(domain) => format!("EHLO {domain}"),
        Command::Helo(domain) => format!("HELO {domain}"),
        Command::Mail { from, parameters } => {
            let mut line = format!("MAIL FROM:<{from}>");
            if let Some(size) = parameters.size {
                line.push_str(&format!(" SIZE={size}"));
            }
            if parameters.body_8bit {
                line.push_str(" BODY=8BITMIME");
            }
            if parameters.smtputf8 {
                line.push_str(" SMTPUTF8");
            }
            line
        }
        Command::Rcpt { to } => format!("RCPT TO:<{to}>"),
        Command::Data => "DATA".into(),
        Command::Rset => "RSET".into(),
        Command::Noop => "NOOP".into(),
        Command::Quit => "QUIT".into(),
        Command::StartTls => "STARTTLS".into(),
        Command::Auth { mechanism, initial: Some(initial) } => format!("AUTH {mechanism} {initial}"),
        Command::Auth { mechanism, initial: None } => format!("AUTH {mechanism}"),
        Command::Vrfy => "VRFY".into(),
        Command::Help => "HELP".into(),
    };
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_case_insensitively_with_parameters() {
        assert_eq!(parse_command(b"ehlo client.test\r\n"), Ok(Command::Ehlo("client.test".into())));
        let mail = parse_command(b"MAIL FROM:<a@b.test> SIZE=1234 BODY=8BITMIME SMTPUTF8\r\n").unwrap();
        let parameters = MailParameters { size: Some(1234), body_8bit: true, smtputf8: true };
        assert_eq!(mail, Command::Mail { from: "a@b.test".into(), parameters });
        assert_eq!(
            parse_command(b"MAIL FROM:<>\r\n"),
            Ok(Command::Mail { from: String::new(), parameters: MailParameters::default() })
        );
        assert_eq!(parse_command(b"rcpt to:<@relay.test:u@d.test>\r\n"), Ok(Command::Rcpt { to: "u@d.test".into() }));
        assert_eq!(
            parse_command(b"AUTH PLAIN AGEAYg==\r\n"),
            Ok(Command::Auth { mechanism: "PLAIN".into(), initial: Some("AGEAYg==".into()) })
        );
    }

    #[test]
    fn bad_commands_get_the_right_reply_code() {
        let code = |line: &[u8]| parse_command(line).unwrap_err().reply().code;
        assert_eq!(code(b"FOO\r\n"), 500);
        assert_eq!(code(&[b'N'; 600]), 500);
        assert_eq!(code(b"EHLO\r\n"), 501);
        assert_eq!(code(b"MAIL TO:<a@b>\r\n"), 501);
        assert_eq!(code(b"MAIL FROM:a@b.test\r\n"), 501);
        assert_eq!(code(b"RCPT TO:<>\r\n"), 501);
        assert_eq!(code(b"RCPT TO:<nodomain>\r\n"), 501);
        assert_eq!(code(b"MAIL FROM:<a@b.test> SIZE=lots\r\n"), 501);
        assert_eq!(code(b"MAIL FROM:<a@b.test> FOO=1\r\n"), 555);
        assert_eq!(code(b"DATA now\r\n"), 501);
        assert_eq!(code(b"\xff\xfe\r\n"), 501);
    }

    #[test]
    fn written_commands_parse_back() {
        let commands = [
            Command::Ehlo("me.test".into()),
            Command::Mail {
                from: "s@x.test".into(),
                parameters: MailParameters { size: Some(10), body_8bit: true, smtputf8: false },
            },
            Command::Rcpt { to: "r@y.test".into() },
            Command::Data,
            Command::Quit,
            Command::Auth { mechanism: "LOGIN".into(), initial: None },
        ];
        for command in commands {
            let mut wire = Vec::new();
            write_command(&command, &mut wire);
            assert_eq!(parse_command(&wire), Ok(command));
        }
    }
}
