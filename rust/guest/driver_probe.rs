//! The balloon driver's start-up (virtio 1.2 §3.1.1): negotiate, place the rings and buffers, set DRIVER_OK.

use super::*;

impl BalloonDriver {
    /// Finds and initialises the balloon behind `transport` for `guest` (§3.1.1).
    pub fn probe(
        transport: Arc<Transport>,
        guest: &mut Guest,
        opts: DriverOptions,
    ) -> Result<BalloonDriver, DriverError> {
        let t = &transport;
        if t.device_id() != VIRTIO_ID_BALLOON {
            return Err(DriverError::WrongDevice { id: t.device_id() });
        }
        t.set_status(0)?;
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
        t.set_status(VIRTIO_CONFIG_S_ACKNOWLEDGE)?;
        t.set_status(s)?;
        let mut accept =
            t.device_features() & DriverOptions::supported_features(opts.abi) & opts.feature_mask;
        if opts.abi == AbiMode::V3 && accept & bit(VIRTIO_BALLOON_F_STATS_VQ) == 0 {
            // The v3 rule: the misc queue must be vq 3, so without the stats queue neither
            // seed feature is used.
            accept &= !(bit(opts.abi.page_bitmap_bit()) | bit(opts.abi.misc_vq_bit()));
        }
        if accept & bit(VIRTIO_BALLOON_F_STATS_VQ) == 0 {
            // The misc queue sits after the stats queue in both numberings (driver_hints.rs).
            accept &= !bit(VBALLOON_F_MISC_VQ);
        }
        t.set_driver_features(accept)?;
        if t.set_status(s | VIRTIO_CONFIG_S_FEATURES_OK)? & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            t.set_status(s | VIRTIO_CONFIG_S_FAILED)?;
            return Err(DriverError::FeaturesRefused { features: accept });
        }
        let features = BalloonFeatures::new(accept, opts.abi);
        let encoding = encoding_for(features);
        let indexes = features.queues();
        let size = opts.queue_size.min(t.queue_max_size());
        let need = match encoding {
            Encoding::Bitmap | Encoding::Auto => MIN_QUEUE_SIZE_SG,
            _ => 1,
        };
        if size < need {
            return Err(DriverError::QueueTooSmall {
                max: t.queue_max_size(),
                need,
            });
        }
        let area = BufferArea::reserve(guest, indexes.count, size)?;
        let mem = Arc::clone(guest.memory());
        let mut queues = Vec::with_capacity(usize::from(indexes.count));
        for (i, layout) in area.rings.iter().enumerate() {
            let index = i as u16;
            let mut q = DriverQueue::new(Arc::clone(&mem), *layout, accept)?;
            q.set_notifiers(t.kick_notifier(index)?, t.interrupt_notifier(index)?);
            t.set_queue(index, *layout)?;
            t.set_queue_ready(index, true)?;
            queues.push(q);
        }
        guest.mark_dirty(area.pfn, area.pages);
        t.set_status(s | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK)?;
        let mut d = BalloonDriver {
            transport,
            mem,
            opts,
            features,
            encoding,
            indexes,
            queues,
            area,
            ballooned: Vec::new(),
            balloon_pages: 0,
            batch: None,
            stats_in_flight: None,
            counters: DriverCounters::default(),
            runs: Vec::new(),
            segs: Vec::new(),
            hints: hints::HintDriver::default(),
        };
        d.write_actual()?;
        if d.indexes.stats.is_some() {
            d.send_stats(guest)?;
        }
        d.setup_hints(guest)?;
        Ok(d)
    }
}
