//! Split-virtqueue round trips per second.
//!
//! - `virtq_one_thread`: our driver add + device pop + add_used + driver pop_used, one thread.
//! - `virtq_two_threads`: driver and device on two threads, woken by eventfds, EVENT_IDX on.
//! - `virtq_device_side`: the device half alone (pop a chain, visit its buffers, add_used), ours
//!   against rust-vmm `virtio-queue`'s `Queue`, on identical pre-built rings in one mapping
//!   each: the ratio of the two is ours/theirs on identical work.
//!
//! Run: `cargo bench --bench virtq -- --warm-up-time 1 --measurement-time 3`.

#[path = "../tests/virtio_queue_support/mod.rs"]
mod virtio_queue_support;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vballoon::memory::{Backing, GuestAddress, GuestMemory};
use vballoon::virtq::defs::{
    feature, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1, VIRTQ_DESC_F_NEXT,
    VIRTQ_DESC_F_WRITE,
};
use vballoon::virtq::{
    pair_with, Descriptor, DescriptorChain, DeviceQueue, DriverQueue, NotifyMode, PairConfig,
    QueueLayout, Segment,
};
use virtio_queue::QueueT;
use virtio_queue_support::their_queue;
use vm_memory::{GuestMemoryMmap, GuestRegionMmap, MmapRegion};

const MEM: u64 = 4 << 20;
const BUFS: u64 = 0x10_0000;
const QUEUE: u16 = 256;

fn v1() -> u64 {
    feature(VIRTIO_F_VERSION_1)
}

/// Buffers of a chain of `n` segments: the first half device-readable, the rest writable.
fn segments(n: u64) -> Vec<Segment> {
    (0..n)
        .map(|i| Segment {
            addr: GuestAddress(BUFS + i * 0x1000),
            len: 512,
            writable: n > 1 && i >= n / 2,
        })
        .collect()
}

fn polling_pair(features: u64) -> (DriverQueue, DeviceQueue) {
    let mem = Arc::new(GuestMemory::new(MEM, Backing::Anonymous).unwrap());
    let mut cfg = PairConfig::new(GuestAddress(0x1000), QUEUE, features);
    cfg.notify = NotifyMode::Polling;
    pair_with(mem, &cfg).unwrap()
}

/// What a device does with each buffer's description, the same for both implementations.
#[inline(always)]
fn visit(acc: u64, addr: u64, len: u32, writable: bool) -> u64 {
    acc.rotate_left(5) ^ addr ^ u64::from(len) ^ u64::from(writable)
}

fn one_thread(c: &mut Criterion) {
    const BATCH: usize = 64;
    let mut g = c.benchmark_group("virtq_one_thread");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, nseg, features) in [
        ("1seg", 1, v1()),
        ("4seg", 4, v1()),
        ("4seg_indirect", 4, v1() | feature(VIRTIO_F_INDIRECT_DESC)),
    ] {
        let (mut drv, mut dev) = polling_pair(features);
        let segs = segments(nseg);
        let mut chain = DescriptorChain::new();
        g.bench_function(name, |b| {
            b.iter(|| {
                for _ in 0..BATCH {
                    drv.add(black_box(&segs)).unwrap();
                }
                drv.kick().unwrap();
                let mut acc = 0;
                while dev.pop_into(&mut chain).unwrap() {
                    for s in chain.segments() {
                        acc = visit(acc, s.addr.raw(), s.len, s.writable);
                    }
                    dev.add_used(chain.head(), 0).unwrap();
                }
                dev.signal_used().unwrap();
                while let Some(u) = drv.pop_used().unwrap() {
                    acc ^= u64::from(u.head);
                }
                black_box(acc)
            })
        });
    }
    g.finish();
}

/// Sends `n` one-buffer chains through a device running on another thread and waits until all
/// came back, sleeping on the interrupt eventfd whenever nothing is ready.
fn drive(drv: &mut DriverQueue, n: u64) {
    let seg = [Segment::readable(GuestAddress(BUFS), 64)];
    let (mut sent, mut received) = (0u64, 0u64);
    while received < n {
        while sent < n && drv.num_free() > 0 {
            drv.add(&seg).unwrap();
            sent += 1;
        }
        drv.kick().unwrap();
        let mut got = false;
        while drv.pop_used().unwrap().is_some() {
            received += 1;
            got = true;
        }
        if !got && !drv.enable_interrupts().unwrap() {
            drv.wait_interrupt(Some(Duration::from_secs(5))).unwrap();
            drv.disable_interrupts().unwrap();
        }
    }
}

