//! SMTP AUTH's password checks: the users file, and a fixed pool of workers that
//! runs the argon2 checks fairly between clients.
//!
//! argon2 costs tens of milliseconds of CPU and ~19 MiB per check, on purpose: the
//! listener never runs it on its own thread. The pool has [`AUTH_WORKERS`] threads,
//! started once; checks wait in one queue per client (an IPv4 address or an IPv6
//! /64), taken round-robin, so a client that opens fifty connections and tries
//! fifty passwords at once is served one check per turn like everyone else: it
//! slows itself down, not the others. A client may have [`AUTH_QUEUED_PER_CLIENT`]
//! checks waiting; the pool [`AUTH_QUEUED_MAX`]; beyond either, that check is
//! answered "try again later" (454 4.7.0) at once.
//!
//! An unknown user costs the same as a known one: the check runs against a dummy
//! hash made at load with the same parameters, so timing does not tell which names
//! exist.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// Threads that run password checks (the whole process).
pub const AUTH_WORKERS: usize = 2;
/// Checks one client may have waiting at once.
pub const AUTH_QUEUED_PER_CLIENT: usize = 4;
/// Checks waiting at once, all clients together.
pub const AUTH_QUEUED_MAX: usize = 1024;

/// Who may authenticate: names and their argon2 password hashes (PHC strings).
#[derive(Debug, Default)]
pub struct Users {
    hashes: HashMap<String, String>,
    /// What an unknown name is checked against (same cost as a known one).
    dummy: Option<String>,
}

impl Users {
    /// `name:hash` per line; `#` comments and blank lines skipped. Errors name the line.
    pub fn load(path: &std::path::Path) -> Result<Users, UsersError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| UsersError::Read { path: path.to_path_buf(), source })?;
        let mut hashes = HashMap::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| UsersError::Line { path: path.to_path_buf(), line: number + 1, problem: why.into() };
            let (name, hash) = line.split_once(':').ok_or_else(|| bad("expected name:argon2-hash"))?;
            argon2::PasswordHash::new(hash).map_err(|e| bad(&format!("not a password hash: {e}")))?;
            hashes.insert(name.to_string(), hash.to_string());
        }
        // A password nobody knows, hashed as `ringmail hash-password` does.
        let secret = format!("{:032x}", fastrand::u128(..));
        let dummy = Some(hash_password(&secret)?);
        Ok(Users { hashes, dummy })
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Whether `password` is `name`'s. Costs one argon2 verification whether or not
    /// `name` exists: run it on the [`AuthPool`], never on a listener's thread.
    pub fn check(&self, name: &str, password: &str) -> bool {
        use argon2::PasswordVerifier;
        let (hash, known) = match (self.hashes.get(name), &self.dummy) {
            (Some(hash), _) => (hash, true),
            (None, Some(dummy)) => (dummy, false),
            (None, None) => return false,
        };
        let Ok(hash) = argon2::PasswordHash::new(hash) else { return false };
        let verified = argon2::Argon2::default().verify_password(password.as_bytes(), &hash).is_ok();
        verified && known
    }
}

/// Why `smtp.users_file` cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsersError {
    #[error("smtp.users_file {}: {source}", .path.display())]
    Read { path: std::path::PathBuf, source: std::io::Error },
    /// A line that is not `name:argon2-hash`.
    #[error("{}:{line}: {problem}", .path.display())]
    Line { path: std::path::PathBuf, line: usize, problem: String },
    /// Hashing the stand-in password for unknown names failed.
    #[error("hashing a password: {0}")]
    Hash(#[from] argon2::password_hash::Error),
}

/// A PHC-format argon2id hash of `password`, for the users file.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let salt = SaltString::encode_b64(&fastrand::u128(..).to_le_bytes())?;
    argon2::Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string())
}

/// One check waiting for a worker.
struct Job {
    users: Arc<Users>,
    identity: String,
    password: String,
    answer: tokio::sync::oneshot::Sender<bool>,
}

#[derive(Default)]
struct Queues {
    by_client: HashMap<IpAddr, VecDeque<Job>>,
    /// Clients with checks waiting, in turn order.
    turns: VecDeque<IpAddr>,
    waiting: usize,
    stopped: bool,
}

struct Shared {
    queues: Mutex<Queues>,
    ready: Condvar,
}

/// The fixed pool of password-check workers; stopping when the last handle goes.
pub struct AuthPool {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AuthPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthPool").finish_non_exhaustive()
    }
}

