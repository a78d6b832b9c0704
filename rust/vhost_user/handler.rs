//! The vhost-user message handler: one frontend's negotiation, memory and vrings, and the
//! balloon device it drives through [`VirtioDevice`], the interface every transport uses.
//!
//! vhost-user has no status register (we do not offer the STATUS protocol feature), so the
//! device's life follows the vrings (vhost-user spec, "Starting and stopping rings"): once
//! every queue the negotiated features make present has a size, addresses and a kick fd and
//! is enabled, the handler activates a fresh device with the acked features and the rings
//! (translated from the frontend's addresses). New features, a ring reconfigured, or a ring
//! disabled while the device runs (what virtio_uml does when the driver module is unloaded)
//! reset it; the next negotiation builds a new device instance.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserMemoryRegion, VhostUserProtocolFeatures,
    VhostUserVirtioFeatures, VhostUserVringAddrFlags, VhostUserVringState,
};

use super::error::VhostUserError;
use super::memory::FrontendMemory;
use super::shared::{Shared, Totals};
use crate::abi::{AbiMode, BalloonFeatures, CONFIG_ACTUAL, CONFIG_NUM_PAGES, CONFIG_POISON_VAL};
use crate::device::{BalloonDevice, DeviceConfig, HintEvent};
use crate::memory::GuestAddress;
use crate::memory::{Pfn, PAGE_SIZE};
use crate::transport::{Activation, QueueActivation, VirtioDevice, CONFIG_SPACE_SIZE};
use crate::virtq::{check_queue_size, Notifier, QueueLayout};

/// Largest config read we answer (the balloon's 16 bytes, zero-filled after).
const MAX_CONFIG_READ: u32 = 256;

/// One vring as the frontend set it up.
#[derive(Debug, Default)]
pub(crate) struct Vring {
    pub(crate) num: u16,
    /// Descriptor table, available ring, used ring: guest-physical, translated.
    pub(crate) addr: Option<[u64; 3]>,
    pub(crate) kick: Option<File>,
    pub(crate) call: Option<File>,
    pub(crate) enabled: bool,
    /// What the device signals for used buffers, while it runs on this ring.
    pub(crate) interrupt: Option<Notifier>,
}

/// What the backend offers one frontend.
#[derive(Clone, Copy, Debug)]
pub struct Offer {
    /// The device's configuration (features, queue size, discard policy).
    pub cfg: DeviceConfig,
}

impl Offer {
    /// Virtio feature bits offered, with VHOST_USER_F_PROTOCOL_FEATURES (bit 30).
    pub fn virtio_features(&self) -> u64 {
        self.cfg.device_features() | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    /// Queues the offer can make present.
    pub fn num_queues(&self) -> u16 {
        BalloonFeatures::new(self.virtio_features(), AbiMode::Vballoon)
            .queues()
            .count
    }
}

/// Vring slots a frontend may set up, whatever the offer: Linux's driver asks virtio_uml for
/// all 5 of its queues (absent ones unnamed), and virtio_uml refuses more than GET_QUEUE_NUM;
/// one more for the seed's misc queue.
pub const MAX_QUEUES: u16 = 6;

/// Protocol features offered: CONFIG, BACKEND_REQ, REPLY_ACK, MQ (for GET_QUEUE_NUM).
/// Not INBAND_NOTIFICATIONS: kicks and calls go over eventfds only.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::MQ
}

/// One frontend's state.
#[derive(Debug)]
pub struct Handler {
    pub(crate) shared: Arc<Shared>,
    pub(crate) offer: Offer,
    pub(crate) acked: Option<u64>,
    pub(crate) protocol: u64,
    pub(crate) mem: Option<FrontendMemory>,
    pub(crate) vrings: Vec<Vring>,
    pub(crate) device: Option<BalloonDevice>,
    pub(crate) active: bool,
    /// Pages the hint sink discarded on the current device.
    pub(crate) hint_discarded: Arc<AtomicU64>,
    /// Reported pages the current device kept (the guest poisons free pages).
    pub(crate) reported_kept: Arc<AtomicU64>,
}

impl Handler {
    /// A handler for a new connection.
    pub fn new(shared: Arc<Shared>, offer: Offer) -> Handler {
        let n = usize::from(MAX_QUEUES);
        Handler {
            shared,
            offer,
            acked: None,
            protocol: 0,
            mem: None,
            vrings: (0..n).map(|_| Vring::default()).collect(),
            device: None,
            active: false,
            hint_discarded: Arc::new(AtomicU64::new(0)),
            reported_kept: Arc::new(AtomicU64::new(0)),
        }
    }

