//! The message buffer the list encodings (pfn, extents) share: records are appended until the
//! next would not fit, then the buffer goes out as one message.

use super::{Pages, PagesError};

/// A reused buffer of at most `max` bytes that hands each full message to `emit`.
pub(crate) struct OutBuf<'e> {
    buf: Vec<u8>,
    max: usize,
    emit: &'e mut dyn FnMut(&[&[u8]]),
}

impl<'e> OutBuf<'e> {
    /// An empty buffer for messages of at most `max` bytes.
    pub(crate) fn new(max: usize, emit: &'e mut dyn FnMut(&[&[u8]])) -> OutBuf<'e> {
        OutBuf {
            buf: Vec::with_capacity(max),
            max,
            emit,
        }
    }

    /// The buffer, with room for `n` more bytes (the message so far is sent if they would not
    /// fit).
    pub(crate) fn room(&mut self, n: usize) -> &mut Vec<u8> {
        if !self.buf.is_empty() && self.buf.len() + n > self.max {
            (self.emit)(&[&self.buf]);
            self.buf.clear();
        }
        &mut self.buf
    }

    /// Encodes every run of `pages` with `record`, then sends what is left.
    pub(crate) fn encode_runs(
        mut self,
        pages: Pages<'_>,
        mut record: impl FnMut(&mut Self, u64, u64),
    ) -> Result<(), PagesError> {
        pages.for_each_run(|start, len| record(&mut self, start, len));
        if !self.buf.is_empty() {
            (self.emit)(&[&self.buf]);
        }
        Ok(())
    }
}
