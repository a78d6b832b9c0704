//! A hostile frontend: every message field and ring index is the frontend's word. Bad ones get
//! a NACK and a logged, typed error; a frontend that breaks the protocol is disconnected; the
//! backend never panics and serves the next frontend.

mod vhost_support;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use vballoon::memory::{GuestAddress, PAGE_SIZE};
use vballoon::vhost_user::VhostUserBackend;
use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::VhostUserFrontend;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vhost_support::*;

fn backend(name: &str) -> (std::path::PathBuf, VhostUserBackend) {
    // The backend unlinks its socket when dropped, so the test leaves nothing in /tmp.
    let path =
        std::env::temp_dir().join(format!("vballoon-vuh-{name}-{}.sock", std::process::id()));
    let b = VhostUserBackend::new(&path, &["must_tell_host", "stats_vq"], 256).unwrap();
    (path, b)
}

fn served_next(path: &std::path::Path, b: &VhostUserBackend, n: u64) {
    assert!(b
        .status_view()
        .wait_for(None, Some(false), Duration::from_secs(10)));
    let mut g = Guest::connect(path, ram());
    g.negotiate(1, 2);
    eventually("next frontend served", || b.status().driver_ok);
    assert_eq!(b.status().frontends_served, n);
}

#[test]
fn test_garbage_and_stalled_frontends_are_dropped() {
    let (path, b) = backend("garbage");
    // A header with an unknown request code and a huge size.
    let mut s = UnixStream::connect(&path).unwrap();
    s.write_all(&[0xff; 12]).unwrap();
    s.write_all(&[0u8; 64]).unwrap();
    eventually("first accepted", || b.status().frontends_served == 1);
    assert!(b
        .status_view()
        .wait_for(None, Some(false), Duration::from_secs(10)));
    assert!(!b.status().errors.is_empty());
    // Half a header, then silence: dropped after the message timeout.
    let mut s2 = UnixStream::connect(&path).unwrap();
    eventually("second accepted", || b.status().frontends_served == 2);
    s2.write_all(&[1, 0, 0]).unwrap();
    assert!(b
        .status_view()
        .wait_for(None, Some(false), Duration::from_secs(20)));
    served_next(&path, &b, 3);
    drop(s);
}

