//! Errors of the page-set layer: one variant per way a page set or a wire message can be wrong.

/// A page set could not be built, encoded or decoded.
///
/// Decoders see hostile bytes, so every field they read has its own variant carrying the
/// offending values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PagesError {
    /// A page lies outside guest RAM.
    #[error("page {pfn:#x} lies outside guest RAM of {max_pfn:#x} pages")]
    PageOutsideRam {
        /// The first offending page.
        pfn: u64,
        /// Number of guest pages (the exclusive PFN bound).
        max_pfn: u64,
    },
    /// The end of a run, `pfn + len`, does not fit in 64 bits.
    #[error("run of {len:#x} pages at page {pfn:#x} overflows the PFN space")]
    RunOverflow {
        /// First page of the run.
        pfn: u64,
        /// Its length in pages.
        len: u64,
    },
    /// A page number cannot be written in this encoding.
    #[error("page {pfn:#x} cannot be encoded: this encoding holds PFNs below {limit:#x}")]
    PfnTooLarge {
        /// The offending page.
        pfn: u64,
        /// The exclusive PFN bound of the encoding.
        limit: u64,
    },
    /// A raw word vector does not match the page count it was given for.
    #[error("{words} bitmap words cannot hold exactly {npages} pages")]
    WordCount {
        /// Number of words given.
        words: usize,
        /// Number of pages asked for.
        npages: u64,
    },
    /// A page set was asked for more pages than any guest has, or its bitmap could not be
    /// allocated.
    #[error(
        "a page set of {npages} pages is too large: at most {max} pages (16 TiB of 4 KiB pages), \
         and its bitmap must fit in memory"
    )]
    SetTooLarge {
        /// Number of pages asked for.
        npages: u64,
        /// The most a set may hold.
        max: u64,
    },
    /// A legacy PFN array is not a whole number of 4-byte PFNs.
    #[error("PFN array of {len} bytes is not a multiple of 4")]
    PfnArrayLength {
        /// Length of the array in bytes.
        len: usize,
    },
    /// A legacy PFN array holds more PFNs than one buffer may.
    #[error("PFN array holds {count} PFNs, more than the {max} allowed")]
    TooManyPfns {
        /// Number of PFNs in the buffer.
        count: usize,
        /// The most allowed.
        max: usize,
    },
    /// A bitmap message is shorter than its 32-byte header.
    #[error("bitmap message of {len} bytes is shorter than its {need}-byte header")]
    BitmapHeaderTruncated {
        /// Length of the message in bytes.
        len: usize,
        /// Header length.
        need: usize,
    },
    /// A bitmap header names a page size other than 4 KiB.
    #[error("bitmap header page_shift is {page_shift}, expected {expected}")]
    BadPageShift {
        /// The page_shift in the header.
        page_shift: u16,
        /// The only page_shift accepted.
        expected: u16,
    },
    /// A bitmap header carries an unknown command.
    #[error("bitmap header cmd {cmd} is unknown")]
    BadBitmapCommand {
        /// The cmd in the header.
        cmd: u16,
    },
    /// A bitmap header carries a flag other than CONT or DONE.
    #[error("bitmap header flag {flag} is neither CONT (0) nor DONE (1)")]
    BadBitmapFlag {
        /// The flag in the header.
        flag: u16,
    },
    /// A bitmap header's bmap_len disagrees with the bytes that follow it.
    #[error("bitmap header says bmap_len {bmap_len} bytes but {body_len} bytes follow it")]
    BitmapLengthMismatch {
        /// bmap_len from the header.
        bmap_len: u64,
        /// Bytes actually following the header.
        body_len: usize,
    },
    /// A bitmap is longer than 32 pieces of 32 KiB.
    #[error("bitmap of {bmap_len} bytes is longer than the {max} allowed")]
    BitmapTooLong {
        /// bmap_len from the header.
        bmap_len: u64,
        /// The most allowed.
        max: u64,
    },
    /// A misc-queue request buffer is not exactly 16 bytes.
    #[error("request header of {len} bytes, expected {expected}")]
    ReqHeaderLength {
        /// Length of the buffer.
        len: usize,
        /// The required length.
        expected: usize,
    },
    /// An extents message is not a whole number of 8-byte words.
    #[error("extents message of {len} bytes is not a multiple of 8")]
    ExtentsLength {
        /// Length of the message in bytes.
        len: usize,
    },
    /// An extents message is longer than one message may be.
    #[error("extents message of {len} bytes is longer than the {max} allowed")]
    ExtentsTooLong {
        /// Length of the message in bytes.
        len: usize,
        /// The most allowed.
        max: usize,
    },
    /// A long extent record is cut off before its length word.
    #[error("long extent record at byte {offset} has no length word")]
    ExtentTruncated {
        /// Byte offset of the record in the message body.
        offset: usize,
    },
    /// An extent covers no pages.
    #[error("extent at page {pfn:#x} (byte {offset}) has zero length")]
    ZeroLengthExtent {
        /// First page of the extent.
        pfn: u64,
        /// Byte offset of the record in the message body.
        offset: usize,
    },
    /// An auto-encoded message is shorter than its 8-byte tag header.
    #[error("auto message of {len} bytes is shorter than its {need}-byte header")]
    AutoHeaderTruncated {
        /// Length of the message in bytes.
        len: usize,
        /// Header length.
        need: usize,
    },
    /// An auto-encoded message names an unknown body kind.
    #[error("auto message kind {kind} is unknown")]
    UnknownAutoKind {
        /// The kind byte.
        kind: u8,
    },
    /// An auto-encoded message has a non-zero reserved header byte.
    #[error("auto header byte {offset} is {value:#x}, must be zero")]
    AutoReserved {
        /// Offset of the byte in the header.
        offset: usize,
        /// Its value.
        value: u8,
    },
    /// A hinted block is not whole 4 KiB pages.
    #[error("hinted block [{addr:#x}, +{len:#x}) is not page aligned")]
    HintNotPageAligned {
        /// Guest-physical start of the block.
        addr: u64,
        /// Its length in bytes.
        len: u64,
    },
    /// A hinted block is empty.
    #[error("hinted block at {addr:#x} is empty")]
    EmptyHint {
        /// Guest-physical start of the block.
        addr: u64,
    },
    /// A hinted block's end does not fit in 64 bits.
    #[error("hinted block [{addr:#x}, +{len:#x}) overflows the address space")]
    HintOverflow {
        /// Guest-physical start of the block.
        addr: u64,
        /// Its length in bytes.
        len: u64,
    },
    /// A free-page-hint command id buffer is not exactly 4 bytes.
    #[error("command id buffer of {len} bytes, expected {expected}")]
    CmdIdLength {
        /// Length of the buffer.
        len: usize,
        /// The required length.
        expected: usize,
    },
    /// A block order range is empty or too large.
    #[error("block orders {min}..={max} are not a valid range up to {limit}")]
    BadBlockOrder {
        /// Smallest order asked for.
        min: u32,
        /// Largest order asked for.
        max: u32,
        /// Largest order supported.
        limit: u32,
    },
    /// An encoding name is not one of pfn, bitmap, extents, auto.
    #[error("unknown page encoding {name:?} (expected pfn, bitmap, extents or auto)")]
    UnknownEncoding {
        /// The name given.
        name: String,
    },
}
