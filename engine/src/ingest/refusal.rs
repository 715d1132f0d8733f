//! Why mail (or an admin request) cannot be taken now, and the one mapping from that
//! to what each door says: the SMTP listener's reply, the HTTP inject API's and the
//! admin API's status. The store's errors and load shedding both become a
//! [`Refusal`] first.

use axum::http::StatusCode;
use queue_store::{Health, StoreError};

use crate::smtp::{EnhancedCode, Reply};

/// What kind of "no" it is, which decides what the client should do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Busy: the store stalled or is full, memory is over its limit, intake is
    /// drained. Try again soon (SMTP 4xx, HTTP 503 with `Retry-After`).
    #[error("{0}")]
    Busy(String),
    /// The request itself is wrong and never will be accepted as it stands (SMTP 5xx,
    /// HTTP 400).
    #[error("{0}")]
    Invalid(String),
    /// The store cannot take anything until the engine restarts (it needs a reopen,
    /// or is closed). Not the client's fault: SMTP 4xx, HTTP 503 without a retry hint.
    #[error("{0}")]
    Unavailable(String),
    /// The store failed (a storage error, a corrupt record): HTTP 500, SMTP 4xx (the
    /// client keeps the message and retries, as with any local error of an MTA).
    #[error("{0}")]
    Failed(String),
}

impl From<&StoreError> for Refusal {
    fn from(error: &StoreError) -> Refusal {
        let text = error.to_string();
        match error {
            StoreError::Invalid { .. } => Refusal::Invalid(text),
            StoreError::Unhealthy(Health::NeedsReopen) | StoreError::Closed => Refusal::Unavailable(text),
            temporary if temporary.is_temporary() => Refusal::Busy(text),
            _ => Refusal::Failed(text),
        }
    }
}

impl From<&crate::dkim::SignError> for Refusal {
    fn from(error: &crate::dkim::SignError) -> Refusal {
        match error {
            crate::dkim::SignError::Failed { .. } => Refusal::Failed(error.to_string()),
            _ => Refusal::Busy(error.to_string()),
        }
    }
}

impl Refusal {
    /// The HTTP status of the inject and admin APIs.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Refusal::Busy(_) | Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Invalid(_) => StatusCode::BAD_REQUEST,
            Refusal::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Whether an HTTP answer says `Retry-After` (seconds).
    pub fn retry_after_seconds(&self) -> Option<u32> {
        matches!(self, Refusal::Busy(_)).then_some(1)
    }

    /// The SMTP listener's reply to a message it could not queue.
    pub fn smtp_reply(&self) -> Reply {
        match self {
            Refusal::Invalid(reason) => {
                Reply::new(554, Some(EnhancedCode::new(5, 6, 0)), format!("Message refused: {reason}"))
            }
            Refusal::Busy(_) | Refusal::Unavailable(_) | Refusal::Failed(_) => {
                Reply::new(451, Some(EnhancedCode::new(4, 3, 0)), "Mail system busy, try again later")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_store_error_maps_to_one_answer_per_door() {
        let cases = [
            (StoreError::ChannelFull, 503, 451, Some(1)),
            (StoreError::QueueFull { queued: 10, max: 10 }, 503, 451, Some(1)),
            (StoreError::Unhealthy(Health::WriteStall), 503, 451, Some(1)),
            (StoreError::Unhealthy(Health::NeedsReopen), 503, 451, None),
            (StoreError::Closed, 503, 451, None),
            (StoreError::Storage("disk".into()), 500, 451, None),
        ];
        for (error, http, smtp, retry) in cases {
            let refusal = Refusal::from(&error);
            assert_eq!(refusal.http_status().as_u16(), http, "{error}");
            assert_eq!(refusal.smtp_reply().code, smtp, "{error}");
            assert_eq!(refusal.retry_after_seconds(), retry, "{error}");
        }
        let invalid = Refusal::Invalid("message body is 9 bytes, the limit is 8".into());
        assert_eq!((invalid.http_status().as_u16(), invalid.smtp_reply().code), (400, 554));
    }
}
