//! The io_uring backend: each [`Op`] becomes one submission queue entry; one
//! `io_uring_enter` per turn submits them and waits for the next completion or the
//! turn's deadline (`IORING_ENTER_EXT_ARG`).

use std::collections::VecDeque;
use std::io;
use std::time::Instant;

use io_uring::{opcode, squeue, types, IoUring};

use super::{Op, RING_ENTRIES};

pub(super) struct Kernel {
    ring: IoUring,
    /// Entries that found the submission queue full and could not be submitted at
    /// once; they go first on the next turn. Never dropped: a slot counts them posted.
    backlog: VecDeque<squeue::Entry>,
}

impl Kernel {
    /// A ring for one thread, with `DEFER_TASKRUN` (completions are reaped only when
    /// this thread waits) where the kernel has it.
    pub(super) fn new() -> io::Result<Kernel> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(RING_ENTRIES)
            .or_else(|_| IoUring::new(RING_ENTRIES))?;
        Ok(Kernel { ring, backlog: VecDeque::new() })
    }

    /// # Safety
    /// As [`super::Submissions::push`].
    pub(super) unsafe fn push(&mut self, op: Op, user_data: u64) {
        let entry = match op {
            Op::Connect { fd, address, length } => opcode::Connect::new(types::Fd(fd), address, length).build(),
            Op::Accept { fd } => opcode::Accept::new(types::Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build(),
            Op::Recv { fd, buffer, length } => opcode::Recv::new(types::Fd(fd), buffer, length).build(),
            Op::Send { fd, buffer, length } => opcode::Send::new(types::Fd(fd), buffer, length).build(),
            Op::Cancel { target } => opcode::AsyncCancel::new(target).build(),
        }
        .user_data(user_data);
        if self.backlog.is_empty() && self.try_push(&entry) {
            return;
        }
        if self.ring.submit().is_ok() && self.backlog.is_empty() && self.try_push(&entry) {
            return;
        }
        self.backlog.push_back(entry);
    }

    fn try_push(&mut self, entry: &squeue::Entry) -> bool {
        // SAFETY: every entry was built by `push` from an `Op` whose pointers the
        // caller keeps valid until the completion is reaped (`Submissions::push`).
        unsafe { self.ring.submission().push(entry) }.is_ok()
    }

    pub(super) fn wait(&mut self, now: Instant, wake: Option<Instant>, into: &mut Vec<(u64, i32)>) -> io::Result<()> {
        while let Some(entry) = self.backlog.front() {
            let entry = entry.clone();
            if !self.try_push(&entry) {
                break;
            }
            self.backlog.pop_front();
        }
        let result = match wake {
            Some(at) => {
                let wait = at.saturating_duration_since(now);
                let timespec = types::Timespec::new().sec(wait.as_secs()).nsec(wait.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&timespec);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submit_and_wait(1),
        };
        match result {
            Ok(_) => {}
            // Timed out, interrupted, or completions to reap first: all retried next turn.
            Err(error)
                if matches!(error.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)) => {}
            Err(error) => return Err(error),
        }
        into.extend(self.ring.completion().map(|cqe| (cqe.user_data(), cqe.result())));
        Ok(())
    }
}
