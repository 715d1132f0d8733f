//! Ingest: how mail comes in (HTTP inject API, SMTP listener).

pub mod http;
pub mod smtp;
