//! The object model: every object definition of the OMA LwM2M registry,
//! older versions of the core objects and Nordic's Advanced Firmware
//! Update (pre-parsed into the binary by `build.rs`), plus an operator's
//! own DDF files loaded at start.
//!
//! An object can be known in several versions (the DDF's `ObjectVersion`,
//! Core 1.1 Appendix D): a device's tree is drawn with the version it announced
//! (`ver=`, Core 1.1 §6.2.1) when one is known. Formats without types
//! (TLV, text/plain, opaque) are decoded with the object's default
//! definition: across the versions embedded here a resource keeps its
//! type (tested below), so the choice cannot change a decoded value.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, OnceLock};

pub use super::ddf::{ObjectModel, ResourceModel, ResourceType, parse_ddf};
use crate::error::{Error, Result};
use crate::lwm2m::path::{ObjectId, ResourcePath};

/// One definition as `build.rs` lays it out in the binary.
struct EmbeddedObject {
    /// Where it came from, for `flownexus objects --notices`.
    file: &'static str,
    /// Index into `NOTICES`: the copyright and licence notice of its file.
    notice: Option<usize>,
    id: ObjectId,
    version: &'static str,
    name: &'static str,
    multiple: bool,
    mandatory: bool,
    resources: &'static [EmbeddedResource],
}

struct EmbeddedResource {
    id: u16,
    name: &'static str,
    operations: &'static str,
    multiple: bool,
    mandatory: bool,
    rtype: ResourceType,
    units: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/embedded_models.rs"));

/// The copyright and licence notices of the embedded definitions' files,
/// each distinct text once with the files it covers (the registry's
/// BSD-3-Clause licence asks a binary distribution to reproduce them).
pub fn notices() -> Vec<(&'static str, Vec<&'static str>)> {
    NOTICES
        .iter()
        .enumerate()
        .map(|(i, n)| {
            (
                *n,
                EMBEDDED
                    .iter()
                    .filter(|e| e.notice == Some(i))
                    .map(|e| e.file)
                    .collect(),
            )
        })
        .collect()
}

/// `major.minor` as numbers, so "1.10" sorts after "1.2"; anything else
/// sorts first.
fn version_key(v: &str) -> (u32, u32) {
    let mut parts = v.trim().splitn(2, '.');
    let major = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let minor = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// Every known version of one object, and the one that stands for the
/// object when no version is asked for.
#[derive(Debug, Clone)]
struct Versions {
    by_version: BTreeMap<(u32, u32), Arc<ObjectModel>>,
    default: Arc<ObjectModel>,
}

impl Versions {
    fn add(&mut self, o: Arc<ObjectModel>, make_default: bool) {
        let replaces_default = self.default.version == o.version;
        if make_default || replaces_default || version_key(&o.version) > version_key(&self.default.version) {
            self.default = o.clone();
        }
        self.by_version.insert(version_key(&o.version), o);
    }

    /// `wanted` if known; otherwise the nearest version of the same major
    /// (the next higher first: the OMA registry's versioning rule keeps a
    /// minor version backward compatible, adding resources), otherwise
    /// the default.
    fn at(&self, wanted: &str) -> &Arc<ObjectModel> {
        let key = version_key(wanted);
        if let Some(o) = self.by_version.get(&key) {
            return o;
        }
        let same_major = |k: &&(u32, u32)| k.0 == key.0;
        self.by_version
            .range(key..)
            .find(|(k, _)| same_major(k))
            .or_else(|| self.by_version.range(..key).rev().find(|(k, _)| same_major(k)))
            .map_or(&self.default, |(_, o)| o)
    }
}

/// All known object definitions, shared read-only.
#[derive(Debug, Clone, Default)]
pub struct Models {
    objects: HashMap<ObjectId, Versions>,
}

impl Models {
    fn insert(&mut self, o: ObjectModel, make_default: bool) {
        let o = Arc::new(o);
        match self.objects.get_mut(&o.id) {
            Some(v) => v.add(o, make_default),
            None => {
                self.objects.insert(
                    o.id,
                    Versions {
                        by_version: BTreeMap::from([(version_key(&o.version), o.clone())]),
                        default: o,
                    },
                );
            }
        }
    }

    /// The embedded definitions; an object's default is its highest
    /// embedded version (the registry's current one).
    pub fn embedded() -> Models {
        static EMBEDDED_MODELS: OnceLock<Models> = OnceLock::new();
        EMBEDDED_MODELS
            .get_or_init(|| {
                let mut m = Models::default();
                for e in EMBEDDED {
                    m.insert(
                        ObjectModel {
                            id: e.id,
                            name: e.name.to_string(),
                            version: e.version.to_string(),
                            multiple: e.multiple,
                            mandatory: e.mandatory,
                            resources: e
                                .resources
                                .iter()
                                .map(|r| {
                                    (
                                        r.id,
                                        ResourceModel {
                                            id: r.id,
                                            name: r.name.to_string(),
                                            operations: r.operations.to_string(),
                                            multiple: r.multiple,
                                            mandatory: r.mandatory,
                                            rtype: r.rtype,
                                            units: r.units.to_string(),
                                        },
                                    )
                                })
                                .collect(),
                        },
                        false,
                    );
                }
                m.inherit_units();
                m
            })
            .clone()
    }

    /// IPSO objects 1.1 dropped the `Units` of their measurements in
    /// favour of the device-stated Sensor Units (5701), which many clients
    /// leave empty: "21.5" where 1.0 said "21.5 °C". A resource without
    /// units in an object's default definition takes those an older
    /// embedded version gave the same resource of the same type.
    fn inherit_units(&mut self) {
        for v in self.objects.values_mut() {
            let mut default = (*v.default).clone();
            let mut changed = false;
            for (rid, r) in default.resources.iter_mut().filter(|(_, r)| r.units.is_empty()) {
                let older = v.by_version.values().rev().filter_map(|o| o.resources.get(rid));
                if let Some(u) = older
                    .filter(|o| o.rtype == r.rtype && !o.units.is_empty())
                    .map(|o| &o.units)
                    .next()
                {
                    r.units = u.clone();
                    changed = true;
                }
            }
            if changed {
                let default = Arc::new(default);
                v.by_version.insert(version_key(&default.version), default.clone());
                v.default = default;
            }
        }
    }

    /// Embedded definitions plus every `*.xml` in `dir`: a custom
    /// definition replaces the embedded one of the same id and version and
    /// becomes its object's default (the operator's word wins).
    pub fn with_dir(dir: &Path) -> Result<Models> {
        let mut m = Models::embedded();
        let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            cause: source,
        })?;
        let mut files: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("xml")))
            .collect();
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
                path: path.clone(),
                cause: source,
            })?;
            let objects =
                parse_ddf(&text).map_err(|e| Error::malformed("DDF file", format!("{}: {e}", path.display())))?;
            for o in objects {
                m.insert(o, true);
            }
        }
        Ok(m)
    }

    /// The object's default definition.
    pub fn object(&self, id: ObjectId) -> Option<&ObjectModel> {
        self.objects.get(&id).map(|v| v.default.as_ref())
    }

    /// The definition a device announcing `version` of the object is shown
    /// with: that version if known, else the nearest of the same major.
    pub fn object_at(&self, id: ObjectId, version: &str) -> Option<&ObjectModel> {
        self.objects.get(&id).map(|v| v.at(version).as_ref())
    }

    /// Every known version of an object, lowest first.
    pub fn versions(&self, id: ObjectId) -> Vec<&str> {
        self.objects
            .get(&id)
            .map(|v| v.by_version.values().map(|o| o.version.as_str()).collect())
            .unwrap_or_default()
    }

    /// The resource definition for a path at resource depth or below.
    pub fn resource(&self, path: &ResourcePath) -> Option<&ResourceModel> {
        self.object(path.object()?)?.resources.get(&path.resource()?)
    }

    /// Known objects (each counted once, whatever its versions).
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Every object's default definition, by id.
    pub fn objects(&self) -> Vec<&ObjectModel> {
        let mut all: Vec<&ObjectModel> = self.objects.values().map(|v| v.default.as_ref()).collect();
        all.sort_by_key(|o| o.id);
        all
    }

    /// A human name for a path: "Device / Firmware Version".
    pub fn describe(&self, path: &ResourcePath) -> Option<String> {
        let o = self.object(path.object()?)?;
        match path.resource() {
            None => Some(o.name.clone()),
            Some(r) => Some(format!("{} / {}", o.name, o.resources.get(&r)?.name)),
        }
    }
}

