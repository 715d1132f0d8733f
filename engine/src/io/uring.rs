//! The io_uring backend: tokio-uring sockets as a [`Stream`].

use std::io;

use super::Stream;

/// Whether io_uring can be used here: the kernel has it, it is not disabled
/// (`/proc/sys/kernel/io_uring_disabled`), and seccomp lets us create a ring.
pub fn available() -> bool {
    if std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|v| v.trim() != "0") {
        return false;
    }
    io_uring::IoUring::new(2).is_ok()
}

impl Stream for tokio_uring::net::TcpStream {
    async fn read_owned(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        // tokio-uring reads into [len, capacity) and only grows len: start empty.
        buf.clear();
        if buf.capacity() < super::READ_BUFFER_BYTES {
            buf.reserve(super::READ_BUFFER_BYTES);
        }
        let (result, mut buf) = self.read(buf).await;
        if let Ok(read) = result {
            buf.truncate(read);
        }
        (result, buf)
    }

    async fn write_all_owned(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        self.write_all(buf).await
    }
}
