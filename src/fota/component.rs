//! What one update installs, and where on the device: the firmware
//! object that carries it (Core E.6 Object 5, or nRF Connect SDK's
//! Advanced Firmware Update, Object 33629, one instance per component)
//! and, per image, its component, Package URIs, target version and, for
//! a modem delta, the modem version it applies to.
//!
//! Object 33629 shares resources 0–13 with Object 5 (Package, Package URI,
//! Update, State, Update Result, …) and adds Component Name (14) and
//! Current Version (15) per instance; an Execute Update of one instance
//! with argument 0 listing others (`0='</33629/1>'`) installs them together
//! (nRF Connect SDK `lwm2m_adv_firmware.c`, `update_arguments_parse`).

use serde::{Deserialize, Serialize};

use crate::lwm2m::path::{Record, ResourcePath, Value};

/// The firmware object an update goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Carrier {
    /// Firmware Update, Object 5: one instance, one image.
    #[default]
    Object5,
    /// Advanced Firmware Update, Object 33629: an instance per component.
    Advanced,
}

pub const FIRMWARE_UPDATE: u16 = 5;
pub const ADVANCED_FIRMWARE_UPDATE: u16 = 33629;

impl Carrier {
    /// The object: what the update reads and observes.
    pub fn object(self) -> ResourcePath {
        ResourcePath::new(&[self.object_id()]).expect("object path")
    }

    fn object_id(self) -> u16 {
        match self {
            Carrier::Object5 => FIRMWARE_UPDATE,
            Carrier::Advanced => ADVANCED_FIRMWARE_UPDATE,
        }
    }

    /// The object a registration's object links announce: Object 33629
    /// when the device has it (the nRF client then has no Object 5 for
    /// the same images), else Object 5.
    pub fn of_registration(object_links: &str) -> Carrier {
        let announces = |id: u16| {
            object_links
                .split(',')
                .filter_map(|l| l.trim().strip_prefix('<')?.split('>').next())
                .any(|p| p.trim_start_matches('/').split('/').next() == Some(&id.to_string()))
        };
        if announces(ADVANCED_FIRMWARE_UPDATE) {
            Carrier::Advanced
        } else {
            Carrier::Object5
        }
    }
}

/// What part of the device an image replaces, from the catalogue's image
/// type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ComponentKind {
    #[default]
    Application,
    Modem,
}

impl ComponentKind {
    /// From the catalogue's image type (`firmware::image::ImageType`).
    pub fn of_image_type(image_type: &str) -> ComponentKind {
        match image_type {
            "modem-delta" | "modem-full" => ComponentKind::Modem,
            _ => ComponentKind::Application,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ComponentKind::Application => "application",
            ComponentKind::Modem => "modem",
        }
    }

    /// Does an Object 33629 Component Name (`/33629/x/14`) name this
    /// component? nRF Connect SDK names its instances "application" and
    /// "modem:<firmware>"; others say "app", "mfw", "modem firmware".
    fn named_by(self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        match self {
            ComponentKind::Application => name.starts_with("app"),
            ComponentKind::Modem => name.starts_with("modem") || name.starts_with("mfw"),
        }
    }
}

/// One image of an update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Component {
    #[serde(default)]
    pub kind: ComponentKind,
    /// The Package URI to write (absolute, with the download token): the
    /// HTTPS one, or `coap_uri` for a device that speaks only CoAP(S).
    pub package_uri: String,
    /// The same image on the LwM2M port (`coap(s)://…/fw/SHA/NAME?t=…`),
    /// where one is configured.
    #[serde(default)]
    pub coap_uri: Option<String>,
    /// The version the image was added with: what the device must report.
    pub target_version: String,
    /// A modem delta applies to this modem version only.
    #[serde(default)]
    pub base_version: Option<String>,
    /// The Object 33629 instance of this component, found when the update
    /// reads the object (0 for Object 5).
    #[serde(default)]
    pub instance: u16,
}

/// Resources of a firmware instance (Core E.6; 33629 the same, plus 14, 15).
pub const PACKAGE_URI: u16 = 1;
pub const UPDATE: u16 = 2;
pub const STATE: u16 = 3;
pub const UPDATE_RESULT: u16 = 5;
const PROTOCOL_SUPPORT: u16 = 8;
const DELIVERY_METHOD: u16 = 9;
const COMPONENT_NAME: u16 = 14;
const CURRENT_VERSION: u16 = 15;

impl Component {
    pub fn new(
        kind: ComponentKind,
        package_uri: String,
        coap_uri: Option<String>,
        target_version: String,
    ) -> Component {
        Component {
            kind,
            package_uri,
            coap_uri,
            target_version,
            base_version: None,
            instance: 0,
        }
    }

    /// Resource `res` of this component's instance.
    pub fn at(&self, carrier: Carrier, res: u16) -> ResourcePath {
        ResourcePath::new(&[carrier.object_id(), self.instance, res]).expect("resource path")
    }

    /// The instance itself (`/5/0`, `/33629/1`).
    pub fn instance_path(&self, carrier: Carrier) -> ResourcePath {
        ResourcePath::new(&[carrier.object_id(), self.instance]).expect("instance path")
    }

