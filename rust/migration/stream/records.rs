//! Validated frames and records as the reader hands them out.

use super::*;

/// One record of a batch, borrowed from the reader's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// A page's contents.
    Data {
        /// The page.
        pfn: u64,
        /// Its 4096 bytes.
        bytes: &'a [u8],
    },
    /// These pages (at least one) are zero.
    Zero(PageRange),
}

/// The records of one batch, already validated.
#[derive(Clone, Debug)]
pub struct Batch<'a> {
    pub(super) payload: &'a [u8],
}

/// The records of a validated payload, one after the other: `split` reads the record at the
/// start of what is left and returns it with its length in bytes.
fn walk<'a, T: 'a>(
    payload: &'a [u8],
    mut split: impl FnMut(&'a [u8]) -> (T, usize) + 'a,
) -> impl Iterator<Item = T> + 'a {
    let mut rest = payload;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (item, len) = split(rest);
        rest = &rest[len..];
        Some(item)
    })
}

impl<'a> Batch<'a> {
    /// The records in stream order.
    pub fn records(&self) -> impl Iterator<Item = Record<'a>> + 'a {
        // The reader checked every record before handing the batch out.
        walk(self.payload, |r| {
            let head = le64(r, 0);
            let pfn = head & PFN_MASK;
            if (head >> 56) as u8 == KIND_DATA {
                let bytes = &r[8..DATA_RECORD_LEN];
                (Record::Data { pfn, bytes }, DATA_RECORD_LEN)
            } else {
                let zeros = PageRange::new(pfn, le64(r, 8));
                (Record::Zero(zeros), ZERO_RECORD_LEN)
            }
        })
    }
}

/// Checksums of consecutive pages, from a verify frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyRun<'a> {
    /// First page.
    pub first: u64,
    pub(super) sums: &'a [u8],
}

impl VerifyRun<'_> {
    /// Number of pages.
    pub fn len(&self) -> u64 {
        (self.sums.len() / 8) as u64
    }

    /// Whether the run is empty (never, in a validated frame).
    pub fn is_empty(&self) -> bool {
        self.sums.is_empty()
    }

    /// The pages the run checksums.
    pub fn range(&self) -> PageRange {
        PageRange::new(self.first, self.len())
    }

    /// (page, checksum) for each page of the run.
    pub fn pages(&self) -> impl Iterator<Item = (Pfn, u64)> + '_ {
        let first = self.first;
        (first..)
            .zip(self.sums.chunks_exact(8))
            .map(|(pfn, c)| (Pfn(pfn), le64(c, 0)))
    }
}

/// The records of one verify frame, already validated.
#[derive(Clone, Debug)]
pub struct VerifyBatch<'a> {
    pub(super) payload: &'a [u8],
}

impl<'a> VerifyBatch<'a> {
    /// The runs in stream order.
    pub fn runs(&self) -> impl Iterator<Item = VerifyRun<'a>> + 'a {
        walk(self.payload, |r| {
            #[allow(
                clippy::cast_possible_truncation,
                reason = "the reader checked that the payload holds all `n` checksums"
            )]
            let n = le64(r, 8) as usize;
            let len = VERIFY_HEAD_LEN + 8 * n;
            let run = VerifyRun {
                first: le64(r, 0),
                sums: &r[VERIFY_HEAD_LEN..len],
            };
            (run, len)
        })
    }
}

/// One frame as the reader hands it out.
#[derive(Debug)]
pub enum Frame<'a> {
    /// A batch of page records.
    Batch(Batch<'a>),
    /// The start of round `n`.
    Round(u32),
    /// The end of the stream, with its (verified) totals.
    End(Totals),
    /// Checksums of used pages (verify trailer).
    Verify(VerifyBatch<'a>),
    /// The end of the verify trailer: pages checksummed (checked against the records).
    VerifyEnd(u64),
}
