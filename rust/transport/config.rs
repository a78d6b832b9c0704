//! The device-specific config space: 16 bytes of le32 fields (the balloon's config is
//! little-endian even for legacy devices, virtio 1.2 §5.5.4) and a generation counter (§2.5.1).

use std::sync::atomic::{AtomicU32, Ordering};

use super::error::TransportError;

/// Bytes of config space: the balloon's four le32 fields.
pub const CONFIG_SPACE_SIZE: usize = 16;
const WORDS: usize = CONFIG_SPACE_SIZE / 4;

/// The config space both sides read and write atomically.
///
/// Device writes are bracketed by two generation bumps (a seqlock), so a driver that reads
/// several fields with [`ConfigSpace::read_consistent`] never mixes two device updates, the
/// guarantee §2.5.1's `config_generation` gives.
#[derive(Debug, Default)]
pub struct ConfigSpace {
    words: [AtomicU32; WORDS],
    generation: AtomicU32,
}

impl ConfigSpace {
    /// All fields zero, generation 0.
    pub fn new() -> ConfigSpace {
        ConfigSpace::default()
    }

    fn word(&self, offset: usize) -> Result<&AtomicU32, TransportError> {
        if offset % 4 != 0 || offset + 4 > CONFIG_SPACE_SIZE {
            return Err(TransportError::ConfigOffset { offset });
        }
        Ok(&self.words[offset / 4])
    }

    /// The le32 field at `offset` (a multiple of 4 below 16).
    pub fn read_u32(&self, offset: usize) -> Result<u32, TransportError> {
        Ok(self.word(offset)?.load(Ordering::Acquire))
    }

    /// Stores the le32 field at `offset` without touching the generation (driver writes).
    pub fn write_u32(&self, offset: usize, value: u32) -> Result<(), TransportError> {
        self.word(offset)?.store(value, Ordering::Release);
        Ok(())
    }

    /// Stores the field and bumps the generation around it (device writes).
    pub fn write_u32_generation(&self, offset: usize, value: u32) -> Result<(), TransportError> {
        let w = self.word(offset)?;
        self.generation.fetch_add(1, Ordering::AcqRel);
        w.store(value, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// `config_generation`: changes whenever the device changed a field.
    pub fn generation(&self) -> u32 {
        self.generation.load(Ordering::Acquire)
    }

    /// Copies `buf.len()` bytes from `offset`, as byte-wide register reads would.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), TransportError> {
        if offset
            .checked_add(buf.len())
            .is_none_or(|e| e > CONFIG_SPACE_SIZE)
        {
            return Err(TransportError::ConfigOffset { offset });
        }
        for (i, b) in buf.iter_mut().enumerate() {
            let at = offset + i;
            let w = self.words[at / 4].load(Ordering::Acquire);
            *b = w.to_le_bytes()[at % 4];
        }
        Ok(())
    }

    /// Runs `f` until it ran without a device write in between (§2.5.1's read loop).
    pub fn read_consistent<T>(&self, mut f: impl FnMut(&ConfigSpace) -> T) -> T {
        loop {
            let before = self.generation();
            if before % 2 == 0 {
                let v = f(self);
                if self.generation() == before {
                    return v;
                }
            }
            std::hint::spin_loop();
        }
    }
}
