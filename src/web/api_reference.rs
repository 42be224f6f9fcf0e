//! The REST API reference, read from the OpenAPI document the route table
//! generates (`route::openapi`) into a small model, then rendered twice:
//! as Markdown (`docs/api.md`; a test fails when it is stale, so the
//! reference cannot drift from the routes) and as the dashboard's `/api`
//! page (server-rendered under the same CSP as every page). Pure: a JSON
//! value in, the model out.

use serde_json::Value;

/// A type in words, in pieces: plain text, or the name of a schema of the
/// reference (a link on the page, `[Name](#name)` in Markdown).
#[derive(Debug, Clone, PartialEq)]
pub enum Words {
    Text(String),
    Schema(String),
}

impl Words {
    pub fn text(&self) -> &str {
        match self {
            Words::Text(t) | Words::Schema(t) => t,
        }
    }

    /// The anchor of the schema it names, if it names one.
    pub fn anchor(&self) -> Option<String> {
        match self {
            Words::Schema(n) => Some(n.to_lowercase()),
            Words::Text(_) => None,
        }
    }
}

pub type TypeWords = Vec<Words>;

fn text(s: impl Into<String>) -> TypeWords {
    vec![Words::Text(s.into())]
}

/// `#/components/schemas/Name` → `Name`.
fn ref_name(v: &Value) -> Option<&str> {
    v.get("$ref")?.as_str()?.rsplit('/').next()
}

/// Pieces joined with a word between them.
fn joined(parts: Vec<TypeWords>, with: &str) -> TypeWords {
    let mut out = Vec::new();
    for (i, p) in parts.into_iter().enumerate() {
        if i > 0 {
            out.push(Words::Text(with.to_string()));
        }
        out.extend(p);
    }
    out
}

/// A schema in a few words: a named schema, `array of …`, or its type
/// (with the allowed values of an enumeration).
pub fn type_of(schema: &Value) -> TypeWords {
    if let Some(name) = ref_name(schema) {
        return vec![Words::Schema(name.to_string())];
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(parts) = schema.get(key).and_then(Value::as_array) {
            let parts = parts
                .iter()
                .filter(|p| p.get("type").and_then(Value::as_str) != Some("null"))
                .map(type_of)
                .collect();
            return joined(parts, " or ");
        }
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let shown: Vec<String> = values
            .iter()
            .map(|v| match v {
                Value::String(s) => format!("`{s}`"),
                other => format!("`{other}`"),
            })
            .collect();
        return text(format!("one of {}", shown.join(", ")));
    }
    match schema.get("type") {
        Some(Value::String(t)) if t == "array" => {
            let mut out = text("array of ");
            out.extend(schema.get("items").map_or_else(|| text("any"), type_of));
            out
        }
        Some(Value::String(t)) => match schema.get("format").and_then(Value::as_str) {
            Some(f) => text(format!("{t} ({f})")),
            None => text(t.clone()),
        },
        Some(Value::Array(ts)) => text(
            ts.iter()
                .filter_map(Value::as_str)
                .filter(|t| *t != "null")
                .collect::<Vec<_>>()
                .join(" or "),
        ),
        _ => text("any"),
    }
}

pub struct Param {
    pub name: String,
    pub location: String,
    pub kind: TypeWords,
    pub required: bool,
    pub meaning: String,
}

/// A request or response body: its media type and schema, or none.
pub struct Body {
    pub label: String,
    pub media: Option<String>,
    pub kind: TypeWords,
}

pub struct Operation {
    pub method: String,
    pub path: String,
    /// `method path` as an anchor.
    pub anchor: String,
    pub summary: String,
    /// "public", or the least role that may call it.
    pub access: String,
    pub bodies: Vec<Body>,
    pub params: Vec<Param>,
}

pub struct Section {
    pub tag: String,
    pub operations: Vec<Operation>,
}

pub struct Field {
    pub name: String,
    pub kind: TypeWords,
    pub required: bool,
    pub meaning: String,
}

pub struct Schema {
    pub name: String,
    /// The anchor its links point at (`#name` in lower case).
    pub anchor: String,
    pub description: String,
    pub fields: Vec<Field>,
    /// What a schema without fields is (an enumeration, an array, …).
    pub otherwise: TypeWords,
}

pub struct Reference {
    pub title: String,
    pub description: String,
    pub sections: Vec<Section>,
    pub schemas: Vec<Schema>,
}

/// A body of an operation or response, if it has content.
fn body(label: String, b: &Value) -> Body {
    match b
        .get("content")
        .and_then(Value::as_object)
        .and_then(|c| c.iter().next())
    {
        Some((media, spec)) => Body {
            label,
            media: Some(media.clone()),
            kind: spec.get("schema").map_or_else(|| text("any"), type_of),
        },
        None => Body {
            label,
            media: None,
            kind: Vec::new(),
        },
    }
}

