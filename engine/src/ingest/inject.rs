//! The inject request of `POST /api/inject/v1`, in KumoMTA's shape so that
//! applications written for it can switch: `envelope_sender`, `content` (a raw
//! RFC 5322 message or a builder object), `recipients` `[{email, name,
//! substitutions, metadata}]`, global `substitutions`, Jinja templates (minijinja,
//! as KumoMTA) rendered per recipient. ringmail's additions: `tenant`, `campaign`
//! and message-level `metadata`, carried into the queue and every log record.
//!
//! [`build`] turns a request into queue-store messages: raw content without
//! templates is one message with all the recipients (stored once); the builder
//! whose body parts are not templates is one message too, each recipient with a
//! header block of its own beside it (To, Subject, Message-ID, List-Unsubscribe,
//! Feedback-ID, the extra headers: `../shared/DESIGN.md`, durability rule 4); a
//! template in raw content or in a body part makes one message per recipient. A
//! recipient that cannot be
//! accepted (bad address, a template error, a header made unsafe by a substitution)
//! fails alone, with its reason; the others go on.

use std::collections::BTreeMap;

use queue_store::{Limits, Metadata, NewMessage, NewRecipient};
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectRequest {
    /// MAIL FROM; "" for the null reverse-path.
    pub envelope_sender: String,
    /// A string (the whole RFC 5322 message) or a builder object; see [`Builder`].
    pub content: Value,
    pub recipients: Vec<Recipient>,
    #[serde(default)]
    pub substitutions: Map<String, Value>,
    /// "Jinja" (the default) or "Static" (no templating).
    #[serde(default)]
    pub template_dialect: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    #[serde(default)]
    pub campaign: Option<String>,
    /// Message-level metadata (recipient metadata overrides a key).
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// KumoMTA's: accepted for compatibility. ringmail always stores before it
    /// answers (never skips the spool) and always generates before it answers.
    #[serde(default)]
    pub deferred_spool: bool,
    #[serde(default)]
    pub deferred_generation: bool,
    #[serde(default)]
    pub trace_headers: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipient {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub substitutions: Map<String, Value>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
}

/// `content` as an object: ringmail writes the MIME message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Builder {
    #[serde(default)]
    pub from: Option<Mailbox>,
    #[serde(default)]
    pub reply_to: Option<Mailbox>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub text_body: Option<String>,
    #[serde(default)]
    pub html_body: Option<String>,
    #[serde(default)]
    pub amp_html_body: Option<String>,
    /// Extra header fields, `name: value` (templated).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `List-Unsubscribe` (RFC 2369) from a mailto address and/or a URL (both
    /// templated, per recipient); with an https URL also
    /// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
    #[serde(default)]
    pub list_unsubscribe: Option<ListUnsubscribe>,
    /// `Feedback-ID` (templated): what a provider's feedback loop reports back.
    #[serde(default)]
    pub feedback_id: Option<String>,
    /// Not supported yet: refused with a reason rather than dropped.
    #[serde(default)]
    pub attachments: Vec<Value>,
}

/// Where a recipient unsubscribes: at least one of the two.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListUnsubscribe {
    /// An address (`unsubscribe+{{ id }}@example.com`), without `mailto:`.
    #[serde(default)]
    pub mailto: Option<String>,
    /// An https (one-click) or http URL.
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mailbox {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// The outcome of [`build`]: messages for the store, and who failed and why.
#[derive(Debug, Default)]
pub struct Built {
    pub messages: Vec<NewMessage>,
    /// The index (in the request) of each message's recipients, in order.
    pub accepted: Vec<Vec<usize>>,
    pub failed_recipients: Vec<String>,
    pub errors: Vec<String>,
}

/// A whole-request problem: nothing is queued.
#[derive(Debug, PartialEq, Eq)]
pub struct BadRequest(pub String, pub Problem);

/// What a [`BadRequest`] is: 400 or 413.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Problem {
    Invalid,
    /// The request would expand past [`Bounds::expansion_max`].
    TooLarge,
}

/// What one request may cost to build.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Bytes of messages one request may expand to, all recipients together
    /// (`http.expansion_max_bytes`): refused before rendering when the content's
    /// size times its personalised recipients is over it, and while building when
    /// the rendered messages add up past it.
    pub expansion_max: u64,
    /// Template instructions one field's render may run (`http.template_fuel`).
    pub fuel: u64,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds { expansion_max: 256 << 20, fuel: 100_000 }
    }
}

/// Raw content and templates are checked once for the whole request; per
/// recipient only the substitution and the address can fail.
pub fn build(request: InjectRequest, limits: &Limits, host: &str) -> Result<Built, BadRequest> {
    build_within(request, limits, host, &Bounds::default())
}

/// [`build`] within `bounds`: every recipient at once.
pub fn build_within(request: InjectRequest, limits: &Limits, host: &str, bounds: &Bounds) -> Result<Built, BadRequest> {
    Expansion::prepare(request, limits, host, bounds)?.next_chunk(u64::MAX)
}

/// A request checked and its templates compiled, to be rendered a chunk at a time
/// ([`Expansion::next_chunk`]): a large personalised request goes to the store in
/// pieces, so its messages are never all in memory at once.
pub struct Expansion {
    request: InjectRequest,
    content: Content,
    templates: Templates,
    /// How recipients map to stored messages.
    shape: Shape,
    /// [`Shape::Heads`]: the message every recipient shares (fields and body).
    shared_body: Option<Vec<u8>>,
    message_meta: Metadata,
    host: String,
    limits: Limits,
    bounds: Bounds,
    /// The next recipient (index in the request) to render.
    next: usize,
    /// Bytes of messages rendered so far, all chunks together.
    expanded: u64,
}

impl std::fmt::Debug for Expansion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expansion").field("next", &self.next).field("expanded", &self.expanded).finish()
    }
}

