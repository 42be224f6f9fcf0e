//! OMA DDF XML object definitions (LwM2M Core §5.1, Appendix D): the
//! types and the parser. Self-contained (std and roxmltree only) because
//! the build script includes this file to pre-parse the embedded OMA
//! registry, and the server uses it for an operator's own DDF files: one
//! parser for both.

use std::collections::BTreeMap;

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
            // The 1.1 schema (LWM2M-v1_1.xsd) spells it without the space
            // the 1.0 DDFs use.
            "Unsigned Integer" | "UnsignedInteger" => ResourceType::UnsignedInteger,
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
    pub id: u16,
    pub name: String,
    /// `ObjectVersion` (Core 1.1 Appendix D): "1.0" when the file has none.
    pub version: String,
    pub multiple: bool,
    pub mandatory: bool,
    pub resources: BTreeMap<u16, ResourceModel>,
}

fn child_text<'a>(node: roxmltree::Node<'a, 'a>, name: &str) -> Option<&'a str> {
    node.children()
        .find(|c| c.has_tag_name(name))
        .map(|c| c.text().unwrap_or("").trim())
}

/// Parse a DDF document (one or more `<Object>` under `<LWM2M>`).
pub fn parse_ddf(xml: &str) -> Result<Vec<ObjectModel>, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for obj in doc.descendants().filter(|n| n.has_tag_name("Object")) {
        let id: u16 = child_text(obj, "ObjectID")
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
            version: child_text(obj, "ObjectVersion")
                .filter(|v| !v.is_empty())
                .unwrap_or("1.0")
                .to_string(),
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
