//! Pre-parses the object definitions compiled into the binary: the OMA
//! LwM2M registry (`src/lwm2m/registry/`, every file verbatim with its
//! licence header) and the older object versions and vendor objects in
//! `src/lwm2m/ddf/`. The parser is the server's own (`src/lwm2m/ddf.rs`),
//! so an embedded definition reads exactly as an operator's file would.
//! The output is a static table: nothing to parse at start-up, and the
//! binary carries names, types and units rather than 3.8 MB of
//! descriptions. Each file's licence notice is kept, once per distinct
//! text, in the table's `NOTICES` (`flownexus objects --notices`).

#[allow(dead_code)]
#[path = "src/lwm2m/ddf.rs"]
mod ddf;

use std::fmt::Write as _;
use std::path::Path;

const SOURCES: [&str; 2] = ["src/lwm2m/registry", "src/lwm2m/ddf"];

fn main() {
    println!("cargo::rerun-if-changed=src/lwm2m/ddf.rs");
    let mut notices: Vec<String> = Vec::new();
    let mut table = String::from("static EMBEDDED: &[EmbeddedObject] = &[\n");
    for dir in SOURCES {
        println!("cargo::rerun-if-changed={dir}");
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "xml"))
            .collect();
        files.sort();
        for path in files {
            let xml = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let notice = notice(&xml).map(|n| match notices.iter().position(|k| *k == n) {
                Some(i) => i,
                None => {
                    notices.push(n);
                    notices.len() - 1
                }
            });
            for o in ddf::parse_ddf(&xml).unwrap_or_else(|e| panic!("{}: {e}", path.display())) {
                emit(&mut table, &path, notice, &o);
            }
        }
    }
    table.push_str("];\n");
    let _ = writeln!(table, "static NOTICES: &[&str] = &{notices:?};");
    let out = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("embedded_models.rs");
    std::fs::write(&out, table).expect("write the embedded model table");
}

/// The file's first XML comment: its copyright and licence notice.
fn notice(xml: &str) -> Option<String> {
    let start = xml.find("<!--")? + 4;
    let end = start + xml[start..].find("-->")?;
    Some(xml[start..end].trim().to_string())
}

fn emit(out: &mut String, path: &Path, notice: Option<usize>, o: &ddf::ObjectModel) {
    let _ = write!(
        out,
        "EmbeddedObject {{ file: {:?}, notice: {notice:?}, id: {}, version: {:?}, name: {:?}, multiple: {}, mandatory: {}, resources: &[",
        path.display().to_string(),
        o.id,
        o.version,
        o.name,
        o.multiple,
        o.mandatory
    );
    for r in o.resources.values() {
        let _ = write!(
            out,
            "EmbeddedResource {{ id: {}, name: {:?}, operations: {:?}, multiple: {}, mandatory: {}, rtype: ResourceType::{:?}, units: {:?} }},",
            r.id, r.name, r.operations, r.multiple, r.mandatory, r.rtype, r.units
        );
    }
    out.push_str("] },\n");
}
