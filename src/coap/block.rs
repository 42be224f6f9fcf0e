//! The Block1/Block2 option value (RFC 7959 §2.2).

use crate::error::{Error, Result};

/// `NUM | M | SZX`: block number, more flag, size exponent (size = 2^(SZX+4)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockValue {
    pub num: u32,
    pub more: bool,
    pub szx: u8,
}

impl BlockValue {
    /// NUM is at most 20 bits (the option is at most 3 bytes).
    pub const MAX_NUM: u32 = (1 << 20) - 1;

    pub fn decode(v: u32) -> Result<BlockValue> {
        let szx = (v & 0x7) as u8;
        // SZX 7 is reserved in RFC 7959 (BERT, RFC 8323, is TCP only).
        if szx == 7 {
            return Err(Error::malformed("Block option", "SZX 7 is reserved"));
        }
        Ok(BlockValue {
            num: v >> 4,
            more: v & 0x8 != 0,
            szx,
        })
    }

    pub fn encode(self) -> u32 {
        (self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx)
    }

    pub fn size(self) -> usize {
        1 << (self.szx + 4)
    }

    /// Byte offset of this block in the whole body.
    pub fn offset(self) -> usize {
        self.num as usize * self.size()
    }

    /// The SZX for a power-of-two block size in 16..=1024.
    pub fn szx_for(size: usize) -> u8 {
        (size.clamp(16, 1024).trailing_zeros() - 4) as u8
    }

    /// The block `num` of `body` cut at `size`, with the More flag set right.
    pub fn slice(body: &[u8], num: u32, szx: u8) -> Option<(BlockValue, &[u8])> {
        let size = 1usize << (szx + 4);
        let start = (num as usize).checked_mul(size)?;
        if start > body.len() || (start == body.len() && start != 0) {
            return None;
        }
        let end = (start + size).min(body.len());
        Some((
            BlockValue {
                num,
                more: end < body.len(),
                szx,
            },
            &body[start..end],
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_decode() {
        let b = BlockValue {
            num: 5,
            more: true,
            szx: 6,
        };
        assert_eq!(b.encode(), (5 << 4) | 8 | 6);
        assert_eq!(BlockValue::decode(b.encode()).unwrap(), b);
        assert_eq!(b.size(), 1024);
        assert_eq!(b.offset(), 5120);
        assert!(BlockValue::decode(7).is_err());
        assert_eq!(BlockValue::szx_for(512), 5);
    }

    #[test]
    fn slicing() {
        let body = vec![0u8; 40];
        let (b, s) = BlockValue::slice(&body, 0, 0).unwrap();
        assert!(b.more && s.len() == 16);
        let (b, s) = BlockValue::slice(&body, 2, 0).unwrap();
        assert!(!b.more && s.len() == 8);
        assert!(BlockValue::slice(&body, 3, 0).is_none());
        assert!(BlockValue::slice(&[], 0, 0).is_some());
        assert!(BlockValue::slice(&body, u32::MAX, 6).is_none());
    }
}
