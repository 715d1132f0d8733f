//! Helpers shared by the queue-store integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use queue_store::{NewMessage, NewRecipient, Store, StoreConfig};

pub const HOUR_MS: u64 = 3_600_000;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

pub fn open(dir: &tempfile::TempDir) -> Store {
    open_with(dir, |_| {})
}

pub fn open_with(dir: &tempfile::TempDir, tune: impl FnOnce(&mut StoreConfig)) -> Store {
    let mut config = StoreConfig::new(dir.path());
    tune(&mut config);
    Store::open(config).unwrap().0
}

pub fn message(recipients: &[&str], body: &[u8]) -> NewMessage {
    NewMessage {
        sender: "bounces@sender.test".into(),
        recipients: recipients.iter().map(|address| NewRecipient::new(*address)).collect(),
        body: body.to_vec(),
        tenant: Some("acme".into()),
        campaign: Some("spring".into()),
        metadata: vec![("customer".into(), "42".into())],
    }
}
