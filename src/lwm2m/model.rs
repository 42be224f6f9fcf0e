//! The object model: OMA DDF XML object definitions (LwM2M Core §5.1,
//! Appendix D) embedded in the binary, plus custom ones loaded at start.
//!
//! Formats without types (TLV, text/plain, opaque) are decoded with the
//! resource type found here; values are named by it in the CLI and UI.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::lwm2m::path::{ObjectId, ResourcePath};

/// Resource data types (Core Appendix C).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResourceType {
    String,
    Integer,
    UnsignedInteger,
    Float,
    Boolean,
    Opaque,
    Time,
    Objlnk,
    Corelnk,
    /// Executable resources carry no value.
    None,
}

impl ResourceType {
    fn parse(s: &str) -> Option<ResourceType> {
        Some(match s.trim() {
            "String" => ResourceType::String,
            "Integer" => ResourceType::Integer,
            "Unsigned Integer" => ResourceType::UnsignedInteger,
            "Float" => ResourceType::Float,
            "Boolean" => ResourceType::Boolean,
            "Opaque" => ResourceType::Opaque,
            "Time" => ResourceType::Time,
            "Objlnk" => ResourceType::Objlnk,
            "Corelnk" => ResourceType::Corelnk,
            "" | "none" | "None" => ResourceType::None,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResourceModel {
    pub id: u16,
    pub name: String,
    /// `R`, `W`, `RW`, `E` or empty.
    pub operations: String,
    pub multiple: bool,
    pub mandatory: bool,
    pub rtype: ResourceType,
    pub units: String,
}

impl ResourceModel {
    pub fn readable(&self) -> bool {
        self.operations.contains('R')
    }
    pub fn writable(&self) -> bool {
        self.operations.contains('W')
    }
    pub fn executable(&self) -> bool {
        self.operations.contains('E')
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObjectModel {
    pub id: ObjectId,
    pub name: String,
    pub version: String,
    pub multiple: bool,
    pub mandatory: bool,
    pub resources: BTreeMap<u16, ResourceModel>,
}

/// The DDF files compiled into the binary.
const EMBEDDED: &[&str] = &[
    include_str!("ddf/0.xml"),
    include_str!("ddf/1.xml"),
    include_str!("ddf/3.xml"),
    include_str!("ddf/4.xml"),
    include_str!("ddf/5.xml"),
    include_str!("ddf/6.xml"),
    include_str!("ddf/3300.xml"),
    include_str!("ddf/3301.xml"),
    include_str!("ddf/3303.xml"),
    include_str!("ddf/3304.xml"),
    include_str!("ddf/3311.xml"),
    include_str!("ddf/3315.xml"),
    include_str!("ddf/3340.xml"),
    include_str!("ddf/3347.xml"),
    include_str!("ddf/33629.xml"),
];

/// All known object definitions, shared read-only.
#[derive(Debug, Clone, Default)]
pub struct Models {
    objects: HashMap<ObjectId, Arc<ObjectModel>>,
}

impl Models {
    /// The embedded definitions.
    pub fn embedded() -> Models {
        let mut m = Models::default();
        for xml in EMBEDDED {
            for o in parse_ddf(xml).expect("embedded DDF parses") {
                m.objects.insert(o.id, Arc::new(o));
            }
        }
        m
    }

    /// Embedded definitions plus every `*.xml` in `dir`; a custom definition
    /// replaces an embedded one with the same id.
    pub fn with_dir(dir: &Path) -> Result<Models> {
        let mut m = Models::embedded();
        let entries = std::fs::read_dir(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        let mut files: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("xml")))
            .collect();
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
            let objects =
                parse_ddf(&text).map_err(|e| Error::malformed("DDF file", format!("{}: {e}", path.display())))?;
            for o in objects {
                m.objects.insert(o.id, Arc::new(o));
            }
        }
        Ok(m)
    }

    pub fn object(&self, id: ObjectId) -> Option<&ObjectModel> {
        self.objects.get(&id).map(Arc::as_ref)
    }

    /// The resource definition for a path at resource depth or below.
    pub fn resource(&self, path: &ResourcePath) -> Option<&ResourceModel> {
        self.object(path.object()?)?.resources.get(&path.resource()?)
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
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

fn child_text<'a>(node: roxmltree::Node<'a, 'a>, name: &str) -> Option<&'a str> {
    node.children()
        .find(|c| c.has_tag_name(name))
        .map(|c| c.text().unwrap_or("").trim())
}

/// Parse a DDF document (one or more `<Object>` under `<LWM2M>`).
pub fn parse_ddf(xml: &str) -> std::result::Result<Vec<ObjectModel>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for obj in doc.descendants().filter(|n| n.has_tag_name("Object")) {
        let id: ObjectId = child_text(obj, "ObjectID")
            .and_then(|s| s.parse().ok())
            .ok_or("Object without a numeric ObjectID")?;
        let name = child_text(obj, "Name").unwrap_or("").to_string();
        let mut resources = BTreeMap::new();
        if let Some(res) = obj.children().find(|c| c.has_tag_name("Resources")) {
            for item in res.children().filter(|c| c.has_tag_name("Item")) {
                let rid: u16 = item
                    .attribute("ID")
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| format!("object {id}: Item without a numeric ID"))?;
                let t = child_text(item, "Type").unwrap_or("");
                let rtype =
                    ResourceType::parse(t).ok_or_else(|| format!("object {id} resource {rid}: unknown Type `{t}`"))?;
                resources.insert(
                    rid,
                    ResourceModel {
                        id: rid,
                        name: child_text(item, "Name").unwrap_or("").to_string(),
                        operations: child_text(item, "Operations").unwrap_or("").to_string(),
                        multiple: child_text(item, "MultipleInstances") == Some("Multiple"),
                        mandatory: child_text(item, "Mandatory") == Some("Mandatory"),
                        rtype,
                        units: child_text(item, "Units").unwrap_or("").to_string(),
                    },
                );
            }
        }
        out.push(ObjectModel {
            id,
            name,
            version: child_text(obj, "ObjectVersion").unwrap_or("1.0").to_string(),
            multiple: child_text(obj, "MultipleInstances") == Some("Multiple"),
            mandatory: child_text(obj, "Mandatory") == Some("Mandatory"),
            resources,
        });
    }
    if out.is_empty() {
        return Err("no <Object> element".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_objects_are_typed_and_named() {
        let m = Models::embedded();
        assert!(m.len() >= 15);
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
        let m = Models::with_dir(dir.path()).unwrap();
        assert_eq!(m.resource(&"/10241/0/1".parse().unwrap()).unwrap().name, "Flow");
        std::fs::write(dir.path().join("bad.xml"), "<LWM2M><Object>").unwrap();
        let err = Models::with_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("bad.xml"), "{err}");
    }
}
