//! Page sets and their wire encodings.
//!
//! A [`PageSet`] is a dense bitmap of guest pages; an [`AtomicPageBitmap`] is the same for
//! many writers (the migration dirty log). The encodings turn a set into the bytes a balloon
//! driver puts on a virtqueue and back, and never touch guest memory or queues themselves:
//!
//! | encoding | module | message |
//! |---|---|---|
//! | legacy PFN arrays | [`pfn`] | ≤ 256 little-endian u32 PFNs |
//! | v3 scatter-gather bitmap | [`bitmap`] | 32-byte header + ≤ 32 pieces of 32 KiB |
//! | `{pfn \| length}` extents (v6) | [`extents`] | ≤ 32 KiB of 8/16-byte records |
//! | hybrid (vballoon-specific) | [`auto`] | 8-byte tag + bitmap or extents body |
//! | FREE_PAGE_HINT blocks | [`hint`] | aligned 4 MiB `(addr, len)` descriptors |
//!
//! An encoder yields [`Message`]s, each a list of segments (one scatter-gather element each);
//! the `*_with` forms stream borrowed segments instead. A decoder reads a message's segments
//! as one byte stream (virtio §2.6.4), treats it as hostile, validates all of it, and only
//! then hands the pages as runs `(start_pfn, len)` to a [`PageSink`]: a closure, a
//! [`PageSet`] or a `Vec`. [`encode`] and [`decode`] dispatch on an [`Encoding`].
//!
//! All PFNs are in 4 KiB units ([`BALLOON_PFN_SHIFT`]); `max_pfn` is always the number of
//! guest pages, an exclusive bound.

#![warn(clippy::cast_possible_truncation, clippy::cast_sign_loss)]

mod atomic;
pub mod auto;
pub mod bitmap;
mod decoder;
mod encoding;
mod error;
pub mod extents;
pub mod hint;
mod outbuf;
pub mod pfn;
mod runs;
mod set;
mod sink;
mod stream;
mod window;

/// A run of pages: the shape every decoder, sink and set exchanges (the memory layer's type).
pub use crate::memory::PageRange;
pub use atomic::AtomicPageBitmap;
pub use bitmap::{BmapHeader, ReqHeader};
pub use encoding::{decode, decode_into, encode, encode_with, Decoded, Encoding, Message, Pages};
pub use error::PagesError;
pub use hint::HintBlock;
pub use runs::{Runs, WORD_BITS};
pub use set::{PageSet, Pfns};
pub use sink::{Coalescer, PageSink};

/// Balloon PFNs are in 4096-byte units whatever the guest page size
/// (`VIRTIO_BALLOON_PFN_SHIFT`, virtio spec §5.5.6).
pub const BALLOON_PFN_SHIFT: u32 = 12;

const _: () = assert!(BALLOON_PFN_SHIFT == crate::memory::PAGE_SHIFT);
