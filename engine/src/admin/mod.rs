//! The admin API behind `ringmail ctl`: the requests (`api.rs`, shared by both
//! sides), the server on the HTTP control plane (`server.rs`), and the client
//! (`client.rs`) that `ctl` uses.

pub mod api;
pub mod client;
mod server;

pub use server::*;