#[test]
fn test_bad_fields_are_refused_and_the_connection_goes_on() {
    let (path, b) = backend("fields");
    let mem = ram();
    let mut g = Guest::connect(&path, mem.clone());
    // Sizes: too big, not a power of two, zero; a queue that does not exist.
    assert!(g.fe.set_vring_num(0, 1024).is_err());
    assert!(g.fe.set_vring_num(0, 100).is_err());
    assert!(g.fe.set_vring_num(0, 0).is_err());
    assert!(g.fe.set_vring_num(40, 64).is_err());
    assert!(g.fe.set_vring_base(0, 7).is_err());
    // A kick fd that is not an eventfd or pipe (a memfd polls readable forever).
    let not_eventfd = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
    let target = std::os::fd::AsRawFd::as_raw_fd(&not_eventfd);
    // SAFETY: replaces the eventfd's descriptor number with a dup of the memfd (test only).
    let rc = unsafe { libc::dup2(mem.memfd().unwrap(), target) };
    assert!(rc >= 0);
    assert!(g.fe.set_vring_kick(0, &not_eventfd).is_err());
    // A socket is taken as a call fd: virtio_uml passes one end of a socketpair.
    let (sock, _peer) = UnixStream::pair().unwrap();
    let as_call = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
    let target = std::os::fd::AsRawFd::as_raw_fd(&as_call);
    // SAFETY: replaces the eventfd's descriptor number with a dup of the socket (test only).
    let rc = unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&sock), target) };
    assert!(rc >= 0);
    g.fe.set_vring_call(0, &as_call).unwrap();
    g.fe.set_vring_num(0, QSIZE).unwrap();
    // Ring addresses outside the shared region, or straddling its end.
    let bad = |d: u64| VringConfigData {
        queue_max_size: QSIZE,
        queue_size: QSIZE,
        flags: 0,
        desc_table_addr: d,
        used_ring_addr: d,
        avail_ring_addr: d,
        log_addr: None,
    };
    let base_ua = mem.host_ptr(GuestAddress(BASE), 1).unwrap() as u64;
    assert!(g.fe.set_vring_addr(0, &bad(0x1000)).is_err());
    assert!(g.fe.set_vring_addr(0, &bad(base_ua - 16)).is_err());
    assert!(g
        .fe
        .set_vring_addr(0, &bad(base_ua + (RAM - BASE) - 64))
        .is_err());
    // Features never offered.
    assert!(g
        .fe
        .set_features(1 << 20 | VERSION_1 | PROTOCOL_FEATURES)
        .is_err());
    // Config: the read-only target, a partial field, past the end.
    let wr = VhostUserConfigFlags::WRITABLE;
    assert!(g.fe.set_config(0, wr, &5u32.to_le_bytes()).is_err());
    assert!(g.fe.set_config(4, wr, &[1, 2]).is_err());
    assert!(g.fe.set_config(16, wr, &5u32.to_le_bytes()).is_err());
    // Memory tables: file offset != guest address, unaligned, empty.
    let region = |g: u64, size: u64, off: u64| VhostUserMemoryRegionInfo {
        guest_phys_addr: g,
        memory_size: size,
        userspace_addr: base_ua,
        mmap_offset: off,
        mmap_handle: mem.memfd().unwrap(),
    };
    assert!(g.fe.set_mem_table(&[region(0, RAM, BASE)]).is_err());
    assert!(g.fe.set_mem_table(&[region(0x800, 0x1000, 0x800)]).is_err());
    assert!(g.fe.set_mem_table(&[region(0, 1 << 40, 0)]).is_err());
    let errors = b.status().errors;
    assert!(errors.len() >= 13, "{errors:#?}");
    // Still connected, and a proper setup works.
    assert!(b.status().connected);
    g.negotiate(1, 2);
    eventually("driver_ok", || b.status().driver_ok);
    assert_eq!(g.config()[0], 0);
}

#[test]
fn test_hostile_buffers_and_rings() {
    let (path, b) = backend("rings");
    let mem = ram();
    let mut g = Guest::connect(&path, mem.clone());
    g.negotiate(1, 2);
    eventually("driver_ok", || b.status().driver_ok);
    // PFNs past guest RAM: the buffer is refused, nothing is discarded.
    populate(&mem, PAGES, 4);
    let mut msg = pfns(PAGES / PAGE_SIZE, 4);
    msg.extend_from_slice(&u32::MAX.to_le_bytes());
    g.post(0, &msg);
    g.used(0);
    let st = b.status();
    assert_eq!(st.inflated_pages, 0);
    assert!(has_data(&mem, PAGES, 4 * PAGE_SIZE));
    // A PFN array not a multiple of 4 bytes.
    g.post(0, &[1, 2, 3]);
    g.used(0);
    assert_eq!(b.status().inflated_pages, 0);
    // A descriptor pointing outside guest RAM, written straight into the ring.
    let head = g.queues[0]
        .add_chain(&[(GuestAddress(BUFS), 4)], &[])
        .unwrap();
    let desc = RINGS + u64::from(head) * 16;
    mem.write_u64(GuestAddress(desc), u64::MAX - 8).unwrap();
    g.kicks[0].write(1).unwrap();
    eventually("ring error logged", || b.status().errors.len() >= 3);
    // The avail index run far ahead of the queue size: no unbounded work, no panic.
    let avail_idx = vballoon::virtq::QueueLayout::place(GuestAddress(RINGS), QSIZE)
        .unwrap()
        .avail_idx();
    mem.write_u16(avail_idx, 0x8000).unwrap();
    g.kicks[0].write(1).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(b.status().connected);
    // The device keeps serving the other queue's... and the next frontend, whatever the ring.
    drop(g);
    served_next(&path, &b, 2);
}
