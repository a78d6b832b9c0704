//! The vhost-user backend driven by a real vhost-user frontend (the vhost crate's), over a
//! Unix socket, with memfd guest RAM shared across the socket and rings run by our own driver.

mod vhost_support;

use std::time::Duration;

use vballoon::abi::{
    bit, VIRTIO_BALLOON_F_DEFLATE_ON_OOM, VIRTIO_BALLOON_F_FREE_PAGE_HINT,
    VIRTIO_BALLOON_F_MUST_TELL_HOST, VIRTIO_BALLOON_F_PAGE_POISON, VIRTIO_BALLOON_F_REPORTING,
    VIRTIO_BALLOON_F_STATS_VQ,
};
use vballoon::memory::PAGE_SIZE;
use vballoon::vhost_user::{VhostStatus, VhostUserBackend, DEFAULT_FEATURES};
use vhost::vhost_user::VhostUserFrontend;
use vhost::VhostBackend;
use vhost_support::*;

/// The balloon feature bits these tests negotiate, by the abi's numbering.
const MTH: u64 = bit(VIRTIO_BALLOON_F_MUST_TELL_HOST);
const STATS: u64 = bit(VIRTIO_BALLOON_F_STATS_VQ);
const DOOM: u64 = bit(VIRTIO_BALLOON_F_DEFLATE_ON_OOM);
const FPH: u64 = bit(VIRTIO_BALLOON_F_FREE_PAGE_HINT);
const POISON: u64 = bit(VIRTIO_BALLOON_F_PAGE_POISON);
const REPORTING: u64 = bit(VIRTIO_BALLOON_F_REPORTING);

fn backend(name: &str, features: &[&str]) -> (tempdir::Dir, VhostUserBackend) {
    let dir = tempdir::Dir::new(name);
    let b = VhostUserBackend::new(dir.path().join("vu.sock"), features, 256).unwrap();
    (dir, b)
}

mod tempdir {
    use std::path::{Path, PathBuf};

