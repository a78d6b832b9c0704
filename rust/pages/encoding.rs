//! One entry point over all wire encodings: pick one by name, encode a page source into
//! messages, decode a message into a sink.

use crate::util::named_enum;
use std::str::FromStr;

use super::bitmap::BmapHeader;
use super::sink::Coalescer;
use super::stream::Stream;
use super::{auto, bitmap, extents, pfn, PageRange, PageSet, PageSink, PagesError};

/// A wire encoding of a page set, as sent on the inflate and deflate queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// Legacy arrays of 32-bit PFNs, 256 per message ([`pfn`]).
    Pfn,
    /// The v3 scatter-gather bitmap with its 32-byte header ([`bitmap`]).
    Bitmap,
    /// `{pfn | length}` ranges ([`extents`]).
    Extents,
    /// Per window the smaller of bitmap and extents, tagged ([`auto`]).
    Auto,
}

impl Encoding {
    /// Every encoding, in the order above.
    pub const ALL: [Encoding; 4] = [
        Encoding::Pfn,
        Encoding::Bitmap,
        Encoding::Extents,
        Encoding::Auto,
    ];
}

named_enum!(Encoding {
    Pfn => "pfn",
    Bitmap => "bitmap",
    Extents => "extents",
    Auto => "auto",
});

impl FromStr for Encoding {
    type Err = PagesError;

    /// Parses a name, ignoring ASCII case and surrounding blanks.
    fn from_str(s: &str) -> Result<Encoding, PagesError> {
        Encoding::parse(s).ok_or_else(|| PagesError::UnknownEncoding { name: s.to_owned() })
    }
}

/// Pages to encode: a page set, or a list of runs of pages.
///
/// Runs may be unsorted, overlapping or empty. Encodings that list pages (pfn, extents) send
/// runs in the order given; bitmap and auto sort and merge them first.
#[derive(Clone, Copy, Debug)]
pub enum Pages<'a> {
    /// A dense set; sent lowest page first.
    Set(&'a PageSet),
    /// Runs of pages.
    Runs(&'a [PageRange]),
}

impl Pages<'_> {
    /// Calls `f(start, len)` for every run: a set's maximal runs lowest first, or the listed
    /// runs in the order given.
    pub fn for_each_run(&self, mut f: impl FnMut(u64, u64)) {
        match self {
            Pages::Set(set) => set.runs().for_each(|r| f(r.start, r.len)),
            Pages::Runs(list) => list.iter().for_each(|r| f(r.start, r.len)),
        }
    }
}

impl<'a> From<&'a PageSet> for Pages<'a> {
    fn from(set: &'a PageSet) -> Pages<'a> {
        Pages::Set(set)
    }
}

impl<'a> From<&'a [PageRange]> for Pages<'a> {
    fn from(runs: &'a [PageRange]) -> Pages<'a> {
        Pages::Runs(runs)
    }
}

impl<'a> From<&'a Vec<PageRange>> for Pages<'a> {
    fn from(runs: &'a Vec<PageRange>) -> Pages<'a> {
        Pages::Runs(runs)
    }
}

/// One message: the segments of one virtqueue buffer, in order.
///
/// A later layer places each segment in guest memory as one scatter-gather element. Decoders
/// read the concatenation, so any other split of the same bytes decodes the same.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// The segments, in order.
    pub segments: Vec<Vec<u8>>,
}

impl Message {
    /// A message copied from borrowed segments.
    pub fn from_segments(segments: &[&[u8]]) -> Message {
        Message {
            segments: segments.iter().map(|s| s.to_vec()).collect(),
        }
    }

    /// Total bytes over all segments.
    pub fn len(&self) -> usize {
        self.segments.iter().map(Vec::len).sum()
    }

    /// Whether the message holds no byte.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The segments as borrowed slices.
    pub fn slices(&self) -> Vec<&[u8]> {
        self.segments.iter().map(Vec::as_slice).collect()
    }

    /// The segments joined into one buffer.
    pub fn concat(&self) -> Vec<u8> {
        self.segments.concat()
    }

