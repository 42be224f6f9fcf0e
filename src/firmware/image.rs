//! What kind of firmware image a file is, from its first bytes, as nRF
//! Connect SDK's `dfu_target_img_type()` tells them apart on the device.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageType {
    /// MCUboot application image: `ih_magic` 0x96f3b83d (little-endian) at offset 0.
    McubootApplication,
    /// nRF91 modem delta update: magic 0x7544656d at offset 4.
    ModemDelta,
    /// nRF91 full modem update (serialised, COSE-signed): 0x84d2 at offset 0.
    ModemFull,
    Unknown,
}

impl ImageType {
    pub fn detect(head: &[u8]) -> ImageType {
        let u32_at = |o: usize| head.get(o..o + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let u16_at = |o: usize| head.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        if u32_at(0) == Some(0x96f3_b83d) {
            ImageType::McubootApplication
        } else if u32_at(4) == Some(0x7544_656d) {
            ImageType::ModemDelta
        } else if u16_at(0) == Some(0x84d2) {
            ImageType::ModemFull
        } else {
            ImageType::Unknown
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ImageType::McubootApplication => "mcuboot-application",
            ImageType::ModemDelta => "modem-delta",
            ImageType::ModemFull => "modem-full",
            ImageType::Unknown => "unknown",
        }
    }

    pub fn parse(s: &str) -> ImageType {
        match s {
            "mcuboot-application" => ImageType::McubootApplication,
            "modem-delta" => ImageType::ModemDelta,
            "modem-full" => ImageType::ModemFull,
            _ => ImageType::Unknown,
        }
    }
}

/// The version in an MCUboot image header (`ih_ver` at offset 20:
/// major, minor, revision u16, build number u32), e.g. "1.2.3+4".
pub fn mcuboot_version(head: &[u8]) -> Option<String> {
    if ImageType::detect(head) != ImageType::McubootApplication {
        return None;
    }
    let v = head.get(20..28)?;
    let revision = u16::from_le_bytes([v[2], v[3]]);
    let build = u32::from_le_bytes([v[4], v[5], v[6], v[7]]);
    Some(format!("{}.{}.{revision}+{build}", v[0], v[1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_kind() {
        let mut mcuboot = vec![0x3d, 0xb8, 0xf3, 0x96];
        mcuboot.resize(32, 0);
        mcuboot[20..28].copy_from_slice(&[1, 2, 3, 0, 4, 0, 0, 0]);
        assert_eq!(ImageType::detect(&mcuboot), ImageType::McubootApplication);
        assert_eq!(mcuboot_version(&mcuboot).as_deref(), Some("1.2.3+4"));
        assert_eq!(
            ImageType::detect(&[0, 0, 0, 0, 0x6d, 0x65, 0x44, 0x75]),
            ImageType::ModemDelta
        );
        assert_eq!(ImageType::detect(&[0xd2, 0x84, 0x43]), ImageType::ModemFull);
        assert_eq!(ImageType::detect(b"hello"), ImageType::Unknown);
        assert_eq!(ImageType::detect(&[]), ImageType::Unknown);
        for t in [
            ImageType::McubootApplication,
            ImageType::ModemDelta,
            ImageType::ModemFull,
            ImageType::Unknown,
        ] {
            assert_eq!(ImageType::parse(t.as_str()), t);
        }
    }
}