impl Expansion {
    /// Checks the whole request (sender, content, templates, the least it expands
    /// to) and compiles its templates; renders nothing yet.
    pub fn prepare(
        mut request: InjectRequest,
        limits: &Limits,
        host: &str,
        bounds: &Bounds,
    ) -> Result<Expansion, BadRequest> {
        let bad = |why: String| Err(BadRequest(why, Problem::Invalid));
        if !request.envelope_sender.is_empty() {
            if let Err(why) = queue_store::check_address(&request.envelope_sender, limits) {
                return bad(format!("envelope_sender: {why}"));
            }
        }
        if request.recipients.is_empty() {
            return bad("recipients: at least one is needed".into());
        }
        let templating = match request.template_dialect.as_deref() {
            None | Some("Jinja") => true,
            Some("Static") => false,
            Some(other) => return bad(format!("template_dialect: \"{other}\" is not supported (Jinja or Static)")),
        };
        let content = match std::mem::take(&mut request.content) {
            Value::String(raw) => Content::Raw(raw),
            Value::Object(object) => match serde_json::from_value::<Builder>(Value::Object(object)) {
                Ok(builder) if !builder.attachments.is_empty() => {
                    return bad("content.attachments: not supported by ringmail (send a raw MIME message)".into())
                }
                Ok(builder) => Content::Builder(Box::new(builder)),
                Err(error) => return bad(format!("content: {error}")),
            },
            _ => return bad("content: a string (the RFC 5322 message) or a builder object".into()),
        };
        if let Content::Raw(raw) = &content {
            let hops = super::received_count(raw.as_bytes());
            if hops >= super::HOPS_MAX {
                return bad(format!(
                    "content: {hops} Received: headers, at most {} (a mail loop?)",
                    super::HOPS_MAX - 1
                ));
            }
        }
        let mut templates = Templates::new(templating, bounds.fuel, limits.message_size_max_bytes);
        match &content {
            Content::Raw(raw) => templates.add("content", raw)?,
            Content::Builder(builder) => {
                for (name, text) in [
                    ("subject", &builder.subject),
                    ("text_body", &builder.text_body),
                    ("html_body", &builder.html_body),
                    ("amp_html_body", &builder.amp_html_body),
                ] {
                    if let Some(text) = text {
                        templates.add(name, text)?;
                    }
                }
                for (name, value) in &builder.headers {
                    if !is_field_name(name) {
                        return bad(format!("content.headers: \"{name}\" is not a header field name"));
                    }
                    if let Some(owner) = reserved_field(name) {
                        return bad(format!("content.headers: \"{name}\" is {owner}"));
                    }
                    templates.add(&format!("header:{name}"), value)?;
                }
                let named = |wanted: &str| builder.headers.keys().any(|name| name.eq_ignore_ascii_case(wanted));
                if let Some(unsubscribe) = &builder.list_unsubscribe {
                    if named("List-Unsubscribe") || named("List-Unsubscribe-Post") {
                        return bad("content: list_unsubscribe and a List-Unsubscribe header; give one".into());
                    }
                    if unsubscribe.mailto.is_none() && unsubscribe.url.is_none() {
                        return bad("content.list_unsubscribe: a mailto address, a url, or both".into());
                    }
                    for (name, text) in
                        [("unsubscribe:mailto", &unsubscribe.mailto), ("unsubscribe:url", &unsubscribe.url)]
                    {
                        if let Some(text) = text {
                            templates.add(name, text)?;
                        }
                    }
                }
                if let Some(feedback_id) = &builder.feedback_id {
                    if named("Feedback-ID") {
                        return bad("content: feedback_id and a Feedback-ID header; give one".into());
                    }
                    templates.add("feedback_id", feedback_id)?;
                }
                for (field, mailbox) in [("from", &builder.from), ("reply_to", &builder.reply_to)] {
                    if let Some(mailbox) = mailbox {
                        if let Err(why) = queue_store::check_address(&mailbox.email, limits) {
                            return bad(format!("content.{field}.email: {why}"));
                        }
                    }
                }
            }
        }
        let message_meta = metadata(&request.metadata);
        // One message per recipient when each gets its own body; one message for all
        // with a header block each when only their header fields differ.
        let plain_body = BODY_PARTS.iter().all(|name| !templates.is_template(name));
        let shape = match &content {
            Content::Raw(_) if !templates.any => Shape::Shared,
            Content::Builder(_) if plain_body && request.recipients.len() > 1 => Shape::Heads,
            _ => Shape::Personal,
        };
        let shared_body = match (&content, shape) {
            (Content::Builder(builder), Shape::Heads) => {
                let mut body = shared_fields(builder).map_err(|why| BadRequest(why, Problem::Invalid))?.into_bytes();
                mime_content(&templates.plain, &mut body);
                // What is rendered per recipient from now on: header fields only, none
                // longer than a header block (the body is in the shared message).
                for name in BODY_PARTS {
                    templates.plain.remove(name);
                }
                templates.output_max = HEAD_UNSIGNED_MAX as u64;
                Some(body)
            }
            _ => None,
        };
        let personal = shape == Shape::Personal;
        // Known before rendering: each personalised recipient's message is at least
        // as long as the content's text.
        let expansion = |bytes: u64| {
            let why = format!(
                "the request expands to at least {bytes} bytes of messages, over http.expansion_max_bytes ({})",
                bounds.expansion_max
            );
            Err(BadRequest(why, Problem::TooLarge))
        };
        if personal {
            let least = content_bytes(&content).saturating_mul(request.recipients.len() as u64);
            if least > bounds.expansion_max {
                return expansion(least);
            }
        }
        Ok(Expansion {
            request,
            content,
            templates,
            shape,
            shared_body,
            message_meta,
            host: host.to_string(),
            limits: limits.clone(),
            bounds: *bounds,
            next: 0,
            expanded: 0,
        })
    }

    /// Whether every recipient has been rendered.
    pub fn done(&self) -> bool {
        self.next >= self.request.recipients.len()
    }

    /// The next recipient to render (its index in the request).
    pub fn next_index(&self) -> usize {
        self.next
    }

    /// Bytes of messages rendered so far (all chunks, and those of the attempts it
    /// resumes: `http.expansion_max_bytes` bounds the request, not each attempt).
    pub fn expanded(&self) -> u64 {
        self.expanded
    }

    /// Continues from recipient `index`, `expanded` bytes already rendered (a request
    /// resumed after some of its chunks were stored).
    pub fn skip_to(&mut self, index: usize, expanded: u64) {
        self.next = index.min(self.request.recipients.len());
        self.expanded = expanded;
    }

    /// The addresses of the recipients not rendered yet.
    pub fn remaining(&self) -> impl Iterator<Item = &str> {
        self.request.recipients[self.next..].iter().map(|r| r.email.as_str())
    }

