//! Buffers through a queue pair as fast as the rings go: the first demo and a ring benchmark.

use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::memory::{GuestAddress, GuestMemory};
use crate::virtq::defs::{feature, VIRTIO_F_EVENT_IDX, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_VERSION_1};
use crate::virtq::{
    pair_with, DescriptorChain, DeviceQueue, DriverQueue, NotifyMode, PairConfig, Result, Segment,
    VirtqError,
};

/// What to pump.
#[derive(Clone, Copy, Debug)]
pub struct PumpConfig {
    /// Chains to send through the queue.
    pub buffers: u64,
    /// Segments per chain (the first half device-readable, the rest device-writable).
    pub segments: u16,
    /// Queue size.
    pub queue_size: u16,
    /// Device on its own thread, woken by eventfd kicks (else both ends on the caller's thread).
    pub threaded: bool,
    /// Negotiate VIRTIO_F_EVENT_IDX.
    pub event_idx: bool,
    /// Negotiate VIRTIO_F_INDIRECT_DESC (chains go through indirect tables).
    pub indirect: bool,
}

impl Default for PumpConfig {
    fn default() -> Self {
        PumpConfig {
            buffers: 1_000_000,
            segments: 1,
            queue_size: 256,
            threaded: false,
            event_idx: true,
            indirect: false,
        }
    }
}

/// What happened.
#[derive(Clone, Copy, Debug, Default)]
pub struct PumpResult {
    /// Chains that made the round trip.
    pub buffers: u64,
    /// Bytes the device read from readable segments.
    pub bytes_read: u64,
    /// Kicks the driver actually sent (after notification suppression).
    pub kicks: u64,
    /// Interrupts the device actually sent.
    pub interrupts: u64,
    /// Wall time.
    pub seconds: f64,
}

impl PumpResult {
    /// Round trips per second.
    pub fn buffers_per_second(&self) -> f64 {
        self.buffers as f64 / self.seconds.max(1e-9)
    }
}

const SEGMENT_BYTES: u32 = 64;

/// Sends `cfg.buffers` chains from a driver to a device over a fresh queue at guest address 0 of
/// `mem`, each segment a real 64-byte buffer in guest RAM that the device reads.
pub fn pump_buffers(mem: Arc<GuestMemory>, cfg: PumpConfig) -> Result<PumpResult> {
    let mut features = feature(VIRTIO_F_VERSION_1);
    if cfg.event_idx {
        features |= feature(VIRTIO_F_EVENT_IDX);
    }
    if cfg.indirect {
        features |= feature(VIRTIO_F_INDIRECT_DESC);
    }
    let mut pc = PairConfig::new(GuestAddress(0), cfg.queue_size, features);
    pc.notify = if cfg.threaded {
        NotifyMode::EventFd
    } else {
        NotifyMode::Polling
    };
    let buf_base = pc.footprint().next_multiple_of(4096);
    let segs: Vec<Segment> = (0..u64::from(cfg.segments.max(1)))
        .map(|i| Segment {
            addr: GuestAddress(buf_base + i * u64::from(SEGMENT_BYTES)),
            len: SEGMENT_BYTES,
            writable: cfg.segments > 1 && i >= u64::from(cfg.segments) / 2,
        })
        .collect();
    let end = buf_base + segs.len() as u64 * u64::from(SEGMENT_BYTES);
    if end > mem.size() {
        return Err(VirtqError::RingOutsideMemory {
            part: "pump buffers",
            addr: buf_base,
            len: end,
        });
    }
    let (mut drv, mut dev) = pair_with(mem, &pc)?;
    let start = Instant::now();
    let mut result = if cfg.threaded {
        pump_threaded(&mut drv, dev, &segs, cfg.buffers)?
    } else {
        pump_inline(&mut drv, &mut dev, &segs, cfg.buffers)?
    };
    result.seconds = start.elapsed().as_secs_f64();
    Ok(result)
}

/// Device work per chain: read what the guest wrote, acknowledge it.
fn serve(dev: &mut DeviceQueue, chain: &mut DescriptorChain, scratch: &mut Vec<u8>) -> Result<u64> {
    let mut served = 0;
    while dev.pop_into(chain)? {
        scratch.clear();
        chain.read_into(dev.mem(), scratch)?;
        dev.add_used(chain.head(), 0)?;
        served += scratch.len() as u64;
    }
    Ok(served)
}

