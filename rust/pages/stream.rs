//! Reading a message as one byte stream, whatever its split into segments.
//!
//! Virtio spec §2.6.4 (message framing): a device must not assume a particular arrangement of
//! descriptors, so every decoder reads the concatenation of the segments, and a field may
//! straddle two of them.

use super::PagesError;

/// A read cursor over the concatenation of `segments`.
pub(crate) struct Stream<'a, S> {
    segs: &'a [S],
    /// Segment being read.
    seg: usize,
    /// Offset in that segment.
    off: usize,
    /// Bytes not yet read (saturating: any total past `usize::MAX` is too long anyway).
    remaining: usize,
    /// Bytes read so far.
    pos: usize,
}

// Manual: a cursor copies its indices and shares the segments, whatever `S` is.
impl<S> Clone for Stream<'_, S> {
    fn clone(&self) -> Self {
        Stream { ..*self }
    }
}

impl<'a, S: AsRef<[u8]>> Stream<'a, S> {
    /// A cursor at the start of `segs`.
    pub(crate) fn new(segs: &'a [S]) -> Stream<'a, S> {
        let remaining = segs
            .iter()
            .fold(0usize, |n, s| n.saturating_add(s.as_ref().len()));
        Stream {
            segs,
            seg: 0,
            off: 0,
            remaining,
            pos: 0,
        }
    }

    /// Bytes left to read.
    pub(crate) fn remaining(&self) -> usize {
        self.remaining
    }

    /// Bytes read so far.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// A message's `N`-byte header, or `truncated(bytes left, N)` if fewer are left.
    #[inline]
    pub(crate) fn read_header<const N: usize>(
        &mut self,
        truncated: impl FnOnce(usize, usize) -> PagesError,
    ) -> Result<[u8; N], PagesError> {
        let len = self.remaining;
        self.read::<N>().ok_or_else(|| truncated(len, N))
    }

    /// The next `N` bytes, or `None` (consuming nothing) if fewer are left.
    #[inline]
    pub(crate) fn read<const N: usize>(&mut self) -> Option<[u8; N]> {
        if self.remaining < N {
            return None;
        }
        let mut out = [0u8; N];
        // Fast path: the field lies inside the current segment.
        if let Some(bytes) = self
            .segs
            .get(self.seg)
            .and_then(|s| s.as_ref().get(self.off..))
        {
            if let Some(field) = bytes.get(..N) {
                out.copy_from_slice(field);
                self.advance(N, bytes.len());
                return Some(out);
            }
        }
        let got = self.read_into(&mut out);
        (got == N).then_some(out)
    }

    /// Reads up to `out.len()` bytes across segments; returns how many were read.
    pub(crate) fn read_into(&mut self, out: &mut [u8]) -> usize {
        let mut got = 0;
        while got < out.len() {
            let Some(seg) = self.segs.get(self.seg) else {
                break;
            };
            let bytes = seg.as_ref().get(self.off..).unwrap_or(&[]);
            let n = bytes.len().min(out.len() - got);
            out[got..got + n].copy_from_slice(&bytes[..n]);
            got += n;
            self.advance(n, bytes.len());
        }
        got
    }

    /// Moves `n` bytes on inside the current segment, which had `left` bytes unread.
    fn advance(&mut self, n: usize, left: usize) {
        self.pos += n;
        self.remaining = self.remaining.saturating_sub(n);
        if n >= left {
            self.seg += 1;
            self.off = 0;
        } else {
            self.off += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_fields_straddle_segments() {
        let segs: [&[u8]; 4] = [&[1, 2, 3], &[], &[4, 5, 6, 7, 8, 9], &[10]];
        let mut s = Stream::new(&segs);
        assert_eq!(s.remaining(), 10);
        assert_eq!(s.read::<2>(), Some([1, 2]));
        assert_eq!(s.read::<4>(), Some([3, 4, 5, 6]));
        assert_eq!(s.read::<8>(), None);
        assert_eq!(s.read::<4>(), Some([7, 8, 9, 10]));
        assert_eq!((s.remaining(), s.pos()), (0, 10));
        assert_eq!(s.read::<1>(), None);
    }
}
