//! The accessors both ends of a split virtqueue share: the same fields (`mem`, `layout`,
//! `features`, `kick`, `interrupt`) in [`DriverQueue`](super::DriverQueue) and
//! [`DeviceQueue`](super::DeviceQueue), so one definition for both.

/// Expands to the shared accessor methods inside an `impl` of a queue end.
macro_rules! queue_end_accessors {
    () => {
        /// Sets the notifier the driver kicks (`kick`, when it adds buffers) and the one the
        /// device signals (`interrupt`, when it used buffers).
        pub fn set_notifiers(&mut self, kick: Notifier, interrupt: Notifier) {
            self.kick = kick;
            self.interrupt = interrupt;
        }

        /// The notifier the driver signals when it adds buffers.
        pub fn kick_notifier(&self) -> &Notifier {
            &self.kick
        }

        /// The notifier the device signals when it used buffers.
        pub fn interrupt_notifier(&self) -> &Notifier {
            &self.interrupt
        }

        /// Guest memory the queue lives in.
        pub fn mem(&self) -> &Arc<GuestMemory> {
            &self.mem
        }

        /// Where the rings are.
        pub fn layout(&self) -> &QueueLayout {
            &self.layout
        }

        /// Queue size.
        pub fn size(&self) -> u16 {
            self.layout.size()
        }

        /// The negotiated features.
        pub fn features(&self) -> u64 {
            self.features
        }
    };
}

pub(super) use queue_end_accessors;