    /// Where the device reports this component's running version: Firmware
    /// Version `/3/0/3` with Object 5, Current Version `/33629/x/15` with
    /// Object 33629.
    pub fn version_path(&self, carrier: Carrier) -> ResourcePath {
        match carrier {
            Carrier::Object5 => ResourcePath::new(&[3, 0, 3]).expect("path"),
            Carrier::Advanced => self.at(carrier, CURRENT_VERSION),
        }
    }

    /// Find this component's Object 33629 instance among `records` (a Read
    /// of the object) by its Component Name.
    pub fn find_instance(&mut self, records: &[Record]) -> Result<(), String> {
        let names: Vec<(u16, String)> = records
            .iter()
            .filter(|r| {
                r.path.depth() == 3 && r.path.ids()[0] == ADVANCED_FIRMWARE_UPDATE && r.path.ids()[2] == COMPONENT_NAME
            })
            .map(|r| (r.path.ids()[1], text(&r.value)))
            .collect();
        match names.iter().find(|(_, n)| self.kind.named_by(n)) {
            Some((i, _)) => {
                self.instance = *i;
                Ok(())
            }
            None => Err(format!(
                "the device has no Advanced Firmware Update (/33629) instance for the {} (its components: {})",
                self.kind.as_str(),
                if names.is_empty() {
                    "none named".to_string()
                } else {
                    names
                        .iter()
                        .map(|(i, n)| format!("{i} {n:?}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            )),
        }
    }

    /// Pick the Package URI the device can fetch (Core E.6): HTTP(S) when
    /// Firmware Update Protocol Support (8) lists 2 or 3 (or is absent),
    /// CoAP(S) when it lists only 0 and 1 and a CoAP URI exists; a device
    /// that takes push only (Delivery Method 9 = 1) cannot be served by
    /// pull.
    pub fn choose_uri(&mut self, carrier: Carrier, records: &[Record]) -> Result<(), String> {
        let delivery = self.at(carrier, DELIVERY_METHOD);
        if int_at(records, &delivery) == Some(1) {
            return Err(format!(
                "the device takes firmware by push only ({delivery} = 1); flownexus delivers by pull"
            ));
        }
        let support = self.at(carrier, PROTOCOL_SUPPORT);
        let protocols: Vec<i64> = records
            .iter()
            .filter(|r| r.path.depth() == 4 && r.path.ids()[..3] == *support.ids())
            .filter_map(|r| match r.value {
                Value::Integer(i) => Some(i),
                _ => None,
            })
            .collect();
        if protocols.is_empty() || protocols.iter().any(|p| matches!(p, 2 | 3)) {
            return Ok(());
        }
        match &self.coap_uri {
            Some(uri) if protocols.iter().any(|p| matches!(p, 0 | 1)) => {
                self.package_uri = uri.clone();
                Ok(())
            }
            _ => Err(format!(
                "the device fetches firmware only by protocols {protocols:?} ({support}: 0 CoAP, 1 CoAPS, 2 HTTP, 3 HTTPS) \
                 and no Package URI for them is configured (fw.coap_public_url)"
            )),
        }
    }

    /// Is `reported` (what the device says it runs) this component's
    /// `version`? A modem reports its firmware as `mfw_nrf9160_1.3.5`, which
    /// an operator may have added as `1.3.5`: for the modem the number
    /// after the last `_` counts.
    pub fn same_version(&self, reported: &str, version: &str) -> bool {
        let numbers = |v: &'_ str| -> String {
            match v.rsplit_once('_') {
                Some((_, n)) if n.starts_with(|c: char| c.is_ascii_digit()) => n.to_string(),
                _ => v.to_string(),
            }
        };
        super::same_version(reported, version)
            || (self.kind == ComponentKind::Modem && super::same_version(&numbers(reported), &numbers(version)))
    }

    /// Does the device report this component's target version?
    pub fn reached(&self, reported: &str) -> bool {
        self.same_version(reported, &self.target_version)
    }

    /// A modem delta on a device whose modem runs another version than its
    /// base would fail to apply (or brick the modem): refuse it. `running`
    /// is what the device reports, if known.
    pub fn check_base(&self, running: Option<&str>) -> Result<(), String> {
        match (&self.base_version, running) {
            (Some(base), Some(v)) if !self.same_version(v, base) => {
                Err(format!("the modem runs {v:?}; this delta applies to {base:?} only"))
            }
            _ => Ok(()),
        }
    }

    /// The version the device reports for this component among `records`.
    pub fn reported_version(&self, carrier: Carrier, records: &[Record]) -> Option<String> {
        let p = self.version_path(carrier);
        records.iter().find(|r| r.path == p).map(|r| text(&r.value))
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        v => v.to_text(),
    }
}

/// The integer value at `p` among `records`, if any.
pub fn int_at(records: &[Record], p: &ResourcePath) -> Option<i64> {
    records.iter().find(|r| r.path == *p).and_then(|r| match r.value {
        Value::Integer(i) | Value::Time(i) => Some(i),
        Value::Unsigned(u) => i64::try_from(u).ok(),
        _ => None,
    })
}
