//! Scheduling: the [`Scheduler`] (`scheduler.rs`) hands due recipients to the
//! shards; the [`Completer`] (`completer.rs`) turns their attempts into state changes,
//! log records and metrics.
//!
//! ```text
//!  queue-store ─claim─> Scheduler ─(Work, per lane's shard)─> shards
//!       ▲                                                        │
//!       └──── state changes ── Completer <─(Attempt per recipient)┘
//! ```

mod completer;
mod scheduler;

pub use completer::Completer;
pub(crate) use completer::RECEPTIONS_PER_TICK_MAX;
pub use scheduler::{Myself, Scheduler};