    /// Renders recipients from where the last chunk ended until the messages reach
    /// `bytes_max` (at least one recipient), or the request ends. The message shared
    /// by the recipients of raw content without templates counts once and not
    /// against the chunk: it is one message however many recipients it has. On an
    /// error (the request grew past `http.expansion_max_bytes`) nothing of the chunk
    /// is kept: its recipients are still [`Expansion::remaining`].
    pub fn next_chunk(&mut self, bytes_max: u64) -> Result<Built, BadRequest> {
        let (request, content, templates, shape, host, limits, bounds) =
            (&self.request, &self.content, &self.templates, self.shape, self.host.as_str(), &self.limits, &self.bounds);
        let message_meta = &self.message_meta;
        let expansion = |bytes: u64| {
            let why = format!(
                "the request expands to at least {bytes} bytes of messages, over http.expansion_max_bytes ({})",
                bounds.expansion_max
            );
            Err(BadRequest(why, Problem::TooLarge))
        };
        let mut built = Built::default();
        let mut chunk_bytes = 0u64;
        let chunk_start = self.next;
        let mut shared: Option<(NewMessage, Vec<usize>)> = None;
        let new_message = |body: Vec<u8>| NewMessage {
            sender: request.envelope_sender.clone(),
            recipients: Vec::new(),
            body,
            tenant: request.tenant.clone(),
            campaign: request.campaign.clone(),
            metadata: message_meta.clone(),
        };
        while self.next < request.recipients.len() && chunk_bytes < bytes_max {
            let index = self.next;
            let recipient = &request.recipients[index];
            self.next += 1;
            let fail = |built: &mut Built, why: String| {
                built.failed_recipients.push(recipient.email.clone());
                built.errors.push(format!("{}: {why}", recipient.email));
            };
            if let Err(why) = queue_store::check_address(&recipient.email, limits) {
                fail(&mut built, why.to_string());
                continue;
            }
            let mut new_recipient = NewRecipient {
                address: recipient.email.clone(),
                metadata: metadata(&recipient.metadata),
                head: Vec::new(),
            };
            if shape != Shape::Personal {
                if shape == Shape::Heads {
                    let Content::Builder(builder) = &content else { unreachable!("header blocks are the builder's") };
                    let mut context = request.substitutions.clone();
                    context.extend(recipient.substitutions.iter().map(|(k, v)| (k.clone(), v.clone())));
                    let head = templates
                        .render(&Value::Object(context))
                        .and_then(|rendered| personal_fields(builder, recipient, &rendered, host));
                    let head = head.and_then(|head| match head.len() > HEAD_UNSIGNED_MAX {
                        true => Err(format!("header fields of {} bytes, over 12 KiB", head.len())),
                        false => queue_store::check_head(head.as_bytes()).map(|()| head).map_err(str::to_string),
                    });
                    match head {
                        Ok(head) => new_recipient.head = head.into_bytes(),
                        Err(why) => {
                            fail(&mut built, why);
                            continue;
                        }
                    }
                    let added = new_recipient.head.len() as u64
                        + if shared.is_none() { self.shared_body.as_ref().map_or(0, |b| b.len() as u64) } else { 0 };
                    self.expanded = self.expanded.saturating_add(added);
                    if self.expanded > bounds.expansion_max {
                        let over = self.expanded;
                        self.next = chunk_start;
                        return expansion(over);
                    }
                    chunk_bytes = chunk_bytes.saturating_add(added);
                }
                let shared_body = &self.shared_body;
                let (message, indexes) = shared.get_or_insert_with(|| {
                    let body = match (content, shared_body) {
                        (_, Some(body)) => body.clone(),
                        (Content::Raw(raw), None) => raw_message(raw, host),
                        (Content::Builder(_), None) => unreachable!("the builder's shared body is made in prepare"),
                    };
                    (new_message(body), Vec::new())
                });
                message.recipients.push(new_recipient);
                indexes.push(index);
                let most = match shape {
                    // One signing job signs every block of its message: bounded.
                    Shape::Heads => (limits.recipients_per_message_max as usize).min(HEADS_PER_MESSAGE_MAX),
                    _ => limits.recipients_per_message_max as usize,
                };
                if message.recipients.len() >= most {
                    if let Some((message, indexes)) = shared.take() {
                        built.messages.push(message);
                        built.accepted.push(indexes);
                    }
                }
                continue;
            }
            let mut context = request.substitutions.clone();
            context.extend(recipient.substitutions.iter().map(|(k, v)| (k.clone(), v.clone())));
            let context = Value::Object(context);
            let rendered = templates.render(&context);
            let body = match (&content, rendered) {
                (_, Err(why)) => Err(why),
                (Content::Raw(_), Ok(mut rendered)) => {
                    let text = rendered.remove("content").unwrap_or_default();
                    match context.as_object().and_then(|map| breaks_header(&text, map)) {
                        Some(key) => Err(format!("substitution {key}: a line break in a header field")),
                        None => Ok(raw_message(&text, host)),
                    }
                }
                (Content::Builder(builder), Ok(rendered)) => compose(builder, recipient, &rendered, host),
            };
            match body {
                Ok(body) if body.len() as u64 > limits.message_size_max_bytes => {
                    fail(&mut built, format!("message of {} bytes is over the limit", body.len()));
                }
                Ok(body) => {
                    self.expanded = self.expanded.saturating_add(body.len() as u64);
                    if self.expanded > bounds.expansion_max {
                        let over = self.expanded;
                        self.next = chunk_start;
                        return expansion(over);
                    }
                    chunk_bytes = chunk_bytes.saturating_add(body.len() as u64);
                    let mut message = new_message(body);
                    message.recipients.push(new_recipient);
                    built.messages.push(message);
                    built.accepted.push(vec![index]);
                }
                Err(why) => fail(&mut built, why),
            }
        }
        if let Some((message, indexes)) = shared {
            built.messages.push(message);
            built.accepted.push(indexes);
        }
        Ok(built)
    }
}

/// The builder's body parts: plain ones go in the shared message of [`Shape::Heads`].
const BODY_PARTS: [&str; 3] = ["text_body", "html_body", "amp_html_body"];

/// A recipient's header fields before signing, at most: the store takes blocks of
/// `queue_store::HEAD_MAX_BYTES` (16 KiB), and the DKIM signatures added on top
/// take about 1 KiB an entry.
const HEAD_UNSIGNED_MAX: usize = 12 * 1024;

/// Recipients of one stored message with header blocks, at most: a signer signs
/// all of a message's blocks in one job (1,000 RSA-2048 signatures, about half a
/// second of one core), and the blocks are read with it.
const HEADS_PER_MESSAGE_MAX: usize = 1000;

/// How a request's recipients become stored messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// Raw content without templates: one message for all recipients.
    Shared,
    /// The builder with plain body parts: one message for all recipients, each with
    /// a header block of its own (To, Subject, Message-ID, List-Unsubscribe ...).
    Heads,
    /// One message per recipient (templates in the content or body parts, or one
    /// recipient).
    Personal,
}

enum Content {
    Raw(String),
    Builder(Box<Builder>),
}

/// The request's templates, compiled once.
struct Templates {
    environment: minijinja::Environment<'static>,
    /// Names of the fields that are templates; the others are used as they are.
    names: Vec<String>,
    plain: BTreeMap<String, String>,
    templating: bool,
    any: bool,
    output_max: u64,
}

