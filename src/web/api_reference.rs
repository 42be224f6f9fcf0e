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

/// One alternative of a tagged union (`oneOf` of objects).
pub struct Variant {
    /// The tag's value that selects it (`read` for `"op": "read"`), or
    /// its number when the union has no tag.
    pub tag_value: String,
    pub anchor: String,
    pub description: String,
    pub fields: Vec<Field>,
}

/// Values of an enumeration built of described alternatives.
pub struct EnumValues {
    pub values: Vec<String>,
    pub meaning: String,
}

pub struct Schema {
    pub name: String,
    /// The anchor its links point at (`#name` in lower case).
    pub anchor: String,
    pub description: String,
    pub fields: Vec<Field>,
    /// A tagged union: the field that tells the alternatives apart (none
    /// when they have no common tag) and each alternative's fields. When
    /// the alternatives are another schema's, `union_of` names it instead.
    pub tag: Option<String>,
    pub variants: Vec<Variant>,
    pub union_of: Option<String>,
    /// An enumeration whose values come with meanings.
    pub values: Vec<EnumValues>,
    /// What a schema without fields, variants or values is (an array, a
    /// plain enumeration, …).
    pub otherwise: TypeWords,
}

/// The fields of an object schema, in the document's (alphabetical) order.
fn fields_of(sch: &Value) -> Vec<Field> {
    let required: Vec<&str> = sch["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    sch["properties"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(field, p)| Field {
            name: field.clone(),
            kind: type_of(p),
            required: required.contains(&field.as_str()),
            meaning: p["description"].as_str().unwrap_or("").trim().to_string(),
        })
        .collect()
}

/// The single value a property is fixed to (`{"enum": ["read"]}`).
fn constant(p: &Value) -> Option<&str> {
    match p.get("enum")?.as_array()?.as_slice() {
        [Value::String(v)] => Some(v),
        _ => None,
    }
}

/// The property every alternative fixes to a value of its own: serde's
/// internally tagged enums (`#[serde(tag = "op")]`).
fn union_tag(alternatives: &[Value]) -> Option<String> {
    let first = alternatives.first()?["properties"].as_object()?;
    first
        .keys()
        .find(|k| {
            alternatives
                .iter()
                .all(|a| constant(&a["properties"][k.as_str()]).is_some())
        })
        .cloned()
}