/// Why a check was not queued: the client or the pool has too many waiting.
#[derive(Debug, PartialEq, Eq)]
pub struct AuthBusy;

impl AuthPool {
    /// Starts [`AUTH_WORKERS`] threads.
    pub fn start() -> std::io::Result<AuthPool> {
        let shared = Arc::new(Shared { queues: Mutex::new(Queues::default()), ready: Condvar::new() });
        for index in 0..AUTH_WORKERS {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new().name(format!("ringmail-auth-{index}")).spawn(move || work(&shared))?;
        }
        Ok(AuthPool { shared })
    }

    /// Queues a check of `identity`'s `password` for `client` (a `client_key`); the
    /// answer comes on the returned receiver.
    pub fn submit(
        &self,
        client: IpAddr,
        users: Arc<Users>,
        identity: String,
        password: String,
    ) -> Result<tokio::sync::oneshot::Receiver<bool>, AuthBusy> {
        let (answer, checked) = tokio::sync::oneshot::channel();
        let mut queues = self.shared.queues.lock().unwrap_or_else(PoisonError::into_inner);
        if queues.waiting >= AUTH_QUEUED_MAX {
            return Err(AuthBusy);
        }
        let queue = queues.by_client.entry(client).or_default();
        if queue.len() >= AUTH_QUEUED_PER_CLIENT {
            return Err(AuthBusy);
        }
        let first = queue.is_empty();
        queue.push_back(Job { users, identity, password, answer });
        if first {
            queues.turns.push_back(client);
        }
        queues.waiting += 1;
        drop(queues);
        self.shared.ready.notify_one();
        Ok(checked)
    }
}

impl Drop for AuthPool {
    fn drop(&mut self) {
        self.shared.queues.lock().unwrap_or_else(PoisonError::into_inner).stopped = true;
        self.shared.ready.notify_all();
    }
}

/// A worker: the next client in turn, one of its checks, then to the back of the line.
fn work(shared: &Shared) {
    loop {
        let job = {
            let mut queues = shared.queues.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if queues.stopped {
                    return;
                }
                if let Some(client) = queues.turns.pop_front() {
                    let queue = queues.by_client.get_mut(&client);
                    let job = queue.and_then(VecDeque::pop_front);
                    match queues.by_client.get(&client).map(VecDeque::len) {
                        Some(0) | None => {
                            queues.by_client.remove(&client);
                        }
                        Some(_) => queues.turns.push_back(client),
                    }
                    if let Some(job) = job {
                        queues.waiting -= 1;
                        break job;
                    }
                    continue;
                }
                queues = shared.ready.wait(queues).unwrap_or_else(PoisonError::into_inner);
            }
        };
        // The client may have gone meanwhile: then nobody waits for the answer.
        if job.answer.is_closed() {
            continue;
        }
        let verified = job.users.check(&job.identity, &job.password);
        let _ = job.answer.send(verified);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Arc<Users> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, format!("alice:{}\n", hash_password("right").unwrap())).unwrap();
        Arc::new(Users::load(&path).unwrap())
    }

    #[test]
    fn an_unknown_user_costs_a_check_and_never_passes() {
        let users = users();
        assert!(users.check("alice", "right"));
        assert!(!users.check("alice", "wrong"));
        assert!(!users.check("mallory", "right"));
        let dummy = users.dummy.as_deref().unwrap();
        assert!(argon2::PasswordHash::new(dummy).is_ok(), "a real hash, so the check costs the same");
    }

    /// One client's flood waits in its own queue (and is refused beyond
    /// `AUTH_QUEUED_PER_CLIENT`); another client's check is taken in turn.
    #[test]
    fn checks_are_taken_round_robin_between_clients() {
        let pool = AuthPool::start().unwrap();
        let users = users();
        let flooder: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let mut flood = Vec::new();
        let mut refused = 0;
        for _ in 0..50 {
            match pool.submit(flooder, Arc::clone(&users), "alice".into(), "wrong".into()) {
                Ok(answer) => flood.push(answer),
                Err(AuthBusy) => refused += 1,
            }
        }
        assert!(refused >= 50 - AUTH_QUEUED_PER_CLIENT - AUTH_WORKERS, "{refused} refused");
        let mine = pool.submit(other, Arc::clone(&users), "alice".into(), "right".into()).expect("queued");
        assert!(mine.blocking_recv().unwrap(), "the other client's valid password passes");
        for answer in flood {
            assert!(!answer.blocking_recv().unwrap());
        }
    }
}
