//! Ingest: how mail comes in.

pub mod http;