/// A render's output, refusing to grow past its limit.
struct Bounded {
    out: Vec<u8>,
    max: u64,
    /// Whether a write was refused for the limit.
    over: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if (self.out.len() + bytes.len()) as u64 > self.max {
            self.over = true;
            return Err(std::io::Error::other("the rendered text is over its limit"));
        }
        self.out.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The bytes of the content's text fields (what every personalised message at least
/// carries).
fn content_bytes(content: &Content) -> u64 {
    match content {
        Content::Raw(raw) => raw.len() as u64,
        Content::Builder(builder) => [&builder.subject, &builder.text_body, &builder.html_body, &builder.amp_html_body]
            .iter()
            .filter_map(|text| text.as_ref().map(|text| text.len() as u64))
            .sum(),
    }
}

impl Templates {
    /// Each render runs at most `fuel` instructions and writes at most `output_max`
    /// bytes (a message's size limit).
    fn new(templating: bool, fuel: u64, output_max: u64) -> Templates {
        let mut environment = minijinja::Environment::new();
        environment.set_fuel(Some(fuel));
        // Mail is not HTML-escaped by default; `|e` does it where wanted.
        environment.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        environment.set_keep_trailing_newline(true);
        Templates { environment, names: Vec::new(), plain: BTreeMap::new(), templating, any: false, output_max }
    }

    fn add(&mut self, name: &str, text: &str) -> Result<(), BadRequest> {
        let is_template = self.templating && ["{{", "{%", "{#"].iter().any(|marker| text.contains(marker));
        if !is_template {
            self.plain.insert(name.to_string(), text.to_string());
            return Ok(());
        }
        self.environment
            .add_template_owned(name.to_string(), text.to_string())
            .map_err(|error| BadRequest(format!("{}: template error: {error}", field_of(name)), Problem::Invalid))?;
        self.names.push(name.to_string());
        self.any = true;
        Ok(())
    }

    /// Whether the field `name` is a template (rendered per recipient).
    fn is_template(&self, name: &str) -> bool {
        self.names.iter().any(|known| known == name)
    }