    /// Runs a streaming encoder and collects what it emits.
    pub(crate) fn collect(
        f: impl FnOnce(&mut dyn FnMut(&[&[u8]])) -> Result<(), PagesError>,
    ) -> Result<Vec<Message>, PagesError> {
        let mut out = Vec::new();
        f(&mut |segs: &[&[u8]]| out.push(Message::from_segments(segs)))?;
        Ok(out)
    }
}

/// What [`decode`] found in one message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// Pages handed to the sink (a page listed twice in a PFN array counts once; overlapping
    /// extents count each time).
    pub pages: u64,
    /// Runs handed to the sink, after joining runs that touch.
    pub runs: u64,
    /// The bitmap header, for a bitmap message or an auto message with a bitmap body.
    pub header: Option<BmapHeader>,
}

/// Encodes `pages` in `enc` as a list of messages.
///
/// Fails only if a page cannot be written in `enc` (PFNs of 2^32 and up in [`Encoding::Pfn`],
/// of 2^52 and up elsewhere) or a run overflows.
pub fn encode<'a>(enc: Encoding, pages: impl Into<Pages<'a>>) -> Result<Vec<Message>, PagesError> {
    let pages = pages.into();
    Message::collect(|emit| encode_with(enc, pages, emit))
}

/// Like [`encode`], but hands each message to `emit` as borrowed segments, so a caller that
/// copies them straight into guest memory allocates nothing per message.
///
/// Nothing is emitted unless the whole source is encodable.
pub fn encode_with(
    enc: Encoding,
    pages: Pages<'_>,
    emit: &mut dyn FnMut(&[&[u8]]),
) -> Result<(), PagesError> {
    match enc {
        Encoding::Pfn => pfn::encode_with(pages, emit),
        Encoding::Bitmap => bitmap::encode_with(pages, emit),
        Encoding::Extents => extents::encode_with(pages, emit),
        Encoding::Auto => auto::encode_with(pages, emit),
    }
}

/// Decodes one message of `enc`, handing its pages to `sink` as runs `(start_pfn, len)`.
///
/// `segments` are the message's buffers in order (`&[Vec<u8>]`, `&[&[u8]]`, …), read as one
/// byte stream. `max_pfn` is the number of guest pages: any page at or past it, or past
/// `sink.limit()`, is an error. The whole message is validated before `sink` sees a page, so
/// a malformed message changes nothing. Runs that touch are joined inside the message;
/// joining across messages is the caller's (see [`Coalescer`]).
pub fn decode<S, K>(
    enc: Encoding,
    segments: &[S],
    max_pfn: u64,
    sink: &mut K,
) -> Result<Decoded, PagesError>
where
    S: AsRef<[u8]>,
    K: PageSink + ?Sized,
{
    let st = Stream::new(segments);
    let mut co = Coalescer::new(sink);
    let header = match enc {
        Encoding::Pfn => pfn::decode_stream(st, max_pfn, &mut co).map(|()| None),
        Encoding::Bitmap => bitmap::decode_stream(st, max_pfn, &mut co).map(Some),
        Encoding::Extents => extents::decode_stream(st, max_pfn, &mut co).map(|()| None),
        Encoding::Auto => auto::decode_stream(st, max_pfn, &mut co),
    }?;
    co.flush();
    Ok(Decoded {
        pages: co.pages(),
        runs: co.runs(),
        header,
    })
}

/// Decodes one message of `enc` into `set`, bounded by its size; see [`decode`].
pub fn decode_into<S: AsRef<[u8]>>(
    enc: Encoding,
    segments: &[S],
    set: &mut PageSet,
) -> Result<Decoded, PagesError> {
    let max_pfn = set.npages();
    decode(enc, segments, max_pfn, set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_encoding_names_parse() {
        for e in Encoding::ALL {
            assert_eq!(e.name().parse::<Encoding>(), Ok(e));
            assert_eq!(e.to_string(), e.name());
        }
        assert_eq!(" Bitmap ".parse::<Encoding>(), Ok(Encoding::Bitmap));
        assert_eq!(
            "chunks".parse::<Encoding>(),
            Err(PagesError::UnknownEncoding {
                name: "chunks".into()
            })
        );
    }
}