    fn vring(&mut self, index: u32) -> Result<&mut Vring, VhostUserError> {
        let count = MAX_QUEUES;
        self.vrings
            .get_mut(usize::try_from(index).unwrap_or(usize::MAX))
            .ok_or(VhostUserError::NoSuchQueue { index, count })
    }

    /// Counters of the current device instance.
    pub(crate) fn device_totals(&self) -> Totals {
        match &self.device {
            Some(d) => Totals::of(
                &d.counters(),
                &d.hint_counters(),
                self.hint_discarded.load(Ordering::Relaxed),
                self.reported_kept.load(Ordering::Relaxed),
            ),
            None => Totals::default(),
        }
    }

    /// Resets the device: the instance is retired and a fresh, inactive one takes its place, so
    /// config reads and writes keep working while the driver renegotiates.
    pub(crate) fn reset_device(&mut self) {
        self.retire_device();
        if self.mem.is_some() {
            if let Err(e) = self.ensure_device() {
                self.shared.log(format!("device reset: {e}"));
            }
        }
    }

    /// Drops the device instance (its counters go to the backend's totals) and stops serving.
    pub(crate) fn retire_device(&mut self) {
        if let Some(d) = &self.device {
            let t = self.device_totals();
            let mut r = super::shared::lock(&self.shared.retired);
            *r = r.plus(t);
            // The last sample outlives the device (and the frontend).
            let sample = super::named_stats(d);
            if !sample.is_empty() {
                *super::shared::lock(&self.shared.stats) = sample;
            }
        }
        self.device = None;
        self.active = false;
        self.hint_discarded = Arc::new(AtomicU64::new(0));
        self.reported_kept = Arc::new(AtomicU64::new(0));
    }

    /// A fresh device over the frontend's memory, config carried over (target, actual).
    fn ensure_device(&mut self) -> Result<(), VhostUserError> {
        if self.device.is_some() {
            return Ok(());
        }
        let mem = self
            .mem
            .as_ref()
            .ok_or(VhostUserError::NoMemory { op: "device" })?;
        let dev = BalloonDevice::new(Arc::clone(mem.guest()), self.offer.cfg)?;
        let t = self.shared.target.load(Ordering::Acquire);
        // Plain write, no config-change notice: the driver reads it when it binds.
        dev.transport().config().write_u32(CONFIG_NUM_PAGES, t)?;
        self.device = Some(dev);
        Ok(())
    }

    /// Activates the device once every present queue is started and enabled (see module docs).
    pub(crate) fn try_activate(&mut self) -> Result<bool, VhostUserError> {
        if self.active {
            return Ok(false);
        }
        let Some(acked) = self.acked else {
            return Ok(false);
        };
        let feats = BalloonFeatures::new(acked, AbiMode::Vballoon);
        let n = usize::from(feats.queues().count);
        if n > self.vrings.len()
            || !self.vrings[..n]
                .iter()
                .all(|v| v.addr.is_some() && v.num > 0 && v.kick.is_some() && v.enabled)
        {
            return Ok(false);
        }
        self.ensure_device()?;
        let Some(dev) = self.device.as_mut() else {
            return Ok(false);
        };
        // The frontend's negotiation, handed to the device as any transport hands it over:
        // the acked features and each ring, with an eventfd for the device's interrupts that the
        // connection forwards to the frontend's call fd (`conn.rs`).
        let mut queues = Vec::with_capacity(n);
        for (i, v) in (0u16..).zip(&mut self.vrings[..n]) {
            let [d, a, u] = v.addr.unwrap_or_default();
            let layout = QueueLayout::new(v.num, GuestAddress(d), GuestAddress(a), GuestAddress(u))
                .map_err(|e| VhostUserError::BadMessage {
                    op: "SET_VRING_ADDR",
                    reason: format!("queue {i}: {e}"),
                })?;
            let call = Notifier::eventfd()?;
            v.interrupt = Some(call.clone());
            queues.push(QueueActivation {
                layout,
                kick: Notifier::eventfd()?,
                call,
            });
        }
        let features = acked & !VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        VirtioDevice::activate(dev, Activation { features, queues })?;
        // Hinted blocks are free in the guest: give them back to the host (as Firecracker).
        let mem = Arc::clone(dev.memory());
        let discarded = Arc::clone(&self.hint_discarded);
        dev.set_hint_sink(Some(Arc::new(move |ev| {
            if let HintEvent::Pages { pfn, npages, .. } = ev {
                if mem.discard(Pfn(pfn).addr(), npages * PAGE_SIZE).is_ok() {
                    discarded.fetch_add(npages, Ordering::Relaxed);
                }
            }
        })));
        self.active = true;
        Ok(true)
    }