/// The object version a device's registration stands for: its `ver`
/// attribute, else the version the enabler's Appendix E gives the core
/// objects (LwM2M 1.1 raised Security, Server and Device to 1.1 and
/// Connectivity Monitoring to 1.2), else 1.0 (Core 1.1 §6.2.1: `ver` is
/// sent only when the version is not the default).
pub fn announced_version(object: ObjectId, ver: Option<&str>, lwm2m_version: &str) -> String {
    if let Some(v) = ver.filter(|v| !v.is_empty()) {
        return v.to_string();
    }
    let enabler_1_1 = version_key(lwm2m_version) >= (1, 1);
    match object {
        0 | 1 | 3 if enabler_1_1 => "1.1",
        4 if enabler_1_1 => "1.2",
        _ => "1.0",
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_objects_are_typed_and_named() {
        let m = Models::embedded();
        let fw = m.resource(&"/3/0/3".parse().unwrap()).unwrap();
        assert_eq!(fw.name, "Firmware Version");
        assert_eq!(fw.rtype, ResourceType::String);
        assert!(fw.readable() && !fw.writable());
        let t = m.resource(&"/3303/0/5700".parse().unwrap()).unwrap();
        assert_eq!(t.rtype, ResourceType::Float);
        assert!(m.resource(&"/5/0/2".parse().unwrap()).unwrap().executable());
        assert!(m.object(33629).is_some());
        assert_eq!(
            m.describe(&"/3/0/9".parse().unwrap()).unwrap(),
            "Device / Battery Level"
        );
    }

    /// The objects Anjay announces that an operator could not name before
    /// the registry was embedded (issue 25), and the registry's size.
    #[test]
    fn the_whole_oma_registry_is_known_by_name() {
        let m = Models::embedded();
        assert!(m.len() >= 327, "{} objects", m.len());
        for (id, name) in [
            (10, "LWM2M Cellular Connectivity"),
            (11, "LWM2M APN Connection Profile"),
            (16, "Portfolio"),
            (19, "BinaryAppDataContainer"),
            (20, "Event Log"),
            (3313, "Accelerometer"),
        ] {
            assert_eq!(m.object(id).map(|o| o.name.as_str()), Some(name), "object {id}");
        }
        // UnsignedInteger, the 1.1 schema's spelling, parses.
        assert_eq!(
            m.resource(&"/3/0/21".parse().unwrap()).map(|r| r.rtype),
            Some(ResourceType::Integer)
        );
        let notices = notices();
        assert!(notices.iter().any(|(n, _)| n.contains("Open Mobile Alliance")));
        assert!(
            notices
                .iter()
                .all(|(n, files)| n.to_lowercase().contains("copyright") && !files.is_empty())
        );
        // Every registry file's notice is kept (two of its files have none).
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lwm2m/registry");
        let with_notice = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|f| {
                std::fs::read_to_string(f.as_ref().unwrap().path())
                    .unwrap()
                    .contains("<!--")
            })
            .count();
        let covered: usize = notices
            .iter()
            .map(|(_, f)| f.iter().filter(|f| f.contains("registry/")).count())
            .sum();
        assert_eq!(covered, with_notice);
    }

    #[test]
    fn a_device_is_shown_the_version_it_announced() {
        let m = Models::embedded();
        assert_eq!(m.versions(3303), ["1.0", "1.1"]);
        assert_eq!(m.object(3303).unwrap().version, "1.1");
        assert_eq!(m.object_at(3303, "1.0").unwrap().version, "1.0");
        assert_eq!(m.object_at(3303, "1.1").unwrap().version, "1.1");
        // Unknown minor: the next higher of the same major, else lower.
        assert_eq!(m.object_at(3, "1.0").unwrap().version, "1.1");
        assert_eq!(m.object_at(3, "1.9").unwrap().version, "1.2");
        // Unknown major: the default.
        assert_eq!(m.object_at(3, "2.0").unwrap().version, "1.2");
        assert_eq!(announced_version(3, None, "1.1"), "1.1");
        assert_eq!(announced_version(3, None, "1.0"), "1.0");
        assert_eq!(announced_version(4, None, "1.2"), "1.2");
        assert_eq!(announced_version(3303, Some("1.1"), "1.0"), "1.1");
        assert_eq!(announced_version(3303, None, "1.1"), "1.0");
    }

    /// Why decoding may use the default version: no embedded object
    /// changes a resource's type between its versions.
    #[test]
    fn resource_types_agree_across_an_objects_versions() {
        let m = Models::embedded();
        for o in m.objects() {
            for v in m.versions(o.id) {
                let older = m.object_at(o.id, v).unwrap();
                for (rid, r) in &older.resources {
                    if let Some(d) = o.resources.get(rid) {
                        assert_eq!(r.rtype, d.rtype, "/{}/x/{rid} {v} vs {}", o.id, o.version);
                    }
                }
            }
        }
    }

    #[test]
    fn custom_dir_overrides_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("10241.xml"),
            r#"<LWM2M><Object><Name>Pump</Name><ObjectID>10241</ObjectID><Resources>
               <Item ID="1"><Name>Flow</Name><Operations>R</Operations><Type>Float</Type></Item>
               </Resources></Object></LWM2M>"#,
        )
        .unwrap();
        // An operator's older version of a registry object becomes that
        // object's default; the registry's version stays reachable.
        std::fs::write(
            dir.path().join("3303.xml"),
            r#"<LWM2M><Object><Name>Site temperature</Name><ObjectID>3303</ObjectID>
               <ObjectVersion>1.0</ObjectVersion><Resources>
               <Item ID="5700"><Name>Reading</Name><Operations>R</Operations><Type>Float</Type></Item>
               </Resources></Object></LWM2M>"#,
        )
        .unwrap();
        let m = Models::with_dir(dir.path()).unwrap();
        assert_eq!(m.resource(&"/10241/0/1".parse().unwrap()).unwrap().name, "Flow");
        assert_eq!(m.object(3303).unwrap().name, "Site temperature");
        assert_eq!(m.object_at(3303, "1.1").unwrap().name, "Temperature");
        std::fs::write(dir.path().join("bad.xml"), "<LWM2M><Object>").unwrap();
        let err = Models::with_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("bad.xml"), "{err}");
    }
}
