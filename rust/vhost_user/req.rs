//! The vhost crate's request-handler trait over [`Handler`]: the crate parses each message and
//! passes fds; [`Handler`] checks the fields. Errors are logged with their typed cause and the
//! frontend gets a NACK (REPLY_ACK) or, where the crate cannot go on, the connection drops.

use std::fs::File;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{GpuBackend, Result, VhostUserBackendReqHandlerMut};
use vhost::VhostUserMemoryRegionBase;

use super::error::{to_vhost, VhostUserError};
use super::handler::{protocol_features, Handler};

impl Handler {
    fn done<T>(&mut self, r: std::result::Result<T, VhostUserError>) -> Result<T> {
        r.map_err(|e| {
            let v = to_vhost(&e);
            self.shared.log(&e);
            v
        })
    }

    fn unsupported<T>(&mut self, op: &'static str) -> Result<T> {
        self.done(Err(VhostUserError::BadMessage {
            op,
            reason: "not supported by this backend".into(),
        }))
    }
}

/// Trait methods that pass all their arguments to the [`Handler`] method of the same name and
/// log its error (`done`).
macro_rules! forward_to_handler {
    ($(fn $name:ident(&mut self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)+) => {
        $(
            fn $name(&mut self $(, $arg: $ty)*) -> Result<$ret> {
                let r = Handler::$name(self $(, $arg)*);
                self.done(r)
            }
        )+
    };
}

impl VhostUserBackendReqHandlerMut for Handler {
    forward_to_handler! {
        fn set_features(&mut self, features: u64) -> ();
        fn set_vring_num(&mut self, index: u32, num: u32) -> ();
        fn set_vring_base(&mut self, index: u32, base: u32) -> ();
        fn get_vring_base(&mut self, index: u32) -> VhostUserVringState;
        fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> ();
        fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> ();
        fn set_vring_enable(&mut self, index: u32, enable: bool) -> ();
        fn set_config(&mut self, offset: u32, buf: &[u8], flags: VhostUserConfigFlags) -> ();
    }

    fn set_owner(&mut self) -> Result<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> Result<()> {
        self.reset_device();
        self.acked = None;
        Ok(())
    }

    fn reset_device(&mut self) -> Result<()> {
        Handler::reset_device(self);
        Ok(())
    }

    fn get_features(&mut self) -> Result<u64> {
        Ok(self.offer.virtio_features())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> Result<Option<Vec<VhostUserMemoryRegionBase>>> {
        let r = Handler::set_mem_table(self, ctx, files);
        self.done(r).map(|()| None)
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> Result<()> {
        let r = Handler::set_vring_addr(self, index, flags, descriptor, used, available);
        self.done(r)
    }

    fn set_vring_err(&mut self, _index: u8, _fd: Option<File>) -> Result<()> {
        // Error fds are optional (spec): the device reports broken rings in its log instead.
        Ok(())
    }

    fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures> {
        Ok(protocol_features())
    }

    fn set_protocol_features(&mut self, features: u64) -> Result<()> {
        let offered = protocol_features().bits();
        if features & !offered != 0 {
            return self.done(Err(VhostUserError::BadMessage {
                op: "SET_PROTOCOL_FEATURES",
                reason: format!("{features:#x} has bits not offered ({offered:#x})"),
            }));
        }
        self.protocol = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> Result<u64> {
        Ok(u64::from(super::handler::MAX_QUEUES))
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> Result<Vec<u8>> {
        let r = Handler::get_config(self, offset, size);
        self.done(r)
    }

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> Result<()> {
        self.unsupported("SET_GPU_SOCKET")
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> Result<File> {
        self.unsupported("GET_SHARED_OBJECT")
    }

    fn get_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
    ) -> Result<(VhostUserInflight, File)> {
        self.unsupported("GET_INFLIGHT_FD")
    }

    fn set_inflight_fd(&mut self, _inflight: &VhostUserInflight, _file: File) -> Result<()> {
        self.unsupported("SET_INFLIGHT_FD")
    }

    fn get_max_mem_slots(&mut self) -> Result<u64> {
        Ok(super::memory::MAX_REGIONS as u64)
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy_listening: Option<bool>,
    ) -> Result<Option<VhostUserMemoryRegionBase>> {
        self.unsupported("ADD_MEM_REG")
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> Result<()> {
        self.unsupported("REM_MEM_REG")
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> Result<Option<File>> {
        self.unsupported("SET_DEVICE_STATE_FD")
    }

    fn check_device_state(&mut self) -> Result<()> {
        self.unsupported("CHECK_DEVICE_STATE")
    }

    fn get_shmem_config(&mut self) -> Result<VhostUserShMemConfig> {
        self.unsupported("GET_SHMEM_CONFIG")
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> Result<()> {
        self.unsupported("SET_LOG_BASE")
    }
}
