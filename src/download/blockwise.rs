//! Firmware over CoAP block-wise (RFC 7959), sans-I/O: the 2.05 answer to
//! a device's `GET /fw/SHA/NAME` with a Block2 option, cut from the image
//! in memory. Each block is answered at the offset the device asked for,
//! no larger than it asked and no larger than `max_szx` (the server may
//! shrink the size, §2.4: the block number then counts in the new size),
//! with the image's ETag (§2.4 lets a client detect a changed resource)
//! and Size2 (§4: the whole size, so the device can check it has room). No
//! per-transfer state: any block can be asked for at any time.

use crate::coap::{BlockValue, Code, Response};
use crate::lwm2m::content::OPAQUE;

/// The largest block we send: 1024 bytes (SZX 6), the most RFC 7959
/// allows on UDP and what nRF Connect SDK's CoAP downloader asks for.
pub const MAX_SZX: u8 = 6;

/// The answer to a GET of `image` (whose ETag is `etag`) asking for block
/// `asked` (none: the first block at our size), and the byte range it
/// carries.
pub fn answer(image: &[u8], etag: &[u8], asked: Option<BlockValue>) -> (Response, Option<(u64, u64)>) {
    let asked = asked.unwrap_or(BlockValue {
        num: 0,
        more: false,
        szx: MAX_SZX,
    });
    let szx = asked.szx.min(MAX_SZX);
    // The offset the device asked for, counted in blocks of our size.
    let offset = asked.offset();
    let num = (offset >> (szx + 4)) as u32;
    let Some((block, body)) = BlockValue::slice(image, num, szx) else {
        // Past the end (§2.2: a block that does not exist is 4.02).
        let mut r = Response::new(Code::BAD_OPTION);
        r.options.size2 = Some(image.len() as u32);
        return (r, None);
    };
    let mut r = Response::with_payload(Code::CONTENT, OPAQUE, body.to_vec());
    r.options.block2 = Some(block);
    r.options.size2 = Some(image.len() as u32);
    r.options.etag = Some(etag.to_vec());
    let range = (!body.is_empty()).then(|| (offset as u64, (offset + body.len() - 1) as u64));
    (r, range)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> Vec<u8> {
        (0..3000u32).map(|i| (i % 251) as u8).collect()
    }

    fn block(num: u32, szx: u8) -> Option<BlockValue> {
        Some(BlockValue { num, more: false, szx })
    }

    #[test]
    fn blocks_are_cut_at_the_asked_offset_and_size() {
        let img = image();
        let (r, range) = answer(&img, b"etag", block(2, 5)); // 512-byte blocks
        assert_eq!(r.code, Code::CONTENT);
        assert_eq!(
            r.options.block2,
            Some(BlockValue {
                num: 2,
                more: true,
                szx: 5
            })
        );
        assert_eq!(r.payload, img[1024..1536]);
        assert_eq!(
            (r.options.size2, r.options.etag.as_deref()),
            (Some(3000), Some(&b"etag"[..]))
        );
        assert_eq!(range, Some((1024, 1535)));
        // The last block is short and says no more.
        let (r, range) = answer(&img, b"etag", block(2, 6));
        assert_eq!(
            r.options.block2,
            Some(BlockValue {
                num: 2,
                more: false,
                szx: 6
            })
        );
        assert_eq!(r.payload, img[2048..]);
        assert_eq!(range, Some((2048, 2999)));
    }

    #[test]
    fn no_block_option_is_the_first_block_and_sizes_are_capped() {
        let img = image();
        let (r, _) = answer(&img, b"e", None);
        assert_eq!(
            r.options.block2,
            Some(BlockValue {
                num: 0,
                more: true,
                szx: 6
            })
        );
        assert_eq!(r.payload.len(), 1024);
        // Reassembling at any block size gives the image back.
        for szx in 0..=6u8 {
            let mut got = Vec::new();
            let mut num = 0;
            loop {
                let (r, _) = answer(&img, b"e", block(num, szx));
                got.extend_from_slice(&r.payload);
                let b = r.options.block2.unwrap();
                if !b.more {
                    break;
                }
                num = b.num + 1;
            }
            assert_eq!(got, img, "szx {szx}");
        }
    }

    #[test]
    fn a_block_past_the_end_is_bad_option() {
        let img = image();
        let (r, range) = answer(&img, b"e", block(3, 6));
        assert_eq!((r.code, range), (Code::BAD_OPTION, None));
        let (r, _) = answer(&img, b"e", block(5000, 4));
        assert_eq!(r.code, Code::BAD_OPTION);
    }
}
