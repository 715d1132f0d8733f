//! Property tests for the parsers that face the network: the client's reply parser
//! and the server's command parser never panic on any input, and what ringmail
//! writes, it reads back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use ringmail::smtp::command::{parse_command, write_command, Command, MailParameters};
use ringmail::smtp::data::{stuff, Unstuffed, Unstuffer};
use ringmail::smtp::{EnhancedCode, Reply, ReplyParser};

fn feed_all(parser: &mut ReplyParser, input: &[u8]) -> Result<Vec<Reply>, ringmail::smtp::ReplyError> {
    let mut replies = Vec::new();
    let mut at = 0;
    while at < input.len() {
        let (reply, used) = parser.parse(&input[at..])?;
        assert!(used > 0 && used <= input.len() - at, "the parser always makes progress");
        at += used;
        replies.extend(reply);
    }
    Ok(replies)
}

fn reply_strategy() -> impl Strategy<Value = Reply> {
    let code = prop_oneof![200u16..260, 300u16..360, 400u16..460, 500u16..560];
    let lines = prop::collection::vec("[ -~]{0,80}", 1..6);
    (code, lines, any::<bool>(), 0u16..10, 0u16..10).prop_map(|(code, lines, enhanced, subject, detail)| {
        let class = (code / 100) as u8;
        let enhanced = (enhanced && class != 3).then(|| EnhancedCode::new(class, subject, detail));
        // A line that starts like an enhanced code would be read as one.
        let lines = lines.into_iter().map(|l| format!("t{}", l.trim())).collect();
        Reply { code, enhanced, lines }
    })
}

fn address() -> impl Strategy<Value = String> {
    ("[a-z0-9._+-]{1,20}", "[a-z0-9-]{1,20}").prop_map(|(local, domain)| format!("{local}@{domain}.test"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn the_reply_parser_never_panics(input in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = feed_all(&mut ReplyParser::new(), &input);
    }

    #[test]
    fn the_reply_parser_never_panics_on_reply_like_input(input in "([0-9]{3}[ -]?[ -~]{0,20}\r?\n){0,20}") {
        let _ = feed_all(&mut ReplyParser::new(), input.as_bytes());
    }

    #[test]
    fn written_replies_parse_back(replies in prop::collection::vec(reply_strategy(), 1..5)) {
        let mut wire = Vec::new();
        for reply in &replies {
            reply.write_to(&mut wire);
        }
        let parsed = feed_all(&mut ReplyParser::new(), &wire).unwrap();
        prop_assert_eq!(parsed, replies);
    }

    #[test]
    fn the_command_parser_never_panics(input in prop::collection::vec(any::<u8>(), 0..1024)) {
        let _ = parse_command(&input);
    }

    #[test]
    fn the_command_parser_never_panics_on_command_like_input(
        verb in "(?i)(MAIL FROM:|RCPT TO:|EHLO|HELO|AUTH|DATA|RSET|QUIT|STARTTLS|NOOP)",
        rest in "[ -~]{0,100}",
    ) {
        let _ = parse_command(format!("{verb}{rest}\r\n").as_bytes());
    }

    #[test]
    fn written_commands_parse_back(from in address(), to in address(), size in any::<Option<u32>>(), eight in any::<bool>()) {
        let mail = Command::Mail {
            from,
            parameters: MailParameters { size: size.map(u64::from), body_8bit: eight, smtputf8: false },
        };
        for command in [mail, Command::Rcpt { to }] {
            let mut wire = Vec::new();
            write_command(&command, &mut wire);
            prop_assert_eq!(parse_command(&wire), Ok(command));
        }
    }

    #[test]
    fn stuffing_then_unstuffing_gives_the_normalized_message(
        lines in prop::collection::vec("[.]{0,3}[ -~]{0,60}", 0..30),
        split in 0usize..4000,
    ) {
        let message = lines.join("\r\n");
        let mut wire = Vec::new();
        stuff(message.as_bytes(), &mut wire);
        let split = split.min(wire.len());
        let mut reader = Unstuffer::new(1 << 20);
        let mut out = Vec::new();
        let first = reader.read(&wire[..split], &mut out);
        let done = match first {
            Unstuffed::Complete { used } => used == split,
            Unstuffed::Partial => matches!(reader.read(&wire[split..], &mut out), Unstuffed::Complete { .. }),
        };
        prop_assert!(done);
        let mut expected = message.into_bytes();
        if !expected.is_empty() && !expected.ends_with(b"\r\n") {
            expected.extend_from_slice(b"\r\n");
        }
        prop_assert_eq!(out, expected);
    }
}