fn alternatives(sch: &Value) -> &[Value] {
    ["oneOf", "anyOf"]
        .iter()
        .find_map(|k| sch.get(*k).and_then(Value::as_array))
        .map_or(&[], Vec::as_slice)
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
    let all = doc["components"]["schemas"].as_object().cloned().unwrap_or_default();
    let schemas = all
        .iter()
        .map(|(name, sch)| {
            let anchor = name.to_lowercase();
            let fields = fields_of(sch);
            let alts = alternatives(sch);
            let objects = !alts.is_empty() && alts.iter().all(|a| a.get("properties").is_some());
            let enums = !alts.is_empty() && alts.iter().all(|a| a.get("enum").is_some());
            // A union another schema already is (a flattened field) is
            // named, not spelt out twice.
            let union_of = objects
                .then(|| {
                    all.iter()
                        .find(|(other, o)| *other != name && fields_of(o).is_empty() && alternatives(o) == alts)
                        .map(|(other, _)| other.clone())
                })
                .flatten();
            let tag = if objects { union_tag(alts) } else { None };
            let variants = if objects && union_of.is_none() {
                alts.iter()
                    .enumerate()
                    .map(|(i, a)| {
                        let tag_value = tag
                            .as_deref()
                            .and_then(|t| constant(&a["properties"][t]))
                            .map_or_else(|| (i + 1).to_string(), str::to_string);
                        Variant {
                            anchor: format!("{anchor}-{tag_value}"),
                            tag_value,
                            description: s(&a["description"]).trim().to_string(),
                            fields: fields_of(a)
                                .into_iter()
                                .filter(|f| Some(&f.name) != tag.as_ref())
                                .collect(),
                        }
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let values: Vec<EnumValues> = if enums {
                alts.iter()
                    .map(|a| EnumValues {
                        values: a["enum"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                            .collect(),
                        meaning: s(&a["description"]).trim().to_string(),
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let plain = fields.is_empty() && variants.is_empty() && union_of.is_none() && values.is_empty();
            Schema {
                name: name.clone(),
                anchor,
                description: s(&sch["description"]).trim().to_string(),
                otherwise: if plain { type_of(sch) } else { Vec::new() },
                fields,
                tag,
                variants,
                union_of,
                values,
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

/// A worked example: what it does, and a shell script of curl calls.
/// `tests/system/web.rs` runs every one against a server with a simulated
/// device, so none can go stale.
pub struct Example {
    pub title: &'static str,
    pub intro: &'static str,
    pub script: &'static str,
}

/// What the examples assume is set.
pub const EXAMPLE_SETUP: &str = "FNX=https://dashboard.example.com
TOKEN=fnx_...                 # an API token: the Tokens page, or POST /api/v1/tokens
EP=urn:imei:351234567890123   # a device's endpoint name";

pub const EXAMPLES: &[Example] = &[
    Example {
        title: "Read a resource",
        intro: "An operation is queued and goes out when the device is reachable (a \
                queue-mode device: at its next uplink); the answer, 202, is the \
                operation. Its `state` goes `queued`, `sent`, `succeeded` (or `failed`, \
                `expired`), and `result` then holds the values.",
        script: r#"op=$(curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"op":"read","path":"/3/0/0"}' "$FNX/api/v1/devices/$EP/operations" | jq .id)
curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" "$FNX/api/v1/operations/$op" | jq '{state, result}'"#,
    },
    Example {
        title: "Write a resource",
        intro: "Values are text, typed with the object's model (Core §7.4.1's text \
                forms; opaque as hex). A resource is written with Write-Replace; \
                `\"replace\": false` on an object instance is a Partial Update.",
        script: r#"curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"op":"write","path":"/3/0/15","values":[{"path":"/3/0/15","value":"Europe/Berlin"}]}' \
  "$FNX/api/v1/devices/$EP/operations""#,
    },
    Example {
        title: "Execute a resource",
        intro: "Here the temperature sensor's Reset Min and Max Measured Values \
                (IPSO 3303, resource 5605); `args` carries Execute's arguments.",
        script: r#"curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"op":"execute","path":"/3303/0/5605"}' "$FNX/api/v1/devices/$EP/operations""#,
    },
    Example {
        title: "Upload an image and update one device",
        intro: "The version comes from the image (its MCUboot header); the update \
                runs through Object 5 (or 33629) and its timeline is at \
                `GET /api/v1/updates/{id}`.",
        script: r#"curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/octet-stream' \
  --data-binary @app-1.2.0.bin "$FNX/api/v1/firmware?name=app-1.2.0.bin" | jq '{id, version}'
curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"image":"app-1.2.0.bin"}' "$FNX/api/v1/devices/$EP/updates" | jq '{id, phase}'"#,
    },
    Example {
        title: "A campaign, paused and resumed",
        intro: "Every device tagged `plant-a` in three waves, new starts only between \
                01:00 and 05:00 Berlin time; devices already on the image's version \
                are skipped.",
        script: r#"id=$(curl -sS --fail-with-body -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d '{"name":"plant-a to 1.2.0","image":"app-1.2.0.bin","target":{"tag":"plant-a"},
       "waves":[10,"50%","100%"],"window":"01:00-05:00","time_zone":"Europe/Berlin"}' \
  "$FNX/api/v1/campaigns" | jq .id)
curl -sS --fail-with-body -X POST -H "Authorization: Bearer $TOKEN" "$FNX/api/v1/campaigns/$id/pause" | jq .state
curl -sS --fail-with-body -X POST -H "Authorization: Bearer $TOKEN" "$FNX/api/v1/campaigns/$id/resume" | jq .state"#,
    },
];

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
    out.push_str(&format!(
        "## Examples\n\nWith curl and jq, after\n\n```sh\n{EXAMPLE_SETUP}\n```\n\n"
    ));
    for e in EXAMPLES {
        out.push_str(&format!(
            "### {}\n\n{}\n\n```sh\n{}\n```\n\n",
            e.title, e.intro, e.script
        ));
    }
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
        if !sch.otherwise.is_empty() {
            out.push_str(&format!("{}\n\n", md_type(&sch.otherwise)));
        }
        if !sch.values.is_empty() {
            out.push_str("| value | meaning |\n| --- | --- |\n");
            for v in &sch.values {
                let shown: Vec<String> = v.values.iter().map(|x| format!("`{x}`")).collect();
                out.push_str(&format!("| {} | {} |\n", shown.join(", "), cell(&v.meaning)));
            }
            out.push('\n');
        }
        md_fields(&mut out, &sch.fields);
        if let Some(other) = &sch.union_of {
            out.push_str(&format!(
                "{} the fields of one [{other}](#{}).\n\n",
                if sch.fields.is_empty() { "Exactly" } else { "And" },
                other.to_lowercase()
            ));
        }
        if !sch.variants.is_empty() {
            match &sch.tag {
                Some(t) => out.push_str(&format!("One of these objects, told apart by `{t}`:\n\n")),
                None => out.push_str("One of these objects:\n\n"),
            }
            for v in &sch.variants {
                match &sch.tag {
                    Some(t) => out.push_str(&format!("#### `\"{t}\": \"{}\"`\n\n", v.tag_value)),
                    None => out.push_str(&format!("#### variant {}\n\n", v.tag_value)),
                }
                if !v.description.is_empty() {
                    out.push_str(&format!("{}\n\n", v.description));
                }
                if v.fields.is_empty() {
                    out.push_str("No other fields.\n\n");
                }
                md_fields(&mut out, &v.fields);
            }
        }
    }
    out
}

/// A table of fields, if there are any.
fn md_fields(out: &mut String, fields: &[Field]) {
    if fields.is_empty() {
        return;
    }
    out.push_str("| field | type | required | meaning |\n| --- | --- | --- | --- |\n");
    for f in fields {
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