    /// A change to ring `index` while the device runs resets it (a renegotiation follows).
    fn ring_changed(&mut self, index: u32) {
        if self.active && index < u32::from(self.running_queues()) {
            self.reset_device();
        }
    }

    pub(crate) fn running_queues(&self) -> u16 {
        match (&self.device, self.active) {
            (Some(d), true) => d.num_queues(),
            _ => 0,
        }
    }

    fn translate(
        &self,
        index: u32,
        part: &'static str,
        addr: u64,
        len: u64,
    ) -> Result<u64, VhostUserError> {
        let mem = self.mem.as_ref().ok_or(VhostUserError::NoMemory {
            op: "SET_VRING_ADDR",
        })?;
        mem.translate(addr, len)
            .map(|g| g.0)
            .ok_or(VhostUserError::RingAddress {
                index,
                part,
                addr,
                len,
            })
    }

    // ---- message handlers (vhost-user spec, "Front-end message types") ----

    pub(crate) fn set_features(&mut self, features: u64) -> Result<(), VhostUserError> {
        let offered = self.offer.virtio_features();
        if features & !offered != 0 {
            return Err(VhostUserError::FeaturesNotOffered { features, offered });
        }
        if self.active {
            self.reset_device();
        }
        self.acked = Some(features);
        // A negotiation is followed by the rings' setup (virtio 1.2 §3.1.1; frontends send
        // SET_FEATURES before the rings): forget the old rings, so a renegotiation never runs on
        // rings the guest freed. virtio_uml sends no message when the driver is unbound; the
        // reload's SET_FEATURES is the first sign. Without PROTOCOL_FEATURES rings start
        // enabled (vhost-user spec, "Ring states"), and virtio_uml then never sends ENABLE.
        let enabled = features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() == 0;
        for v in &mut self.vrings {
            *v = Vring {
                enabled,
                ..Vring::default()
            };
        }
        Ok(())
    }

    pub(crate) fn set_mem_table(
        &mut self,
        table: &[VhostUserMemoryRegion],
        files: Vec<File>,
    ) -> Result<(), VhostUserError> {
        let mem = FrontendMemory::new(table, files)?;
        // The device holds the old mapping: rebuild it over the new one.
        self.retire_device();
        self.mem = Some(mem);
        self.ensure_device()?;
        Ok(())
    }

    pub(crate) fn set_vring_num(&mut self, index: u32, num: u32) -> Result<(), VhostUserError> {
        let max = self.offer.cfg.queue_max_size;
        let size = u16::try_from(num)
            .ok()
            .filter(|&n| n <= max && check_queue_size(n).is_ok())
            .ok_or(VhostUserError::QueueSize { index, num, max })?;
        self.ring_changed(index);
        self.vring(index)?.num = size;
        Ok(())
    }

    pub(crate) fn set_vring_addr(
        &mut self,
        index: u32,
        flags: VhostUserVringAddrFlags,
        desc: u64,
        used: u64,
        avail: u64,
    ) -> Result<(), VhostUserError> {
        if !flags.is_empty() {
            return Err(VhostUserError::BadMessage {
                op: "SET_VRING_ADDR",
                reason: format!("flags {:#x} (no logging offered)", flags.bits()),
            });
        }
        let n = u64::from(self.vring(index)?.num.max(1));
        let d = self.translate(index, "descriptor table", desc, 16 * n)?;
        let a = self.translate(index, "available ring", avail, 6 + 2 * n)?;
        let u = self.translate(index, "used ring", used, 6 + 8 * n)?;
        self.ring_changed(index);
        self.vring(index)?.addr = Some([d, a, u]);
        Ok(())
    }

    pub(crate) fn set_vring_base(&mut self, index: u32, base: u32) -> Result<(), VhostUserError> {
        self.vring(index)?;
        if base != 0 {
            return Err(VhostUserError::VringBase { index, base });
        }
        self.ring_changed(index);
        Ok(())
    }

