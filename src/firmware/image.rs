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

/// The modem versions a Nordic modem delta's file name states:
/// `mfw_nrf9160_update_from_1.3.4_to_1.3.5.bin` → ("1.3.4", "1.3.5")
/// (how Nordic names the delta images in a modem firmware release).
pub fn modem_delta_versions(name: &str) -> Option<(String, String)> {
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    let (_, rest) = stem.split_once("_from_")?;
    let (from, to) = rest.split_once("_to_")?;
    (version_like(from) && version_like(to)).then(|| (from.to_string(), to.to_string()))
}

fn version_like(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+'))
}

/// The modem version a Nordic full modem image's file name states:
/// `mfw_nrf9160_1.3.5.zip` or `mfw_nrf91x1_full_2.0.1.bin` → "1.3.5",
/// "2.0.1" (the last `_`-separated part, when it starts with a digit).
pub fn modem_release_version(name: &str) -> Option<String> {
    let stem = name
        .strip_suffix(".zip")
        .or_else(|| name.strip_suffix(".bin"))
        .or_else(|| name.strip_suffix(".cbor"))
        .unwrap_or(name);
    if !stem.starts_with("mfw_") {
        return None;
    }
    let (_, last) = stem.rsplit_once('_')?;
    (last.starts_with(|c: char| c.is_ascii_digit()) && version_like(last)).then(|| last.to_string())
}

/// The version an image states about itself: an MCUboot header's
/// `ih_ver`, or the target modem version in the file name Nordic gives a
/// modem delta or full image. `None` when it states none.
pub fn stated_version(image_type: ImageType, head: &[u8], name: &str) -> Option<String> {
    match image_type {
        ImageType::McubootApplication => mcuboot_version(head),
        ImageType::ModemDelta => modem_delta_versions(name).map(|(_, to)| to),
        ImageType::ModemFull => modem_release_version(name),
        ImageType::Unknown => None,
    }
}

/// Whether an operator's `given` version names the one the image states:
/// equal but for a leading `v`; a build number of 0 (`1.2.3+0`, what an
/// MCUboot header holds when the build set none) may be left out; and a
/// modem version may be given as the modem reports it in `/3/0/3`
/// (`mfw_nrf9160_1.3.5` for a file name's `1.3.5`).
pub fn version_agrees(given: &str, stated: &str) -> bool {
    let norm = |v: &str| {
        let v = v.trim();
        let v = v.strip_prefix(['v', 'V']).unwrap_or(v);
        v.strip_suffix("+0").unwrap_or(v).to_string()
    };
    let (given, stated) = (norm(given), norm(stated));
    given == stated
        || given
            .strip_prefix("mfw_")
            .and_then(|rest| rest.rsplit_once('_'))
            .is_some_and(|(_, number)| number == stated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_state_their_versions() {
        let mut mcuboot = vec![0x3d, 0xb8, 0xf3, 0x96];
        mcuboot.resize(32, 0);
        mcuboot[20..28].copy_from_slice(&[2, 1, 0, 0, 0, 0, 0, 0]);
        let t = ImageType::McubootApplication;
        assert_eq!(stated_version(t, &mcuboot, "app.bin").as_deref(), Some("2.1.0+0"));
        assert!(version_agrees("2.1.0", "2.1.0+0") && version_agrees("v2.1.0+0", "2.1.0+0"));
        assert!(!version_agrees("2.1.1", "2.1.0+0") && !version_agrees("2.1.0+7", "2.1.0+0"));
        assert!(version_agrees("mfw_nrf9160_1.3.5", "1.3.5") && !version_agrees("mfw_nrf9160_1.3.4", "1.3.5"));
        let delta = "mfw_nrf9160_update_from_1.3.4_to_1.3.5.bin";
        assert_eq!(modem_delta_versions(delta), Some(("1.3.4".into(), "1.3.5".into())));
        assert_eq!(modem_delta_versions("app-2.0.0.bin"), None);
        assert_eq!(
            stated_version(ImageType::ModemDelta, &[], delta).as_deref(),
            Some("1.3.5")
        );
        assert_eq!(stated_version(ImageType::ModemDelta, &[], "delta.bin"), None);
        for (name, v) in [
            ("mfw_nrf9160_1.3.5.zip", Some("1.3.5")),
            ("mfw_nrf91x1_full_2.0.1.bin", Some("2.0.1")),
            ("mfw_nrf9160_full.bin", None),
            ("modem.bin", None),
        ] {
            assert_eq!(stated_version(ImageType::ModemFull, &[], name).as_deref(), v, "{name}");
        }
        assert_eq!(stated_version(ImageType::Unknown, b"hello", "x.bin"), None);
    }

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
