//! The epoll backend: plain tokio sockets as a [`Stream`], for where io_uring is not
//! available (containers whose seccomp profile blocks it).

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

/// The epoll counterpart of [`super::ring::deliver_all`]: the same jobs and reports,
/// each job's connection a task on one current-thread tokio runtime.
pub fn deliver_all(
    jobs: Vec<super::ring::Job>,
    allowlist: &super::connect::Allowlist,
) -> io::Result<Vec<super::ring::Report>> {
    use super::ring::{End, Report};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async {
        let tasks: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let allowlist = allowlist.clone();
                tokio::task::spawn_local(async move {
                    let stream = match super::connect::connect_epoll(job.destination, &job.options, &allowlist).await {
                        Ok(stream) => stream,
                        Err(error) => {
                            let end = End { error: None, connect_error: Some(error), tls: None };
                            return Report { results: Vec::new(), unsent: job.transactions, end: Some(end) };
                        }
                    };
                    let (tls, name) = job.tls;
                    let connection = super::tls::Connection::Plain(stream);
                    let report = super::driver::run_client(connection, job.session, &tls, name, job.transactions).await;
                    let end = End { error: report.error, connect_error: None, tls: report.tls_info };
                    Report { results: report.results, unsent: report.unsent, end: Some(end) }
                })
            })
            .collect();
        let mut reports = Vec::with_capacity(tasks.len());
        for task in tasks {
            reports.push(task.await.map_err(io::Error::other)?);
        }
        Ok(reports)
    })
}
