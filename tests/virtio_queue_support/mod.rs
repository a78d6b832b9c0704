//! The rust-vmm `virtio-queue` device side set up over one of our ring layouts: the reference
//! the interop tests and the ring bench compare us against.

use vballoon::memory::GuestAddress;
use vballoon::virtq::QueueLayout;
use virtio_queue::{Queue, QueueT};

/// Our guest address as vm-memory's.
pub fn vm(a: GuestAddress) -> vm_memory::GuestAddress {
    vm_memory::GuestAddress(a.raw())
}

/// Their device-side queue over `layout`, ready, with EVENT_IDX as negotiated.
pub fn their_queue(layout: &QueueLayout, event_idx: bool) -> Queue {
    let mut q = Queue::new(layout.size()).unwrap();
    q.set_size(layout.size());
    q.try_set_desc_table_address(vm(layout.desc_table()))
        .unwrap();
    q.try_set_avail_ring_address(vm(layout.avail_ring()))
        .unwrap();
    q.try_set_used_ring_address(vm(layout.used_ring())).unwrap();
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q
}
