//! The REST API reference as Markdown, rendered from the OpenAPI document
//! the route table generates (`route::openapi`): `docs/api.md` is this
//! rendering, and a test fails when it is stale, so the reference cannot
//! drift from the routes. Pure: a JSON value in, text out.

use serde_json::Value;

/// `#/components/schemas/Name` → `Name`.
fn ref_name(v: &Value) -> Option<&str> {
    v.get("$ref")?.as_str()?.rsplit('/').next()
}

/// A schema in a few words: a link to a named schema, `array of …`, or
/// its type (with the allowed values of an enumeration).
fn type_of(schema: &Value) -> String {
    if let Some(name) = ref_name(schema) {
        return format!("[{name}](#{})", name.to_lowercase());
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(parts) = schema.get(key).and_then(Value::as_array) {
            let names: Vec<String> = parts
                .iter()
                .filter(|p| p.get("type").and_then(Value::as_str) != Some("null"))
                .map(type_of)
                .collect();
            return names.join(" or ");
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
        return format!("one of {}", shown.join(", "));
    }
    match schema.get("type") {
        Some(Value::String(t)) if t == "array" => {
            format!("array of {}", schema.get("items").map_or("any".into(), type_of))
        }
        Some(Value::String(t)) => match schema.get("format").and_then(Value::as_str) {
            Some(f) => format!("{t} ({f})"),
            None => t.clone(),
        },
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect::<Vec<_>>()
            .join(" or "),
        _ => "any".into(),
    }
}

/// Table cells may not hold `|` or line breaks.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The request or response body line of an operation.
fn body_line(label: &str, body: &Value) -> Option<String> {
    let content = body.get("content")?.as_object()?;
    let (media, spec) = content.iter().next()?;
    let schema = spec.get("schema").map_or("any".into(), type_of);
    Some(format!("- {label}: `{media}`, {schema}\n"))
}

pub fn markdown(doc: &Value) -> String {
    let mut out = String::new();
    let title = doc["info"]["title"].as_str().unwrap_or("API");
    out.push_str(&format!("# {title}\n\n"));
    out.push_str(
        "<!-- Rendered from the OpenAPI document the route table generates \
         (src/web/api_reference.rs); a test fails when it is stale. -->\n\n",
    );
    if let Some(d) = doc["info"]["description"].as_str() {
        out.push_str(d);
        out.push_str("\n\n");
    }
    out.push_str(
        "The same document is served as JSON at `/api/v1/openapi.json`. Every request \
         needs a bearer token of a user with at least the role named under each operation, \
         except where it says *public*. Errors have one body, [ErrorBody](#errorbody).\n\n",
    );
    let Some(paths) = doc["paths"].as_object() else {
        return out;
    };
    // Group by tag, in the order tags first appear.
    let mut tags: Vec<String> = Vec::new();
    for ops in paths.values() {
        for op in ops.as_object().into_iter().flat_map(|o| o.values()) {
            let tag = op["tags"][0].as_str().unwrap_or("other").to_string();
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
    }
    for tag in &tags {
        out.push_str(&format!("## {tag}\n\n"));
        for (path, ops) in paths {
            for (method, op) in ops.as_object().into_iter().flat_map(|o| o.iter()) {
                if op["tags"][0].as_str().unwrap_or("other") != tag {
                    continue;
                }
                out.push_str(&format!("### `{} {path}`\n\n", method.to_uppercase()));
                if let Some(s) = op["summary"].as_str() {
                    out.push_str(&format!("{s}\n\n"));
                }
                if op
                    .get("security")
                    .is_some_and(|s| s.as_array().is_some_and(Vec::is_empty))
                {
                    out.push_str("- access: public\n");
                } else {
                    let role = op["x-role"].as_str().unwrap_or("any signed-in user");
                    out.push_str(&format!("- least role: {role}\n"));
                }
                if let Some(b) = op.get("requestBody").and_then(|b| body_line("request body", b)) {
                    out.push_str(&b);
                }
                if let Some(responses) = op["responses"].as_object() {
                    for (status, r) in responses.iter().filter(|(s, _)| *s != "default") {
                        match body_line(&format!("response {status}"), r) {
                            Some(line) => out.push_str(&line),
                            None => out.push_str(&format!("- response {status}: no body\n")),
                        }
                    }
                }
                let params = op["parameters"].as_array().cloned().unwrap_or_default();
                if !params.is_empty() {
                    out.push_str("\n| parameter | in | type | required | meaning |\n| --- | --- | --- | --- | --- |\n");
                    for p in &params {
                        out.push_str(&format!(
                            "| `{}` | {} | {} | {} | {} |\n",
                            p["name"].as_str().unwrap_or(""),
                            p["in"].as_str().unwrap_or(""),
                            cell(&type_of(&p["schema"])),
                            if p["required"].as_bool() == Some(true) {
                                "yes"
                            } else {
                                "no"
                            },
                            cell(p["description"].as_str().unwrap_or("")),
                        ));
                    }
                }
                out.push('\n');
            }
        }
    }
    out.push_str("## Schemas\n\n");
    if let Some(schemas) = doc["components"]["schemas"].as_object() {
        for (name, s) in schemas {
            out.push_str(&format!("### {name}\n\n"));
            if let Some(d) = s["description"].as_str() {
                out.push_str(&format!("{}\n\n", d.trim()));
            }
            let required: Vec<&str> = s["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            match s["properties"].as_object() {
                Some(props) if !props.is_empty() => {
                    out.push_str("| field | type | required | meaning |\n| --- | --- | --- | --- |\n");
                    for (field, p) in props {
                        out.push_str(&format!(
                            "| `{field}` | {} | {} | {} |\n",
                            cell(&type_of(p)),
                            if required.contains(&field.as_str()) {
                                "yes"
                            } else {
                                "no"
                            },
                            cell(p["description"].as_str().unwrap_or("").trim()),
                        ));
                    }
                    out.push('\n');
                }
                _ => out.push_str(&format!("{}\n\n", type_of(s))),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_read_as_words() {
        let j = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert_eq!(
            type_of(&j(r##"{"$ref":"#/components/schemas/Device"}"##)),
            "[Device](#device)"
        );
        assert_eq!(
            type_of(&j(r#"{"type":"array","items":{"type":"string"}}"#)),
            "array of string"
        );
        assert_eq!(type_of(&j(r#"{"type":["string","null"]}"#)), "string");
        assert_eq!(type_of(&j(r#"{"enum":["a","b"]}"#)), "one of `a`, `b`");
        assert_eq!(type_of(&j(r#"{"type":"integer","format":"int64"}"#)), "integer (int64)");
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }

    #[test]
    fn the_reference_in_docs_is_current() {
        let want = markdown(&super::super::route::openapi());
        assert!(want.contains("### `GET /api/v1/devices`"), "{want}");
        crate::rendered_docs::assert_current("docs/api.md", &want);
    }
}