    /// Every field, rendered with `context` where it is a template.
    fn render(&self, context: &Value) -> Result<BTreeMap<String, String>, String> {
        let mut out = self.plain.clone();
        for name in &self.names {
            let template = self.environment.get_template(name).map_err(|e| e.to_string())?;
            let mut output = Bounded { out: Vec::new(), max: self.output_max, over: false };
            template.render_captured_to(context, &mut output).map_err(|error| match output.over {
                true => format!("{}: the rendered text is over {} bytes", field_of(name), self.output_max),
                false => format!("{}: {error}", field_of(name)),
            })?;
            let text =
                String::from_utf8(output.out).map_err(|_| format!("{}: rendered text is not UTF-8", field_of(name)))?;
            out.insert(name.clone(), text);
        }
        Ok(out)
    }
}

fn field_of(name: &str) -> String {
    match name.strip_prefix("header:") {
        Some(header) => format!("content.headers.{header}"),
        None if name == "content" => "content".into(),
        None if name.starts_with("unsubscribe:") => format!("content.list_unsubscribe.{}", &name[12..]),
        None => format!("content.{name}"),
    }
}

/// Metadata as stored: strings as they are, other JSON values in JSON.
fn metadata(map: &Map<String, Value>) -> Metadata {
    map.iter()
        .map(|(key, value)| {
            let value = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            (key.clone(), value)
        })
        .collect()
}

fn is_field_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 76 && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

/// Why `name` may not be one of the builder's extra headers: the fields the builder
/// writes itself, and those that speak for the message's authenticity or its path
/// (a second From under the sender's DKIM signature is the classic spoof).
fn reserved_field(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    match lower.as_str() {
        "from" | "sender" | "reply-to" | "to" | "subject" | "date" | "mime-version" => {
            Some("written by the builder (use its own field)")
        }
        "dkim-signature" | "authentication-results" | "received" | "return-path" | "received-spf" => {
            Some("added by the mail system, not by the sender")
        }
        _ if lower.starts_with("content-") => Some("written by the builder (use its own field)"),
        _ if lower.starts_with("arc-") => Some("added by the mail system, not by the sender"),
        _ => None,
    }
}

/// A raw message with CRLF line ends, and a `Message-ID:` and a `Date:` when it
/// has none.
fn raw_message(raw: &str, host: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32 + 128);
    if !super::has_header(raw.as_bytes(), b"message-id") {
        out.extend_from_slice(format!("Message-ID: <{}@{host}>\r\n", unique()).as_bytes());
    }
    if !super::has_header(raw.as_bytes(), b"date") {
        let date = super::rfc5322_date(crate::log::now_ms() / 1000);
        out.extend_from_slice(format!("Date: {date}\r\n").as_bytes());
    }
    crlf_into(raw, &mut out);
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn crlf_into(text: &str, out: &mut Vec<u8>) {
    let mut previous = 0u8;
    for &byte in text.as_bytes() {
        if byte == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(byte);
        previous = byte;
    }
}

/// The substitution (by key) whose value, holding a line break, landed inside a
/// header field of the rendered raw message (after a field's name, not at the start
/// of a line): it could add header fields (a `Bcc:`). A value placed at the start of
/// a line (`{{ message }}` as the whole message, `{{ headers }}` as whole lines) is
/// the template's own choice.
fn breaks_header(rendered: &str, context: &Map<String, Value>) -> Option<String> {
    let header_end = ["\r\n\r\n", "\n\n"].iter().filter_map(|end| rendered.find(end)).min().unwrap_or(rendered.len());
    context.iter().find_map(|(key, value)| {
        let value = value.as_str()?;
        if !value.contains(['\r', '\n']) {
            return None;
        }
        let inside =
            rendered.match_indices(value).any(|(at, _)| at < header_end && at > 0 && !rendered[..at].ends_with('\n'));
        inside.then(|| key.clone())
    })
}

fn unique() -> String {
    format!("{}.{:016x}", crate::log::now_ms(), fastrand::u64(..))
}

/// The builder's message for one recipient.
fn compose(
    builder: &Builder,
    recipient: &Recipient,
    rendered: &BTreeMap<String, String>,
    host: &str,
) -> Result<Vec<u8>, String> {
    let mut out = shared_fields(builder)?.into_bytes();
    out.extend_from_slice(personal_fields(builder, recipient, rendered, host)?.as_bytes());
    mime_content(rendered, &mut out);
    Ok(out)
}

/// `name: value` CRLF onto `head`, the value encoded as RFC 2047 words where it
/// must be; a line break in the value is refused.
fn push_field(head: &mut String, name: &str, value: &str) -> Result<(), String> {
    if value.contains(['\r', '\n']) {
        return Err(format!("header {name}: a line break in its value"));
    }
    head.push_str(name);
    head.push_str(": ");
    head.push_str(&encode_unstructured(value, name.len() + 2));
    head.push_str("\r\n");
    Ok(())
}

/// The builder's fields that are the same for every recipient: From, Reply-To, Date.
fn shared_fields(builder: &Builder) -> Result<String, String> {
    let mut head = String::with_capacity(256);
    if let Some(from) = &builder.from {
        push_field(&mut head, "From", &mailbox(&from.email, from.name.as_deref()))?;
    }
    if let Some(reply_to) = &builder.reply_to {
        push_field(&mut head, "Reply-To", &mailbox(&reply_to.email, reply_to.name.as_deref()))?;
    }
    push_field(&mut head, "Date", &super::rfc5322_date(crate::log::now_ms() / 1000))?;
    Ok(head)
}

/// The builder's fields of one recipient: To, Subject, Message-ID, the extra
/// headers, List-Unsubscribe (and List-Unsubscribe-Post), Feedback-ID.
fn personal_fields(
    builder: &Builder,
    recipient: &Recipient,
    rendered: &BTreeMap<String, String>,
    host: &str,
) -> Result<String, String> {
    let mut head = String::with_capacity(512);
    push_field(&mut head, "To", &mailbox(&recipient.email, recipient.name.as_deref()))?;
    if let Some(subject) = rendered.get("subject") {
        push_field(&mut head, "Subject", subject)?;
    }
    let custom = |wanted: &str| builder.headers.keys().any(|name| name.eq_ignore_ascii_case(wanted));
    if !custom("Message-ID") {
        push_field(&mut head, "Message-ID", &format!("<{}@{host}>", unique()))?;
    }
    for name in builder.headers.keys() {
        let value = rendered.get(&format!("header:{name}")).map(String::as_str).unwrap_or_default();
        push_field(&mut head, name, value)?;
    }
    let mailto = rendered.get("unsubscribe:mailto").map(|address| address.trim());
    let url = rendered.get("unsubscribe:url").map(|url| url.trim());
    if mailto.is_some() || url.is_some() {
        let mut targets = Vec::new();
        if let Some(address) = mailto {
            let plain =
                address.contains('@') && address.bytes().all(|b| b.is_ascii_graphic() && !b"<>,\"".contains(&b));
            if !plain {
                return Err(format!("content.list_unsubscribe.mailto: {address:?} is not an address"));
            }
            targets.push(format!("<mailto:{address}>"));
        }
        if let Some(url) = url {
            let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
            if !scheme_ok || !url.bytes().all(|b| b.is_ascii_graphic() && !b"<>\"".contains(&b)) {
                return Err(format!("content.list_unsubscribe.url: {url:?} is not an http(s) URL"));
            }
            targets.push(format!("<{url}>"));
        }
        push_field(&mut head, "List-Unsubscribe", &targets.join(", "))?;
        // RFC 8058: one-click only over https, and signed with the message (the
        // default DKIM header list covers both fields).
        if url.is_some_and(|url| url.starts_with("https://")) {
            push_field(&mut head, "List-Unsubscribe-Post", "List-Unsubscribe=One-Click")?;
        }
    }
    if let Some(feedback_id) = rendered.get("feedback_id") {
        push_field(&mut head, "Feedback-ID", feedback_id)?;
    }
    Ok(head)
}

/// MIME-Version, the content's type and the body parts, onto `out`.
fn mime_content(rendered: &BTreeMap<String, String>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"MIME-Version: 1.0\r\n");
    let parts: Vec<(&str, &String)> = [
        ("text/plain", rendered.get("text_body")),
        ("text/x-amp-html", rendered.get("amp_html_body")),
        ("text/html", rendered.get("html_body")),
    ]
    .into_iter()
    .filter_map(|(kind, text)| text.map(|text| (kind, text)))
    .collect();
    match parts.as_slice() {
        [] => out.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n\r\n"),
        [(kind, text)] => part(out, kind, text),
        parts => {
            let boundary = format!("=_ringmail_{:016x}", fastrand::u64(..));
            out.extend_from_slice(
                format!("Content-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n").as_bytes(),
            );
            for (kind, text) in parts {
                out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
                part(out, kind, text);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        }
    }
}

/// One body part: its header and its text, 7bit when it can be, quoted-printable
/// otherwise (non-ASCII, or lines over 998 octets).
fn part(out: &mut Vec<u8>, kind: &str, text: &str) {
    let seven_bit = text.is_ascii() && text.lines().all(|line| line.len() <= 998);
    let encoding = if seven_bit { "7bit" } else { "quoted-printable" };
    out.extend_from_slice(
        format!("Content-Type: {kind}; charset=utf-8\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n").as_bytes(),
    );
    if seven_bit {
        crlf_into(text, out);
    } else {
        quoted_printable_into(text, out);
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
}

/// RFC 2045 §6.7 quoted-printable, lines at most 76 characters, CRLF line ends.
fn quoted_printable_into(text: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for (number, line) in text.split('\n').enumerate() {
        if number > 0 {
            out.extend_from_slice(b"\r\n");
        }
        let line = line.strip_suffix('\r').unwrap_or(line).as_bytes();
        let mut width = 0;
        for (position, &byte) in line.iter().enumerate() {
            let last = position + 1 == line.len();
            let literal = (byte == b' ' || byte == b'\t') && !last || (33..=126).contains(&byte) && byte != b'=';
            let size = if literal { 1 } else { 3 };
            if width + size > 75 {
                out.extend_from_slice(b"=\r\n");
                width = 0;
            }
            if literal {
                out.push(byte);
            } else {
                out.extend_from_slice(&[b'=', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 15)]]);
            }
            width += size;
        }
    }
}

/// `Name <email>`, the name quoted or encoded as needed; `email` alone without one.
fn mailbox(email: &str, name: Option<&str>) -> String {
    match name.filter(|name| !name.is_empty()) {
        None => email.to_string(),
        Some(name) if !name.is_ascii() => format!("{} <{email}>", encoded_words(name)),
        Some(name) if name.bytes().all(|b| b.is_ascii_alphanumeric() || b" !#$%&'*+-/=?^_`{|}~".contains(&b)) => {
            format!("{name} <{email}>")
        }
        Some(name) => format!("\"{}\" <{email}>", name.replace('\\', "\\\\").replace('"', "\\\"")),
    }
}