/// Adds chains while the ring has room, up to `buffers` in all, then kicks; true if the device
/// was notified.
fn post(drv: &mut DriverQueue, segs: &[Segment], sent: &mut u64, buffers: u64) -> Result<bool> {
    while *sent < buffers && drv.num_free() >= segs.len() as u16 {
        drv.add(segs)?;
        *sent += 1;
    }
    drv.kick()
}

fn pump_inline(
    drv: &mut DriverQueue,
    dev: &mut DeviceQueue,
    segs: &[Segment],
    buffers: u64,
) -> Result<PumpResult> {
    let mut r = PumpResult::default();
    let (mut chain, mut scratch) = (DescriptorChain::new(), Vec::new());
    let mut sent = 0;
    while r.buffers < buffers {
        if post(drv, segs, &mut sent, buffers)? {
            r.kicks += 1;
            dev.kick_notifier().take()?;
        }
        r.bytes_read += serve(dev, &mut chain, &mut scratch)?;
        if dev.signal_used()? {
            r.interrupts += 1;
            drv.interrupt_notifier().take()?;
        }
        while drv.pop_used()?.is_some() {
            r.buffers += 1;
        }
    }
    Ok(r)
}

fn pump_threaded(
    drv: &mut DriverQueue,
    mut dev: DeviceQueue,
    segs: &[Segment],
    buffers: u64,
) -> Result<PumpResult> {
    let per_chain = segs.iter().filter(|s| !s.writable).count() as u64 * u64::from(SEGMENT_BYTES);
    // The device thread stops by itself once it has served every buffer.
    let device = thread::spawn(move || -> Result<(u64, u64)> {
        let (mut chain, mut scratch) = (DescriptorChain::new(), Vec::new());
        let (mut bytes, mut interrupts) = (0u64, 0u64);
        while bytes < buffers * per_chain {
            dev.disable_notifications()?;
            bytes += serve(&mut dev, &mut chain, &mut scratch)?;
            if dev.signal_used()? {
                interrupts += 1;
            }
            // Re-enabling closes the race with a driver that published while we were busy.
            if !dev.enable_notifications()? && bytes < buffers * per_chain {
                dev.wait_kick(Some(Duration::from_millis(100)))?;
            }
        }
        Ok((bytes, interrupts))
    });
    let mut r = PumpResult::default();
    let mut sent = 0;
    drv.disable_interrupts()?;
    while r.buffers < buffers {
        if post(drv, segs, &mut sent, buffers)? {
            r.kicks += 1;
        }
        let before = r.buffers;
        while drv.pop_used()?.is_some() {
            r.buffers += 1;
        }
        if r.buffers == before && r.buffers < buffers {
            if !drv.enable_interrupts()? {
                drv.wait_interrupt(Some(Duration::from_millis(100)))?;
            }
            drv.disable_interrupts()?;
        }
    }
    let (bytes, interrupts) = device.join().map_err(|_| VirtqError::EventFd {
        op: "join (device thread panicked)",
        source: std::io::Error::other("panic"),
    })??;
    r.bytes_read = bytes;
    r.interrupts = interrupts;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::Backing;

    #[test]
    fn test_pump_inline_and_threaded_move_every_buffer() {
        let mem = Arc::new(GuestMemory::new(1 << 20, Backing::Anonymous).unwrap());
        for threaded in [false, true] {
            for segments in [1, 4] {
                let cfg = PumpConfig {
                    buffers: 10_000,
                    segments,
                    threaded,
                    ..Default::default()
                };
                let r = pump_buffers(Arc::clone(&mem), cfg).unwrap();
                assert_eq!(r.buffers, 10_000);
                let readable = u64::from(segments.div_ceil(2).max(1));
                let readable = if segments > 1 {
                    u64::from(segments / 2)
                } else {
                    readable
                };
                assert_eq!(r.bytes_read, 10_000 * readable * 64);
                assert!(r.kicks > 0 && r.kicks < 10_000, "{r:?}");
            }
        }
    }
}