    /// Stops ring `index` (the whole device: its queues cannot stop one by one) and returns
    /// the next available index, after serving what the driver already made available.
    pub(crate) fn get_vring_base(
        &mut self,
        index: u32,
    ) -> Result<VhostUserVringState, VhostUserError> {
        self.vring(index)?;
        let mut next = 0u16;
        let running = u16::try_from(index)
            .ok()
            .filter(|&i| self.active && i < self.running_queues());
        if let Some(i) = running {
            if let Some(dev) = self.device.as_mut() {
                let _ = dev.notify(i);
                if let Some([_, avail, _]) = self.vrings[usize::from(i)].addr {
                    // avail->idx is the ring's second le16 (§2.7.6).
                    next = dev.memory().read_u16(GuestAddress(avail + 2)).unwrap_or(0);
                }
            }
            self.reset_device();
        }
        let v = self.vring(index)?;
        v.kick = None;
        v.enabled = false;
        Ok(VhostUserVringState::new(index, u32::from(next)))
    }

    pub(crate) fn set_vring_kick(
        &mut self,
        index: u8,
        fd: Option<File>,
    ) -> Result<(), VhostUserError> {
        let index = u32::from(index);
        self.ring_changed(index);
        let fd = fd.map(nonblocking).transpose()?;
        self.vring(index)?.kick = fd;
        Ok(())
    }

    pub(crate) fn set_vring_call(
        &mut self,
        index: u8,
        fd: Option<File>,
    ) -> Result<(), VhostUserError> {
        let fd = fd.map(nonblocking).transpose()?;
        self.vring(u32::from(index))?.call = fd;
        Ok(())
    }

    pub(crate) fn set_vring_enable(
        &mut self,
        index: u32,
        enable: bool,
    ) -> Result<(), VhostUserError> {
        if !enable {
            self.ring_changed(index);
        }
        self.vring(index)?.enabled = enable;
        Ok(())
    }

    pub(crate) fn get_config(&self, offset: u32, size: u32) -> Result<Vec<u8>, VhostUserError> {
        let end = offset
            .checked_add(size)
            .filter(|&e| e <= MAX_CONFIG_READ)
            .ok_or(VhostUserError::Config {
                offset,
                len: size,
                reason: "past the config space",
            })?;
        let mut out = vec![0u8; size as usize];
        let (o, e) = (offset as usize, (end as usize).min(CONFIG_SPACE_SIZE));
        if o < e {
            match &self.device {
                Some(d) => d.read_config(o, &mut out[..e - o])?,
                None => {
                    let mut all = [0u8; CONFIG_SPACE_SIZE];
                    all[..4]
                        .copy_from_slice(&self.shared.target.load(Ordering::Acquire).to_le_bytes());
                    out[..e - o].copy_from_slice(&all[o..e]);
                }
            }
        }
        Ok(out)
    }

    pub(crate) fn set_config(
        &mut self,
        offset: u32,
        buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> Result<(), VhostUserError> {
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let err = |reason| VhostUserError::Config {
            offset,
            len,
            reason,
        };
        if offset % 4 != 0 || len % 4 != 0 || len == 0 {
            return Err(err("not whole 32-bit fields"));
        }
        if offset as usize + buf.len() > CONFIG_SPACE_SIZE {
            return Err(err("past the config space"));
        }
        let dev = self
            .device
            .as_mut()
            .ok_or(err("no device yet (SET_MEM_TABLE first)"))?;
        for at in (offset as usize..).step_by(4).take(buf.len() / 4) {
            if at != CONFIG_ACTUAL && at != CONFIG_POISON_VAL {
                return Err(err("read-only field"));
            }
        }
        dev.write_config(offset as usize, buf)?;
        Ok(())
    }
}

/// Kick and call fds are the frontend's: only eventfds, pipes and sockets are taken (virtio_uml
/// passes a socketpair as its call fd; a regular file would poll readable forever), made
/// non-blocking so a full one never blocks us.
fn nonblocking(f: File) -> Result<File, VhostUserError> {
    // SAFETY: a zeroed `stat` is a valid out-parameter for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `f` is an open descriptor and `st` a valid out-pointer.
    if unsafe { libc::fstat(f.as_raw_fd(), &mut st) } != 0 {
        return Err(VhostUserError::os("fstat(vring fd)"));
    }
    let link = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap_or_default();
    let is_eventfd = link.to_string_lossy() == "anon_inode:[eventfd]";
    let kind = st.st_mode & libc::S_IFMT;
    if kind != libc::S_IFIFO && kind != libc::S_IFSOCK && !is_eventfd {
        return Err(VhostUserError::BadMessage {
            op: "SET_VRING_KICK/CALL",
            reason: format!(
                "fd is {} (an eventfd, pipe or socket is needed)",
                link.display()
            ),
        });
    }
    // SAFETY: fcntl on a descriptor we own, with constant commands.
    let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(VhostUserError::os("fcntl(F_GETFL)"));
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(VhostUserError::os("fcntl(O_NONBLOCK)"));
    }
    Ok(f)
}
