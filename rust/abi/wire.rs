//! What the negotiated balloon features mean on the wire, for both sides.
//!
//! The driver and the device each import this, and nothing of each other, so they agree on
//! which encoding the inflate and deflate queues carry and how long a message may be.

use super::BalloonFeatures;
use crate::pages::auto::AUTO_HEADER_LEN;
use crate::pages::bitmap::{BMAP_HEADER_LEN, MAX_BMAP_LEN};
use crate::pages::extents::EXTENTS_MAX_MESSAGE_LEN;
use crate::pages::pfn::PFN_ARRAY_MAX_LEN;
use crate::pages::Encoding;

/// The encoding inflate and deflate messages use under `features`.
///
/// The richest negotiated format wins: AUTO, then EXTENTS, then PAGE_BITMAP; without any of
/// them, legacy PFN arrays (virtio 1.2 §5.5.6). In v3 ABI mode only PAGE_BITMAP exists.
pub fn encoding_for(features: BalloonFeatures) -> Encoding {
    if features.page_auto() {
        Encoding::Auto
    } else if features.page_extents() {
        Encoding::Extents
    } else if features.page_bitmap() {
        Encoding::Bitmap
    } else {
        Encoding::Pfn
    }
}

/// The longest inflate/deflate message (all readable bytes of one chain) of `enc`.
///
/// A device reads no more than this from one chain: anything longer is refused before a byte
/// is copied, so a guest cannot make the host copy 4 GiB.
pub const fn max_message_len(enc: Encoding) -> usize {
    match enc {
        Encoding::Pfn => PFN_ARRAY_MAX_LEN,
        Encoding::Bitmap => BMAP_HEADER_LEN + MAX_BMAP_LEN as usize,
        Encoding::Extents => EXTENTS_MAX_MESSAGE_LEN,
        Encoding::Auto => {
            let bitmap = BMAP_HEADER_LEN + MAX_BMAP_LEN as usize;
            AUTO_HEADER_LEN
                + if bitmap > EXTENTS_MAX_MESSAGE_LEN {
                    bitmap
                } else {
                    EXTENTS_MAX_MESSAGE_LEN
                }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{bit, AbiMode, VBALLOON_F_PAGE_AUTO, VBALLOON_F_PAGE_BITMAP};
    use crate::abi::{VBALLOON_F_PAGE_EXTENTS, VIRTIO_BALLOON_F_STATS_VQ};

    #[test]
    fn test_richest_encoding_wins() {
        let f = |bits| encoding_for(BalloonFeatures::new(bits, AbiMode::Vballoon));
        assert_eq!(f(0), Encoding::Pfn);
        assert_eq!(f(bit(VBALLOON_F_PAGE_BITMAP)), Encoding::Bitmap);
        let all = bit(VBALLOON_F_PAGE_BITMAP) | bit(VBALLOON_F_PAGE_EXTENTS);
        assert_eq!(f(all), Encoding::Extents);
        assert_eq!(f(all | bit(VBALLOON_F_PAGE_AUTO)), Encoding::Auto);
        let v3 = BalloonFeatures::new(bit(3) | bit(VIRTIO_BALLOON_F_STATS_VQ), AbiMode::V3);
        assert_eq!(encoding_for(v3), Encoding::Bitmap);
        assert_eq!(max_message_len(Encoding::Pfn), 1024);
        assert_eq!(max_message_len(Encoding::Auto), 8 + 32 + (1 << 20));
    }
}
