//! The io_uring backend: tokio-uring sockets as a [`Stream`].

use std::io;

use super::Stream;

/// Whether ringmail's io_uring loops can run here: io_uring is not disabled
/// (`/proc/sys/kernel/io_uring_disabled`), seccomp lets us create a ring, the kernel
/// waits with a timeout in `io_uring_enter` (`EXT_ARG`, 5.11), and has every
/// operation the loops post (connect, accept, send, recv, async cancel). A kernel
/// that creates rings but lacks one of these would fail the loops' first turn.
pub fn available() -> bool {
    if std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").is_ok_and(|v| v.trim() != "0") {
        return false;
    }
    let Ok(ring) = io_uring::IoUring::new(2) else { return false };
    if !ring.params().is_feature_ext_arg() {
        return false;
    }
    let mut probe = io_uring::Probe::new();
    if ring.submitter().register_probe(&mut probe).is_err() {
        return false;
    }
    use io_uring::opcode;
    [opcode::Connect::CODE, opcode::Accept::CODE, opcode::Send::CODE, opcode::Recv::CODE, opcode::AsyncCancel::CODE]
        .into_iter()
        .all(|code| probe.is_supported(code))
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

/// Makes `io_uring_setup` fail with EPERM on the calling thread and on every thread
/// it starts afterwards, as a container runtime's default seccomp profile does: what
/// runs there meets the epoll fallback. For tests (an engine started on such a thread
/// runs as it would in such a container) and for an operator who wants to see the
/// fallback on their own machine. Irreversible for the thread; x86-64 and aarch64
/// system call numbers (libc's).
#[allow(unsafe_code)] // installing a seccomp filter is a raw prctl
pub fn forbid_on_this_thread() -> io::Result<()> {
    const LOAD_SYSCALL_NR: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS, offset 0 = seccomp_data.nr
    const JUMP_IF_EQUAL: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RETURN: u16 = 0x06; // BPF_RET | BPF_K
    const ALLOW: u32 = 0x7fff_0000;
    const ERRNO: u32 = 0x0005_0000;
    let mut filter = [
        libc::sock_filter { code: LOAD_SYSCALL_NR, jt: 0, jf: 0, k: 0 },
        libc::sock_filter { code: JUMP_IF_EQUAL, jt: 0, jf: 1, k: libc::SYS_io_uring_setup as u32 },
        libc::sock_filter { code: RETURN, jt: 0, jf: 0, k: ERRNO | libc::EPERM as u32 },
        libc::sock_filter { code: RETURN, jt: 0, jf: 0, k: ALLOW },
    ];
    let program = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_mut_ptr() };
    // SAFETY: plain prctl calls; `program` and `filter` outlive them (the kernel copies
    // the filter).
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &program as *const libc::sock_fprog) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
