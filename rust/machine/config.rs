//! How a balloon machine is built.

use std::str::FromStr;

use crate::abi::AbiMode;
use crate::abi::DEFAULT_QUEUE_SIZE;
use crate::device::{DiscardPolicy, HugePartial};
use crate::error::{Error, Result};
use crate::memory::{Backing, PAGE_SIZE};
use crate::pages::Encoding;
use crate::util::named_enum;

/// Who runs the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RunMode {
    /// The caller's thread runs driver and device in turn; kicks and interrupts are polling
    /// counters. Deterministic: for tests and scripts.
    #[default]
    Synchronous,
    /// The device runs on its own thread, woken by eventfd kicks (a VMM's I/O thread); the
    /// driver runs on the caller's thread and waits for interrupts with timeouts.
    Threaded,
}

named_enum!(RunMode {
    Synchronous => "sync" | "synchronous" | "inline",
    Threaded => "threaded" | "thread" | "threads",
});

impl FromStr for RunMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<RunMode> {
        RunMode::parse(s).ok_or_else(|| {
            Error::Config(format!(
                "unknown run mode {s:?} (expected sync or threaded)"
            ))
        })
    }
}

/// Parses an ABI mode name: "vballoon" or "v3".
pub fn parse_abi(s: &str) -> Result<AbiMode> {
    match s.trim().to_ascii_lowercase().as_str() {
        "vballoon" | "upstream" | "default" => Ok(AbiMode::Vballoon),
        "v3" | "seed" => Ok(AbiMode::V3),
        _ => Err(Error::Config(format!(
            "unknown ABI mode {s:?} (expected vballoon or v3)"
        ))),
    }
}

/// Everything a [`Session`](super::Session) is built from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MachineConfig {
    /// Guest RAM in bytes (a multiple of 4 KiB).
    pub guest_bytes: u64,
    /// How guest RAM is backed on the host.
    pub backing: Backing,
    /// The inflate/deflate encoding the device offers (and so the one in use).
    pub encoding: Encoding,
    /// Feature numbering: vballoon (upstream bits + seed bits at 16..) or the v3 patch's.
    pub abi: AbiMode,
    /// How the device gives inflated pages back.
    pub discard: DiscardPolicy,
    /// Queue size.
    pub queue_size: u16,
    /// Who runs the device.
    pub mode: RunMode,
    /// Offer MUST_TELL_HOST.
    pub must_tell_host: bool,
    /// Offer DEFLATE_ON_OOM.
    pub deflate_on_oom: bool,
    /// Offer STATS_VQ.
    pub stats: bool,
    /// Order of the blocks the driver takes for the balloon (0 as Linux).
    pub alloc_order: u8,
    /// Fault deflated pages back in at once on the host.
    pub populate_on_deflate: bool,
    /// Features the driver may accept (`u64::MAX`: all it supports).
    pub driver_feature_mask: u64,
    /// On THP RAM: discard partly ballooned huge pages now or once full.
    pub huge_partial: HugePartial,
}

impl Default for MachineConfig {
    fn default() -> Self {
        MachineConfig {
            guest_bytes: 256 << 20,
            backing: Backing::Anonymous,
            encoding: Encoding::Bitmap,
            abi: AbiMode::Vballoon,
            discard: DiscardPolicy::Coalesced,
            queue_size: DEFAULT_QUEUE_SIZE,
            mode: RunMode::Synchronous,
            must_tell_host: true,
            deflate_on_oom: false,
            stats: true,
            alloc_order: 0,
            populate_on_deflate: false,
            driver_feature_mask: u64::MAX,
            huge_partial: HugePartial::default(),
        }
    }
}

impl MachineConfig {
    /// Guest pages.
    pub fn guest_pages(&self) -> u64 {
        self.guest_bytes / PAGE_SIZE
    }

    /// Checks the values a caller could get wrong.
    pub fn validate(&self) -> Result<()> {
        if self.guest_bytes == 0 || self.guest_bytes % PAGE_SIZE != 0 {
            return Err(Error::Config(format!(
                "guest size {} is not a positive multiple of 4 KiB",
                self.guest_bytes
            )));
        }
        if self.guest_pages() > u64::from(u32::MAX) {
            return Err(Error::Config(
                "guest larger than 16 TiB: num_pages is a 32-bit field".into(),
            ));
        }
        if !self.queue_size.is_power_of_two() {
            return Err(Error::Config(format!(
                "queue size {} is not a power of two",
                self.queue_size
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_names_parse() {
        assert_eq!("sync".parse::<RunMode>().unwrap(), RunMode::Synchronous);
        assert_eq!(" Threaded ".parse::<RunMode>().unwrap(), RunMode::Threaded);
        assert!("both".parse::<RunMode>().is_err());
        assert_eq!(parse_abi("v3").unwrap(), AbiMode::V3);
        assert_eq!(parse_abi("VBALLOON").unwrap(), AbiMode::Vballoon);
        assert!(parse_abi("v6").is_err());
    }

    #[test]
    fn test_validate_rejects_bad_sizes() {
        let ok = MachineConfig::default();
        ok.validate().unwrap();
        for bad in [
            MachineConfig {
                guest_bytes: 4097,
                ..ok
            },
            MachineConfig {
                guest_bytes: 0,
                ..ok
            },
            MachineConfig {
                queue_size: 100,
                ..ok
            },
            MachineConfig {
                guest_bytes: 1 << 45,
                ..ok
            },
        ] {
            assert!(matches!(bad.validate(), Err(Error::Config(_))), "{bad:?}");
        }
    }
}
