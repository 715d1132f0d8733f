//! Plain tokio sockets as a [`Stream`], for the per-connection drivers
//! (`driver.rs`). The daemon's own loops run on epoll through `core/` instead.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Stream;

impl Stream for tokio::net::TcpStream {
    async fn read_owned(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        buf.clear();
        if buf.capacity() < super::READ_BUFFER_BYTES {
            buf.reserve(super::READ_BUFFER_BYTES);
        }
        let result = self.read_buf(&mut buf).await;
        (result, buf)
    }

    async fn write_all_owned(&mut self, buf: Vec<u8>) -> (io::Result<()>, Vec<u8>) {
        let result = self.write_all(&buf).await;
        (result, buf)
    }
}