fn two_threads(c: &mut Criterion) {
    let mut g = c.benchmark_group("virtq_two_threads");
    g.throughput(Throughput::Elements(1));
    let mem = Arc::new(GuestMemory::new(MEM, Backing::Anonymous).unwrap());
    let features = v1() | feature(VIRTIO_F_EVENT_IDX);
    let cfg = PairConfig::new(GuestAddress(0x1000), QUEUE, features);
    let (mut drv, mut dev) = pair_with(mem, &cfg).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    let device = thread::spawn(move || {
        let mut chain = DescriptorChain::new();
        while !stop2.load(Ordering::Relaxed) {
            dev.disable_notifications().unwrap();
            while dev.pop_into(&mut chain).unwrap() {
                dev.add_used(chain.head(), 0).unwrap();
            }
            dev.signal_used().unwrap();
            if !dev.enable_notifications().unwrap() {
                dev.wait_kick(Some(Duration::from_millis(50))).unwrap();
            }
        }
    });
    drv.disable_interrupts().unwrap();
    g.bench_function("eventfd_event_idx_1seg", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            drive(&mut drv, iters);
            start.elapsed()
        })
    });
    stop.store(true, Ordering::Relaxed);
    drv.kick_notifier().notify().unwrap();
    device.join().unwrap();
    g.finish();
}

/// A guest memory whose rings hold `QUEUE / nseg` chains of `nseg` descriptors, and every
/// available ring slot names one of them, so bumping `avail.idx` republishes a batch without
/// any driver work. Returns the memory, the layout and the chains per batch.
fn replay_rings(nseg: u16) -> (Arc<GuestMemory>, QueueLayout, u16) {
    let mem = Arc::new(GuestMemory::new(MEM, Backing::Anonymous).unwrap());
    let layout = QueueLayout::place(GuestAddress(0x1000), QUEUE).unwrap();
    let chains = QUEUE / nseg;
    let segs = segments(u64::from(nseg));
    for c in 0..chains {
        for (i, s) in segs.iter().enumerate() {
            let idx = c * nseg + i as u16;
            let last = i + 1 == segs.len();
            let flags = if s.writable { VIRTQ_DESC_F_WRITE } else { 0 }
                | if last { 0 } else { VIRTQ_DESC_F_NEXT };
            Descriptor::new(s.addr.raw(), s.len, flags, if last { 0 } else { idx + 1 })
                .write_to(&mem, layout.desc(idx))
                .unwrap();
        }
    }
    for slot in 0..QUEUE {
        mem.write_u16(layout.avail_entry(slot), (slot % chains) * nseg)
            .unwrap();
    }
    (mem, layout, chains)
}

/// A vm-memory view of the same mapping.
fn vm_view(mem: &GuestMemory) -> GuestMemoryMmap {
    let ptr = mem.host_ptr(GuestAddress(0), mem.size()).unwrap();
    // SAFETY: exactly our live private anonymous mapping; the view does not own it and is
    // dropped (end of the bench function) before the `Arc<GuestMemory>` held alongside it.
    let region = unsafe {
        MmapRegion::<()>::build_raw(
            ptr,
            mem.size() as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        )
    }
    .unwrap();
    let region = GuestRegionMmap::new(region, vm_memory::GuestAddress(0)).unwrap();
    GuestMemoryMmap::from_regions(vec![region]).unwrap()
}

/// Makes the same `chains` chains available again: the replayed ring is never refilled.
fn republish(mem: &GuestMemory, layout: &QueueLayout, avail: &mut u16, chains: u16) {
    *avail = avail.wrapping_add(chains);
    mem.store_u16(layout.avail_idx(), *avail, Ordering::Release)
        .unwrap();
}

fn device_side(c: &mut Criterion) {
    let mut g = c.benchmark_group("virtq_device_side");
    for nseg in [1u16, 4] {
        // Ours.
        let (mem, layout, chains) = replay_rings(nseg);
        g.throughput(Throughput::Elements(u64::from(chains)));
        let mut dev = DeviceQueue::new(Arc::clone(&mem), layout, v1()).unwrap();
        let mut chain = DescriptorChain::new();
        let mut avail = 0u16;
        g.bench_function(format!("vballoon_{nseg}seg"), |b| {
            b.iter(|| {
                republish(&mem, &layout, &mut avail, chains);
                let mut acc = 0;
                for _ in 0..chains {
                    dev.pop_into(&mut chain).unwrap();
                    for s in chain.segments() {
                        acc = visit(acc, s.addr.raw(), s.len, s.writable);
                    }
                    dev.add_used(chain.head(), 0).unwrap();
                }
                black_box(acc)
            })
        });

        // Theirs, on an identical ring in its own mapping.
        let (mem, layout, chains) = replay_rings(nseg);
        let vm = vm_view(&mem);
        let mut q = their_queue(&layout, false);
        let mut avail = 0u16;
        g.bench_function(format!("virtio_queue_{nseg}seg"), |b| {
            b.iter(|| {
                republish(&mem, &layout, &mut avail, chains);
                let mut acc = 0;
                for _ in 0..chains {
                    let ch = q.pop_descriptor_chain(&vm).unwrap();
                    let head = ch.head_index();
                    for d in ch {
                        acc = visit(acc, d.addr().0, d.len(), d.is_write_only());
                    }
                    q.add_used(&vm, head, 0).unwrap();
                }
                black_box(acc)
            })
        });
        drop(vm);
    }
    g.finish();
}

criterion_group!(benches, one_thread, two_threads, device_side);
criterion_main!(benches);