/// The model of `doc`, an OpenAPI 3 document.
pub fn reference(doc: &Value) -> Reference {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    // Sections by tag, in the order tags first appear.
    let mut sections: Vec<Section> = Vec::new();
    for (path, ops) in &paths {
        for (method, op) in ops.as_object().into_iter().flat_map(|o| o.iter()) {
            let tag = op["tags"][0].as_str().unwrap_or("other").to_string();
            let public = op
                .get("security")
                .is_some_and(|s| s.as_array().is_some_and(Vec::is_empty));
            let mut bodies = Vec::new();
            if let Some(b) = op.get("requestBody") {
                bodies.push(body("request body".into(), b));
            }
            for (status, r) in op["responses"].as_object().into_iter().flatten() {
                if status != "default" {
                    bodies.push(body(format!("response {status}"), r));
                }
            }
            let params = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| Param {
                    name: s(&p["name"]),
                    location: s(&p["in"]),
                    kind: type_of(&p["schema"]),
                    required: p["required"].as_bool() == Some(true),
                    meaning: s(&p["description"]),
                })
                .collect();
            let operation = Operation {
                method: method.to_uppercase(),
                path: path.clone(),
                anchor: format!("{method}-{path}")
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .collect(),
                summary: s(&op["summary"]),
                access: if public {
                    "public".into()
                } else {
                    op["x-role"].as_str().unwrap_or("any signed-in user").to_string()
                },
                bodies,
                params,
            };
            match sections.iter_mut().find(|x| x.tag == tag) {
                Some(section) => section.operations.push(operation),
                None => sections.push(Section {
                    tag,
                    operations: vec![operation],
                }),
            }
        }
    }
    let schemas = doc["components"]["schemas"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, sch)| {
            let required: Vec<&str> = sch["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let fields: Vec<Field> = sch["properties"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(field, p)| Field {
                    name: field.clone(),
                    kind: type_of(p),
                    required: required.contains(&field.as_str()),
                    meaning: s(&p["description"]).trim().to_string(),
                })
                .collect();
            Schema {
                name: name.clone(),
                anchor: name.to_lowercase(),
                description: s(&sch["description"]).trim().to_string(),
                otherwise: if fields.is_empty() { type_of(sch) } else { Vec::new() },
                fields,
            }
        })
        .collect();
    Reference {
        title: s(&doc["info"]["title"]),
        description: s(&doc["info"]["description"]),
        sections,
        schemas,
    }
}

/// A type as Markdown.
fn md_type(words: &TypeWords) -> String {
    words
        .iter()
        .map(|w| match w {
            Words::Text(t) => t.clone(),
            Words::Schema(n) => format!("[{n}](#{})", n.to_lowercase()),
        })
        .collect()
}

/// Table cells may not hold `|` or line breaks.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// `docs/api.md`.
pub fn markdown(doc: &Value) -> String {
    let r = reference(doc);
    let mut out = format!("# {}\n\n", r.title);
    out.push_str(
        "<!-- Rendered from the OpenAPI document the route table generates \
         (src/web/api_reference.rs); a test fails when it is stale. -->\n\n",
    );
    if !r.description.is_empty() {
        out.push_str(&format!("{}\n\n", r.description));
    }
    out.push_str(
        "The same document is served as JSON at `/api/v1/openapi.json`, and as a page at `/api` \
         on the dashboard. Every request needs a bearer token of a user with at least the role \
         named under each operation, except where it says *public*. Errors have one body, \
         [ErrorBody](#errorbody).\n\n",
    );
    for section in &r.sections {
        out.push_str(&format!("## {}\n\n", section.tag));
        for op in &section.operations {
            out.push_str(&format!("### `{} {}`\n\n", op.method, op.path));
            if !op.summary.is_empty() {
                out.push_str(&format!("{}\n\n", op.summary));
            }
            if op.access == "public" {
                out.push_str("- access: public\n");
            } else {
                out.push_str(&format!("- least role: {}\n", op.access));
            }
            for b in &op.bodies {
                match &b.media {
                    Some(m) => out.push_str(&format!("- {}: `{m}`, {}\n", b.label, md_type(&b.kind))),
                    None => out.push_str(&format!("- {}: no body\n", b.label)),
                }
            }
            if !op.params.is_empty() {
                out.push_str("\n| parameter | in | type | required | meaning |\n| --- | --- | --- | --- | --- |\n");
                for p in &op.params {
                    out.push_str(&format!(
                        "| `{}` | {} | {} | {} | {} |\n",
                        p.name,
                        p.location,
                        cell(&md_type(&p.kind)),
                        if p.required { "yes" } else { "no" },
                        cell(&p.meaning),
                    ));
                }
            }
            out.push('\n');
        }
    }
    out.push_str("## Schemas\n\n");
    for sch in &r.schemas {
        out.push_str(&format!("### {}\n\n", sch.name));
        if !sch.description.is_empty() {
            out.push_str(&format!("{}\n\n", sch.description));
        }
        if sch.fields.is_empty() {
            out.push_str(&format!("{}\n\n", md_type(&sch.otherwise)));
            continue;
        }
        out.push_str("| field | type | required | meaning |\n| --- | --- | --- | --- |\n");
        for f in &sch.fields {
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                f.name,
                cell(&md_type(&f.kind)),
                if f.required { "yes" } else { "no" },
                cell(&f.meaning),
            ));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_read_as_words() {
        let j = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        let md = |s: &str| md_type(&type_of(&j(s)));
        assert_eq!(md(r##"{"$ref":"#/components/schemas/Device"}"##), "[Device](#device)");
        assert_eq!(md(r#"{"type":"array","items":{"type":"string"}}"#), "array of string");
        assert_eq!(
            type_of(&j(
                r##"{"type":"array","items":{"$ref":"#/components/schemas/Device"}}"##
            )),
            vec![Words::Text("array of ".into()), Words::Schema("Device".into())]
        );
        assert_eq!(md(r#"{"type":["string","null"]}"#), "string");
        assert_eq!(md(r#"{"enum":["a","b"]}"#), "one of `a`, `b`");
        assert_eq!(md(r#"{"type":"integer","format":"int64"}"#), "integer (int64)");
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }

    #[test]
    fn the_reference_in_docs_is_current() {
        let want = markdown(&super::super::route::openapi());
        assert!(want.contains("### `GET /api/v1/devices`"), "{want}");
        crate::rendered_docs::assert_current("docs/api.md", &want);
    }
}