/// An unstructured header value: as it is when ASCII (folded at spaces when long),
/// else RFC 2047 encoded words. Mailboxes already encoded pass through.
fn encode_unstructured(value: &str, used: usize) -> String {
    if !value.is_ascii() {
        return encoded_words(value);
    }
    if used + value.len() <= 78 {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 8);
    let mut width = used;
    for (index, word) in value.split(' ').enumerate() {
        if index > 0 {
            if width + 1 + word.len() > 78 && width > 1 {
                out.push_str("\r\n");
                width = 0;
            }
            out.push(' ');
            width += 1;
        }
        out.push_str(word);
        width += word.len();
    }
    out
}

/// RFC 2047 B-encoded words of at most 75 characters, never splitting a character.
fn encoded_words(text: &str) -> String {
    use base64::Engine;
    const CHUNK: usize = 45; // 45 octets → 60 base64 characters + 12 of "=?utf-8?B??="
    let mut words = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + CHUNK).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        let chunk = &text.as_bytes()[start..end];
        words.push(format!("=?utf-8?B?{}?=", base64::engine::general_purpose::STANDARD.encode(chunk)));
        start = end;
    }
    words.join("\r\n ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> InjectRequest {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn chunks_split_personal_messages_and_keep_a_shared_one_whole() {
        let limits = Limits::default();
        let recipients: Vec<_> = (0..10).map(|i| serde_json::json!({"email": format!("u{i}@x.test")})).collect();
        // Personalised, about 1 KB each: 3 KB chunks of three or four messages.
        let body = format!("Subject: {{{{ email }}}}\r\n\r\n{}", "b".repeat(1000));
        let mut personal = Expansion::prepare(
            request(serde_json::json!({"envelope_sender": "s@x.test", "content": body, "recipients": recipients})),
            &limits,
            "h.test",
            &Bounds::default(),
        )
        .unwrap();
        let mut sizes = Vec::new();
        while !personal.done() {
            sizes.push(personal.next_chunk(3000).unwrap().messages.len());
        }
        assert_eq!(sizes.iter().sum::<usize>(), 10);
        assert!(sizes.len() >= 3 && sizes.iter().all(|n| (1..=4).contains(n)), "{sizes:?}");
        // A large raw message without templates, for many recipients: one message
        // in one chunk, not one per chunk (its size does not count against it).
        let big = format!("Subject: x\r\n\r\n{}", "c".repeat(64 * 1024));
        let mut shared = Expansion::prepare(
            request(serde_json::json!({"envelope_sender": "s@x.test", "content": big, "template_dialect": "Static",
                "recipients": recipients})),
            &limits,
            "h.test",
            &Bounds::default(),
        )
        .unwrap();
        let built = shared.next_chunk(1024).unwrap();
        assert!(shared.done());
        assert_eq!(built.messages.len(), 1);
        assert_eq!(built.messages[0].recipients.len(), 10);
    }

    #[test]
    fn a_chunk_over_the_expansion_bound_leaves_its_recipients_remaining() {
        let limits = Limits::default();
        let recipients: Vec<_> = (0..6)
            .map(|i| serde_json::json!({"email": format!("u{i}@x.test"), "substitutions": {"pad": "p".repeat(if i < 2 { 1 } else { 5000 })}}))
            .collect();
        let bounds = Bounds { expansion_max: 8000, ..Bounds::default() };
        let mut expansion = Expansion::prepare(
            request(serde_json::json!({"envelope_sender": "s@x.test", "content": "Subject: x\r\n\r\n{{ pad }}",
                "recipients": recipients})),
            &limits,
            "h.test",
            &bounds,
        )
        .unwrap();
        // Two small messages fit; the next chunk grows past 8,000 bytes.
        assert_eq!(expansion.next_chunk(10).unwrap().messages.len(), 1);
        assert_eq!(expansion.next_chunk(10).unwrap().messages.len(), 1);
        let error = expansion.next_chunk(20_000).unwrap_err();
        assert_eq!(error.1, Problem::TooLarge);
        let remaining: Vec<&str> = expansion.remaining().collect();
        assert_eq!(remaining, ["u2@x.test", "u3@x.test", "u4@x.test", "u5@x.test"], "none of the failed chunk is lost");
    }

    /// What the first recipient of `message` is sent.
    fn text(message: &NewMessage) -> String {
        sent(message, 0)
    }

    /// What recipient `index` of `message` is sent: its header block, then the message.
    fn sent(message: &NewMessage, index: usize) -> String {
        let head = message.recipients.get(index).map_or(&[][..], |recipient| &recipient.head[..]);
        String::from_utf8([head, &message.body[..]].concat()).unwrap()
    }

    #[test]
    fn a_builder_campaign_is_one_message_with_a_header_block_each() {
        let content = serde_json::json!({
            "from": {"email": "news@s.test", "name": "News"},
            "subject": "Hello {{ name }}",
            "text_body": "the same for everyone",
            "html_body": "<p>the same for everyone</p>",
            "list_unsubscribe": {"url": "https://s.test/u/{{ id }}"},
        });
        let recipients: Vec<serde_json::Value> = (0..3)
            .map(|i| serde_json::json!({"email": format!("r{i}@d.test"), "substitutions": {"id": i, "name": format!("R{i}")}}))
            .collect();
        let built = build(
            request(serde_json::json!({"envelope_sender": "a@s.test", "content": content, "recipients": recipients})),
            &Limits::default(),
            "h",
        )
        .unwrap();
        assert_eq!(built.messages.len(), 1, "one message stored");
        let message = &built.messages[0];
        assert_eq!((message.recipients.len(), built.accepted[0].clone()), (3, vec![0, 1, 2]));
        let body = String::from_utf8(message.body.clone()).unwrap();
        assert!(body.starts_with("From: News <news@s.test>\r\nDate: "), "{body}");
        assert!(body.contains("MIME-Version: 1.0\r\n") && body.contains("the same for everyone"), "{body}");
        assert!(!body.contains("To:") && !body.contains("Subject:") && !body.contains("List-Unsubscribe"), "{body}");
        let mut ids = std::collections::HashSet::new();
        for (i, recipient) in message.recipients.iter().enumerate() {
            let head = String::from_utf8(recipient.head.clone()).unwrap();
            assert!(head.starts_with(&format!("To: r{i}@d.test\r\nSubject: Hello R{i}\r\nMessage-ID: <")), "{head}");
            assert!(head.contains(&format!("List-Unsubscribe: <https://s.test/u/{i}>\r\n")), "{head}");
            assert!(head.ends_with("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"), "{head}");
            ids.insert(head.lines().find(|l| l.starts_with("Message-ID")).unwrap().to_string());
        }
        assert_eq!(ids.len(), 3, "a Message-ID each");
        // A template in a body part: one message each, no header blocks.
        let personal = build(
            request(serde_json::json!({"envelope_sender": "a@s.test",
                "content": {"from": {"email": "n@s.test"}, "text_body": "hi {{ name }}"},
                "recipients": [{"email": "x@d.test", "substitutions": {"name": "X"}}, {"email": "y@d.test"}]})),
            &Limits::default(),
            "h",
        )
        .unwrap();
        assert_eq!(personal.messages.len(), 2);
        assert!(personal.messages.iter().all(|m| m.recipients[0].head.is_empty()));
        // A header field a substitution breaks fails that recipient alone.
        let broken = build(
            request(serde_json::json!({"envelope_sender": "a@s.test",
                "content": {"from": {"email": "n@s.test"}, "subject": "{{ s }}", "text_body": "t"},
                "recipients": [{"email": "x@d.test", "substitutions": {"s": "ok"}}, {"email": "y@d.test", "substitutions": {"s": "a\r\nBcc: z@evil.test"}}]})),
            &Limits::default(),
            "h",
        )
        .unwrap();
        assert_eq!((broken.messages.len(), broken.messages[0].recipients.len()), (1, 1));
        assert_eq!(broken.failed_recipients, ["y@d.test"]);
        // So does one whose fields would not fit a header block, or make a line
        // over 998 octets; the others go on.
        let long = |recipients: serde_json::Value| {
            build(
                request(serde_json::json!({"envelope_sender": "a@s.test",
                    "content": {"from": {"email": "n@s.test"}, "subject": "{{ s }}", "text_body": "t"},
                    "recipients": recipients})),
                &Limits::default(),
                "h",
            )
            .unwrap()
        };
        let words = "word ".repeat(3000); // 15 KB, foldable
        let built = long(serde_json::json!([{"email": "x@d.test", "substitutions": {"s": "ok"}},
            {"email": "y@d.test", "substitutions": {"s": words}}, {"email": "z@d.test", "substitutions": {"s": "x".repeat(1200)}}]));
        assert_eq!(built.failed_recipients, ["y@d.test", "z@d.test"], "{:?}", built.errors);
        assert!(built.errors[0].contains("over 12288 bytes") && built.errors[1].contains("998"), "{:?}", built.errors);
        // The builder's own fields and the mail system's are not extra headers.
        for name in ["From", "sender", "DKIM-Signature", "Content-Type", "ARC-Seal", "Received"] {
            let refused = build(
                request(serde_json::json!({"envelope_sender": "a@s.test",
                    "content": {"from": {"email": "n@s.test"}, "text_body": "t", "headers": {name: "x@evil.test"}},
                    "recipients": [{"email": "x@d.test"}, {"email": "y@d.test"}]})),
                &Limits::default(),
                "h",
            );
            assert!(refused.unwrap_err().0.contains("content.headers"), "{name}");
        }
    }

    #[test]
    fn raw_content_without_templates_is_one_message_for_all_recipients() {
        let built = build(
            request(serde_json::json!({
                "envelope_sender": "a@s.test",
                "content": "Subject: hi\n\nhello\n",
                "recipients": [{"email": "x@d.test"}, {"email": "no-at-sign"}, {"email": "y@d.test"}],
            })),
            &Limits::default(),
            "h",
        )
        .unwrap();
        assert_eq!(built.messages.len(), 1);
        assert_eq!(built.messages[0].recipients.len(), 2);
        assert_eq!(built.accepted, vec![vec![0, 2]]);
        assert_eq!(built.failed_recipients, vec!["no-at-sign".to_string()]);
        let body = text(&built.messages[0]);
        assert!(body.starts_with("Message-ID: <"), "{body}");
        assert!(body.ends_with("Subject: hi\r\n\r\nhello\r\n"), "{body:?}");
    }

    #[test]
    fn each_recipient_gets_its_own_substitutions() {
        let built = build(
            request(serde_json::json!({
                "envelope_sender": "a@s.test",
                "content": "Subject: {{ greeting }} {{ name }}\r\n\r\nCode {{ code }}\r\n",
                "substitutions": {"greeting": "Hello", "code": "global"},
                "recipients": [
                    {"email": "x@d.test", "substitutions": {"name": "Ann", "code": 1}},
                    {"email": "y@d.test", "substitutions": {"name": "Bob"}},
                ],
            })),
            &Limits::default(),
            "h",
        )
        .unwrap();
        assert_eq!(built.messages.len(), 2);
        assert!(text(&built.messages[0]).contains("Subject: Hello Ann\r\n\r\nCode 1\r\n"));
        assert!(text(&built.messages[1]).contains("Subject: Hello Bob\r\n\r\nCode global\r\n"));
    }

    #[test]
    fn bulk_sender_headers_per_recipient() {
        let content = serde_json::json!({
            "from": {"email": "news@s.test"},
            "subject": "s",
            "text_body": "t",
            "list_unsubscribe": {"mailto": "unsub+{{ id }}@s.test", "url": "https://s.test/u/{{ id }}"},
            "feedback_id": "{{ campaign }}:acme:news",
        });
        let built = build(
            request(serde_json::json!({
                "envelope_sender": "a@s.test",
                "content": content,
                "substitutions": {"campaign": "spring"},
                "recipients": [{"email": "x@d.test", "substitutions": {"id": "x1"}}, {"email": "y@d.test", "substitutions": {"id": "y2"}}],
            })),
            &Limits::default(),
            "h",
        )
        .unwrap();
        let first = text(&built.messages[0]);
        assert!(first.contains("List-Unsubscribe: <mailto:unsub+x1@s.test>, <https://s.test/u/x1>\r\n"), "{first}");
        assert!(first.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"), "{first}");
        assert!(first.contains("Feedback-ID: spring:acme:news\r\n"), "{first}");
        assert!(sent(&built.messages[0], 1).contains("<https://s.test/u/y2>"));
        // Mailto only, or plain http: no one-click.
        let only = |unsubscribe: serde_json::Value| {
            let content =
                serde_json::json!({"from": {"email": "n@s.test"}, "text_body": "t", "list_unsubscribe": unsubscribe});
            let built = build(
                request(
                    serde_json::json!({"envelope_sender": "a@s.test", "content": content, "recipients": [{"email": "x@d.test"}]}),
                ),
                &Limits::default(),
                "h",
            );
            built.map(|built| text(&built.messages[0])).map_err(|error| error.0)
        };
        let mailto = only(serde_json::json!({"mailto": "u@s.test"})).unwrap();
        assert!(
            mailto.contains("List-Unsubscribe: <mailto:u@s.test>\r\n") && !mailto.contains("One-Click"),
            "{mailto}"
        );
        assert!(!only(serde_json::json!({"url": "http://s.test/u"})).unwrap().contains("One-Click"));
        // Refused: nothing to unsubscribe with, a header given twice; a bad URL or
        // address fails that recipient.
        assert!(only(serde_json::json!({})).unwrap_err().contains("mailto address, a url"));
        let bad_url = build(
            request(serde_json::json!({"envelope_sender": "a@s.test",
                "content": {"text_body": "t", "list_unsubscribe": {"url": "javascript:alert(1)"}},
                "recipients": [{"email": "x@d.test"}]})),
            &Limits::default(),
            "h",
        )
        .unwrap();
        assert!(
            bad_url.messages.is_empty() && bad_url.errors[0].contains("not an http(s) URL"),
            "{:?}",
            bad_url.errors
        );
        let twice = build(
            request(serde_json::json!({"envelope_sender": "a@s.test",
                "content": {"text_body": "t", "headers": {"List-Unsubscribe": "<mailto:x@s.test>"}, "list_unsubscribe": {"mailto": "u@s.test"}},
                "recipients": [{"email": "x@d.test"}]})),
            &Limits::default(),
            "h",
        );
        assert!(twice.unwrap_err().0.contains("give one"));
    }

    #[test]
    fn the_builder_writes_a_mime_message() {
        let built = build(
            request(serde_json::json!({
                "envelope_sender": "a@s.test",
                "content": {
                    "from": {"email": "news@s.test", "name": "News Desk"},
                    "reply_to": {"email": "help@s.test"},
                    "subject": "Grüße {{ first }}",
                    "text_body": "Hi {{ first }}",
                    "html_body": "<p>Hi {{ first }}</p>",
                    "headers": {"X-Campaign": "c-{{ first }}"},
                },
                "recipients": [{"email": "x@d.test", "name": "Ann Example", "substitutions": {"first": "Ann"}}],
            })),
            &Limits::default(),
            "h",
        )
        .unwrap();
        let body = text(&built.messages[0]);
        assert!(body.contains("From: News Desk <news@s.test>\r\n"), "{body}");
        assert!(body.contains("Reply-To: help@s.test\r\n"), "{body}");
        assert!(body.contains("To: Ann Example <x@d.test>\r\n"), "{body}");
        assert!(body.contains("Subject: =?utf-8?B?"), "{body}");
        assert!(body.contains("X-Campaign: c-Ann\r\n"), "{body}");
        assert!(body.contains("multipart/alternative"), "{body}");
        assert!(body.contains("\r\n\r\nHi Ann\r\n"), "{body}");
        assert!(body.contains("<p>Hi Ann</p>"), "{body}");
    }

    #[test]
    fn a_substitution_that_breaks_a_raw_header_fails_that_recipient_alone() {
        let built = build(
            request(serde_json::json!({
                "envelope_sender": "a@s.test",
                "content": "Subject: {{ s }}\r\n\r\nDear {{ s }}\r\n{{ lines }}\r\n",
                "recipients": [
                    {"email": "x@d.test", "substitutions": {"s": "fine", "lines": "a\r\nb"}},
                    {"email": "y@d.test", "substitutions": {"s": "evil\r\nBcc: z@e.test", "lines": "c"}},
                    {"email": "w@d.test", "substitutions": {"s": "\r\nBcc: z@e.test\r\n\r\n", "lines": "c"}},
                ],
            })),
            &Limits::default(),
            "h",
        )
        .unwrap();
        assert_eq!(built.messages.len(), 1, "a line break in the body is fine");
        assert_eq!(built.failed_recipients, vec!["y@d.test".to_string(), "w@d.test".to_string()]);
        assert!(built.errors[0].contains("line break in a header field"), "{:?}", built.errors);
        // A value that is whole lines at the start of one (the whole message, as
        // loadgen sends it) is the template's choice.
        let whole = build(
            request(serde_json::json!({
                "envelope_sender": "a@s.test",
                "content": "{{ message }}",
                "recipients": [{"email": "x@d.test", "substitutions": {"message": "Subject: a\r\nTo: x@d.test\r\n\r\nbody\r\n"}}],
            })),
            &Limits::default(),
            "h",
        )
        .unwrap();
        assert_eq!((whole.messages.len(), whole.failed_recipients.len()), (1, 0), "{:?}", whole.errors);
    }

    #[test]
    fn a_substitution_that_breaks_a_header_fails_that_recipient_alone() {
        let built = build(
            request(serde_json::json!({
                "envelope_sender": "a@s.test",
                "content": {"subject": "{{ s }}", "text_body": "x"},
                "recipients": [
                    {"email": "x@d.test", "substitutions": {"s": "fine"}},
                    {"email": "y@d.test", "substitutions": {"s": "evil\r\nBcc: z@e.test"}},
                ],
            })),
            &Limits::default(),
            "h",
        )
        .unwrap();
        assert_eq!(built.messages.len(), 1);
        assert_eq!(built.failed_recipients, vec!["y@d.test".to_string()]);
        assert!(built.errors[0].contains("line break"), "{:?}", built.errors);
    }

    #[test]
    fn whole_request_problems_are_bad_requests() {
        let limits = Limits::default();
        let attempt = |json| build(request(json), &limits, "h").map(|_| ()).unwrap_err().0;
        let why = attempt(serde_json::json!({"envelope_sender": "a@s.test", "content": "x", "recipients": []}));
        assert!(why.contains("recipients"), "{why}");
        let why = attempt(serde_json::json!({
            "envelope_sender": "a@s.test", "content": "{{ unclosed", "recipients": [{"email": "x@d.test"}]
        }));
        assert!(why.contains("template error"), "{why}");
        let why = attempt(serde_json::json!({
            "envelope_sender": "a@s.test", "content": {"attachments": [{}]}, "recipients": [{"email": "x@d.test"}]
        }));
        assert!(why.contains("attachments"), "{why}");
        let why = attempt(serde_json::json!({
            "envelope_sender": "a@s.test", "content": 5, "recipients": [{"email": "x@d.test"}]
        }));
        assert!(why.contains("content"), "{why}");
    }

    #[test]
    fn quoted_printable_keeps_lines_short_and_encodes_what_it_must() {
        let mut out = Vec::new();
        quoted_printable_into(&format!("é = {} end \n", "a".repeat(100)), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("=C3=A9 =3D aaa"), "{text}");
        assert!(text.split("\r\n").all(|line| line.len() <= 76), "{text}");
        assert!(text.contains("end=20"), "a trailing space is encoded: {text}");
    }

    #[test]
    fn names_are_quoted_or_encoded() {
        assert_eq!(mailbox("a@b.test", Some("Ann")), "Ann <a@b.test>");
        assert_eq!(mailbox("a@b.test", Some("Doe, Ann")), "\"Doe, Ann\" <a@b.test>");
        assert!(mailbox("a@b.test", Some("Zoë")).starts_with("=?utf-8?B?"));
        assert_eq!(mailbox("a@b.test", None), "a@b.test");
    }
}