    /// A scratch directory removed on drop.
    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new(name: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("vballoon-vu-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Every upstream feature (the backend's default offer).
const ALL: [&str; 6] = DEFAULT_FEATURES;

/// The driver reports `actual` pages; waits for the backend to see them and returns its status.
fn settle(b: &VhostUserBackend, g: &mut Guest, actual: u32) -> VhostStatus {
    g.set_actual(actual);
    let seen = b
        .status_view()
        .wait_for(Some(actual), None, Duration::from_secs(10));
    assert!(seen, "backend never saw actual = {actual}");
    b.status()
}

#[test]
fn test_inflate_punches_holes_and_deflate_returns_pages() {
    let (dir, b) = backend("inflate", &ALL);
    let mem = ram();
    let mut g = Guest::connect(&dir.path().join("vu.sock"), mem.clone());
    assert_eq!(g.fe.get_queue_num().unwrap(), 6);
    g.negotiate(MTH | STATS | DOOM, 3);
    eventually("driver_ok", || b.status().driver_ok);
    let st = b.status();
    assert_eq!(
        st.negotiated_features,
        vec!["must_tell_host", "stats_vq", "deflate_on_oom", "version_1"]
    );
    assert_eq!(st.ram_bytes, RAM - 1024 * 1024);

    // A target reaches the guest as config + a config-change message on the backend channel.
    b.set_target(512).unwrap();
    assert_eq!(
        g.backend_message(),
        2,
        "VHOST_USER_BACKEND_CONFIG_CHANGE_MSG"
    );
    assert_eq!(g.config()[0], 512);

    populate(&mem, PAGES, 512);
    // The message buffer's page too, so the file's blocks change only by the discards.
    populate(&mem, BUFS, 1);
    let before = allocated(&mem);
    assert!(has_data(&mem, PAGES, 512 * PAGE_SIZE));
    // Two buffers of 256 PFNs each, as Linux sends them.
    let first = PAGES / PAGE_SIZE;
    for k in 0..2 {
        g.post(0, &pfns(first + k * 256, 256));
        let u = g.used(0);
        assert_eq!(u.len, 0);
    }
    let st = settle(&b, &mut g, 512);
    assert_eq!(st.inflated_pages, 512);
    assert_eq!(st.totals.inflate_buffers, 2);
    assert!(st.totals.discard_calls >= 1 && st.totals.discard_calls <= 2);
    assert_eq!(st.totals.pages_discarded, 512);
    assert!(!has_data(&mem, PAGES, 512 * PAGE_SIZE), "holes punched");
    assert_eq!(before - allocated(&mem), 512 * PAGE_SIZE);
    assert!(st.ram_backed_bytes <= allocated(&mem) + PAGE_SIZE);

    g.post(1, &pfns(first, 256));
    g.used(1);
    let st = settle(&b, &mut g, 256);
    assert_eq!(st.inflated_pages, 256);
    assert_eq!(st.totals.deflate_buffers, 1);
    assert!(st.errors.is_empty(), "{:?}", st.errors);
    // GET_VRING_BASE stops the device and answers the next available index: 2 buffers popped.
    assert_eq!(g.fe.get_vring_base(0).unwrap(), 2);
    assert!(!b.status().driver_ok);
}

#[test]
fn test_stats_arrive_and_are_polled() {
    let (dir, b) = backend("stats", &ALL);
    let mut g = Guest::connect(&dir.path().join("vu.sock"), ram());
    g.negotiate(MTH | STATS, 3);
    eventually("driver_ok", || b.status().driver_ok);
    assert!(!b.request_stats().unwrap(), "no buffer held yet");
    let sample = |free: u64| {
        let mut v = Vec::new();
        for (tag, val) in [(4u16, free), (5, 64 << 20)] {
            v.extend_from_slice(&tag.to_le_bytes());
            v.extend_from_slice(&val.to_le_bytes());
        }
        v
    };
    g.post(2, &sample(1 << 20));
    eventually("stats held", || b.status().totals.stats_updates == 1);
    assert!(b.stats().contains(&("free_memory", 1 << 20)));
    assert!(b.request_stats().unwrap());
    g.used(2);
    g.post(2, &sample(2 << 20));
    eventually("second sample", || {
        b.stats().contains(&("free_memory", 2 << 20))
    });
    assert!(b.stats().contains(&("total_memory", 64 << 20)));
    // The last sample stays readable after the frontend is gone.
    drop(g);
    assert!(b
        .status_view()
        .wait_for(None, Some(false), Duration::from_secs(10)));
    assert!(b.stats().contains(&("free_memory", 2 << 20)));
}

#[test]
fn test_unload_resets_and_reload_renegotiates() {
    let (dir, b) = backend("reset", &ALL);
    let mem = ram();
    let mut g = Guest::connect(&dir.path().join("vu.sock"), mem.clone());
    g.negotiate(MTH | STATS | FPH | REPORTING, 5);
    eventually("driver_ok", || b.status().driver_ok);
    assert_eq!(b.status().negotiated_features.len(), 5);
    g.unload();
    let st = b.status();
    assert!(!st.driver_ok, "disabling the rings resets the device");
    assert!(st.negotiated_features.is_empty());
    // Config stays usable while the driver reprobes (it may write poison_val before its rings).
    g.fe.set_config(
        12,
        vhost::vhost_user::message::VhostUserConfigFlags::WRITABLE,
        &0u32.to_le_bytes(),
    )
    .unwrap();
    // Reload with fewer features: queue 2 is now the reporting queue.
    g.negotiate(MTH | REPORTING, 3);
    eventually("driver_ok again", || b.status().driver_ok);
    // One 2 MiB block reported (a 4 KiB-page run as one descriptor).
    g.give_block(2, PAGES, 512);
    eventually("reported", || b.status().totals.pages_reported == 512);
    assert!(!has_data(&mem, PAGES, 512 * PAGE_SIZE));
    // The inflate queue still works after the renegotiation.
    g.post(0, &pfns(PAGES / PAGE_SIZE, 8));
    g.used(0);
    assert_eq!(b.status().inflated_pages, 8);
}

#[test]
fn test_free_page_hinting_cmd_id_hints_stop_done() {
    let (dir, b) = backend("hints", &ALL);
    let mem = ram();
    let mut b = b;
    let mut g = Guest::connect(&dir.path().join("vu.sock"), mem.clone());
    g.negotiate(MTH | FPH, 3);
    eventually("driver_ok", || b.status().driver_ok);
    let id = b.start_hinting().unwrap();
    assert!(id >= 2);
    assert_eq!(g.backend_message(), 2);
    assert_eq!(g.config()[2], id);
    // The driver sends the id, a 4 MiB block (order 10), then STOP (0).
    g.post(2, &id.to_le_bytes());
    g.used(2);
    g.give_block(2, PAGES, 1024);
    g.post(2, &0u32.to_le_bytes());
    g.used(2);
    let st = b.status();
    assert_eq!(st.totals.pages_hinted, 1024);
    assert_eq!(st.hint_guest_cmd_id, 0, "stopped");
    assert!(
        !has_data(&mem, PAGES, 1024 * PAGE_SIZE),
        "hinted pages discarded"
    );
    b.stop_hinting().unwrap();
    assert_eq!(g.backend_message(), 2);
    assert_eq!(g.config()[2], 1, "DONE");
}

#[test]
fn test_disconnect_then_second_frontend() {
    let (dir, b) = backend("reconnect", &ALL);
    let path = dir.path().join("vu.sock");
    {
        let mut g = Guest::connect(&path, ram());
        g.negotiate(MTH, 2);
        eventually("driver_ok", || b.status().driver_ok);
        // Dies in the middle of an inflate: a buffer posted, no kick answered yet.
        g.post(0, &pfns(PAGES / PAGE_SIZE, 16));
    }
    assert!(b
        .status_view()
        .wait_for(None, Some(false), Duration::from_secs(10)));
    let st = b.status();
    assert!(!st.driver_ok);
    assert_eq!(st.frontends_served, 1);
    let mem = ram();
    let mut g = Guest::connect(&path, mem.clone());
    g.negotiate(MTH, 2);
    eventually("second driver_ok", || b.status().driver_ok);
    populate(&mem, PAGES, 16);
    g.post(0, &pfns(PAGES / PAGE_SIZE, 16));
    g.used(0);
    assert!(!has_data(&mem, PAGES, 16 * PAGE_SIZE));
    assert_eq!(b.status().frontends_served, 2);
    // While connected the backend holds the RAM file and maps it once.
    let fd = mem.memfd().unwrap();
    let (fds, maps) = references(fd);
    assert!(fds >= 2 && maps >= 2, "{fds} fds, {maps} mappings");
    drop(g);
    assert!(b
        .status_view()
        .wait_for(None, Some(false), Duration::from_secs(10)));
    // Nothing leaked: only the test's own fd and mapping of its RAM file remain.
    eventually("fds and mappings released", || references(fd) == (1, 1));
}

#[test]
fn test_page_poison_keeps_reported_pages() {
    let (dir, b) = backend("poison", &ALL);
    let mem = ram();
    let mut g = Guest::connect(&dir.path().join("vu.sock"), mem.clone());
    g.negotiate(MTH | POISON | REPORTING, 3);
    eventually("driver_ok", || b.status().driver_ok);
    assert!(b.status().negotiated_features.contains(&"page_poison"));
    // The driver writes its poison pattern; reported pages must keep it, so none is discarded.
    g.fe.set_config(
        12,
        vhost::vhost_user::message::VhostUserConfigFlags::WRITABLE,
        &0xaaaa_aaaau32.to_le_bytes(),
    )
    .unwrap();
    assert_eq!(g.config()[3], 0xaaaa_aaaa);
    g.give_block(2, PAGES, 512);
    assert!(
        has_data(&mem, PAGES, 512 * PAGE_SIZE),
        "poisoned pages kept"
    );
    assert_eq!(b.status().totals.pages_discarded, 0);
}

#[test]
fn test_virtio_uml_reload_renegotiates_on_new_rings() {
    let (dir, b) = backend("umlreload", &ALL);
    let mem = ram();
    let mut g = Guest::connect(&dir.path().join("vu.sock"), mem.clone());
    let feats = MTH | STATS | FPH | REPORTING;
    g.negotiate_uml(feats, 5, 0);
    eventually("driver_ok", || b.status().driver_ok);
    populate(&mem, PAGES, 8);
    g.post(0, &pfns(PAGES / PAGE_SIZE, 8));
    g.used(0);
    g.post(1, &pfns(PAGES / PAGE_SIZE, 8));
    g.used(1);
    // rmmod: virtio_uml tells the backend nothing, and the guest reuses the old rings' memory.
    for i in 0..5 {
        let base = Guest::ring_base(i, 0);
        mem.fill(
            base,
            vballoon::virtq::QueueLayout::placed_bytes(QSIZE),
            0xff,
        )
        .unwrap();
    }
    // insmod: new features, new rings; the device must not run on the old ones meanwhile.
    g.negotiate_uml(feats, 5, 1);
    eventually("driver_ok again", || b.status().driver_ok);
    populate(&mem, PAGES, 8);
    g.post(0, &pfns(PAGES / PAGE_SIZE, 8));
    g.used(0);
    assert!(!has_data(&mem, PAGES, 8 * PAGE_SIZE));
    let st = b.status();
    assert_eq!(st.inflated_pages, 8);
    assert!(st.errors.is_empty(), "{:?}", st.errors);
}
