//! The entry points every encoding's decoder shares.

/// Defines an encoding's public `decode` (one message's segments into a sink) and the
/// `decode_stream` it wraps (the rest of a [`Stream`](super::stream::Stream) into a
/// [`Coalescer`](super::Coalescer)), so that every encoding reads segments as one byte stream
/// and coalesces runs the same way; the macro takes the docs, the result type and the body.
macro_rules! decoder {
    (
        $(#[$doc:meta])*
        pub fn decode -> $ret:ty;
        $(#[$sdoc:meta])*
        fn decode_stream($st:pat, $max:ident, $sink:ident) $body:block
    ) => {
        $(#[$doc])*
        pub fn decode<S, K>(segments: &[S], max_pfn: u64, sink: &mut K) -> Result<$ret, PagesError>
        where
            S: AsRef<[u8]>,
            K: PageSink + ?Sized,
        {
            decode_stream(Stream::new(segments), max_pfn, &mut Coalescer::new(sink))
        }

        $(#[$sdoc])*
        pub(crate) fn decode_stream<S, K>(
            $st: Stream<'_, S>,
            $max: u64,
            $sink: &mut Coalescer<'_, K>,
        ) -> Result<$ret, PagesError>
        where
            S: AsRef<[u8]>,
            K: PageSink + ?Sized,
        $body
    };
}

pub(super) use decoder;
