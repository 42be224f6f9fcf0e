//! The device page's object tree: the objects and instances a device
//! announced (its registration's object links, Core §6.2.1), each resource
//! of the object model with its latest value and the operations the model
//! allows on it (Core Appendix D: `Operations` R, W, E). Built from plain
//! data, so it is tested without a server.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::lwm2m::Models;
use crate::lwm2m::display::{display, natural_cmp, unit_symbol};
use crate::lwm2m::model::ResourceType;
use crate::lwm2m::path::{ResourcePath, Value};

/// A latest value: where, what, when (Unix ms).
pub struct Latest<'a> {
    pub path: &'a ResourcePath,
    pub value: &'a Value,
    pub ts: i64,
}

pub struct TreeObject {
    pub id: u16,
    pub path: String,
    pub name: String,
    /// The object version the device announced (Core 1.1 §6.2.1), and the
    /// version of the definition it is drawn with when that differs (no
    /// definition of the announced version is known).
    pub version: String,
    pub definition: Option<String>,
    /// A definition knows it; when none does, its resources are those its
    /// values and Discover answers show, and the page offers a Discover.
    pub defined: bool,
    pub instances: Vec<TreeInstance>,
    /// Create is offered on multiple-instance objects (Core §6.3.6); its
    /// form has one typed field per writable resource.
    pub creatable: Vec<TreeResource>,
    pub observed: bool,
    /// Values shown under it, and whether anything in it is observed:
    /// the folded object's one-line summary.
    pub values: usize,
    pub anything_observed: bool,
    /// Shown open: Device and Firmware Update, and objects with values or
    /// observations; the rest are folded to their summary line (a phone
    /// page with every object open ran to 13,000 px).
    pub open: bool,
}

/// Objects an operator always wants to see unfolded: Device (3) and
/// Firmware Update (5).
const ALWAYS_OPEN: [u16; 2] = [3, 5];

pub struct TreeInstance {
    pub path: String,
    pub resources: Vec<TreeResource>,
    /// Delete works on instances of multiple-instance objects only (Core
    /// §6.3.8); never offered on the Server object, whose deletion would
    /// cut the device off from this server.
    pub deletable: bool,
    pub observed: bool,
}

pub struct TreeResource {
    pub id: u16,
    pub path: String,
    /// An HTML id: `r-3-0-13`.
    pub anchor: String,
    pub name: String,
    /// `R W E` as the model gives them; `?` for a resource the model does
    /// not know.
    pub access: String,
    pub unit: String,
    /// (path, as an operator reads it, as the device sent it, reported at):
    /// one for a single resource, one per instance for a multiple one.
    pub values: Vec<(String, String, String, String)>,
    pub readable: bool,
    /// Writes target single resources; a multiple resource's instances are
    /// written with the operation form.
    pub writable: bool,
    pub executable: bool,
    pub observed: bool,
    /// The write input: `integer`, `unsigned`, `float`, `boolean`, `time`,
    /// `opaque`, `objlnk` or `text`.
    pub input: &'static str,
}

fn input_of(t: ResourceType) -> &'static str {
    match t {
        ResourceType::Integer => "integer",
        ResourceType::UnsignedInteger => "unsigned",
        ResourceType::Float => "float",
        ResourceType::Boolean => "boolean",
        ResourceType::Time => "time",
        ResourceType::Opaque => "opaque",
        ResourceType::Objlnk => "objlnk",
        _ => "text",
    }
}

/// A path of one to three ids (never too deep for a path).
fn at(ids: &[u16]) -> ResourcePath {
    ResourcePath::new(ids).expect("at most four ids")
}

fn anchor(path: &ResourcePath) -> String {
    format!("r{}", path.to_string().replace('/', "-"))
}

/// What a device's registration announced, and what its Discovers found.
pub struct Announced<'a> {
    /// The object links of its Register or Update (Core §6.2.1).
    pub paths: &'a [ResourcePath],
    /// When it announced them (Unix ms).
    pub at: i64,
    /// The version of each announced object (`Registration::object_versions`).
    pub versions: &'a BTreeMap<u16, String>,
    /// Paths its Discover answers listed (Core 1.1 §6.3.5).
    pub discovered: &'a [ResourcePath],
}

/// The tree of announced object links (objects and instances), with the
/// instances that only `latest` values reported after the announcement
/// show (created since: a client announces its new list at its next
/// Update, Core §6.2.2) and those a Discover found, in numeric order.
/// `observed` are the paths under observation; `time` formats a Unix-ms
/// instant for the page.
pub fn build(
    models: &Models,
    announced: &Announced<'_>,
    latest: &[Latest<'_>],
    observed: &BTreeSet<ResourcePath>,
    time: &dyn Fn(i64) -> String,
) -> Vec<TreeObject> {
    // object → instances (an object announced without instances has none).
    let mut objects: BTreeMap<u16, BTreeSet<u16>> = BTreeMap::new();
    let mut note = |p: &ResourcePath| {
        if let Some(o) = p.object() {
            let set = objects.entry(o).or_default();
            if let Some(i) = p.instance() {
                set.insert(i);
            }
        }
    };
    announced.paths.iter().for_each(&mut note);
    announced.discovered.iter().for_each(&mut note);
    latest.iter().filter(|l| l.ts > announced.at).for_each(|l| note(l.path));
    // The Security object is never reachable through the Device Management
    // interface (Core Appendix E.1), and a client does not announce it.
    objects.remove(&0);
    let by_path: HashMap<String, &Latest<'_>> = latest.iter().map(|l| (l.path.to_string(), l)).collect();
    let is_observed = |p: &ResourcePath| observed.contains(p);
    let shown = |l: &Latest<'_>| {
        (
            l.path.to_string(),
            display(models, l.path, l.value),
            l.value.to_text(),
            time(l.ts),
        )
    };
    objects
        .into_iter()
        .map(|(oid, instances)| {
            let version = announced.versions.get(&oid).cloned().unwrap_or_default();
            let model = if version.is_empty() {
                models.object(oid)
            } else {
                models.object_at(oid, &version)
            };
            let opath = at(&[oid]);
            let instances: Vec<TreeInstance> = instances
                .into_iter()
                .map(|iid| {
                    let ipath = at(&[oid, iid]);
                    let ids: BTreeSet<u16> = model
                        .map(|m| m.resources.keys().copied().collect::<Vec<u16>>())
                        .unwrap_or_default()
                        .into_iter()
                        .chain(
                            latest
                                .iter()
                                .map(|l| l.path)
                                .chain(announced.discovered)
                                .filter(|p| p.starts_with(&ipath))
                                .filter_map(ResourcePath::resource),
                        )
                        .collect();
                    let resources = ids
                        .into_iter()
                        .map(|rid| {
                            let path = at(&[oid, iid, rid]);
                            let rm = model.and_then(|m| m.resources.get(&rid));
                            let mut values: Vec<_> = match by_path.get(&path.to_string()) {
                                Some(l) => vec![shown(l)],
                                None => latest
                                    .iter()
                                    .filter(|l| l.path.depth() == 4 && l.path.starts_with(&path))
                                    .map(shown)
                                    .collect(),
                            };
                            values.sort_by(|a, b| natural_cmp(&a.0, &b.0));
                            let (readable, writable, executable) = match rm {
                                Some(m) => (m.readable(), m.writable() && !m.multiple, m.executable()),
                                // Unknown to the model: reading is safe;
                                // what a write or execute would do is not
                                // known.
                                None => (true, false, false),
                            };
                            TreeResource {
                                id: rid,
                                anchor: anchor(&path),
                                name: rm.map_or_else(|| format!("Resource {rid}"), |m| m.name.clone()),
                                access: rm.map_or_else(
                                    || "?".to_string(),
                                    |m| m.operations.chars().map(String::from).collect::<Vec<_>>().join(" "),
                                ),
                                unit: rm.map(|m| unit_symbol(m.units.trim()).to_string()).unwrap_or_default(),
                                values,
                                readable,
                                writable,
                                executable,
                                observed: is_observed(&path),
                                input: rm.map_or("text", |m| input_of(m.rtype)),
                                path: path.to_string(),
                            }
                        })
                        .collect();
                    TreeInstance {
                        path: ipath.to_string(),
                        resources,
                        deletable: model.is_some_and(|m| m.multiple) && oid != 1,
                        observed: is_observed(&ipath),
                    }
                })
                .collect();
            let creatable = match model {
                Some(m) if m.multiple && oid != 1 => m
                    .resources
                    .values()
                    .filter(|r| r.writable() && !r.multiple)
                    .map(|r| {
                        let path = at(&[oid, 0, r.id]);
                        TreeResource {
                            id: r.id,
                            path: path.to_string(),
                            anchor: format!("c-{oid}-{}", r.id),
                            name: r.name.clone(),
                            access: r.operations.clone(),
                            unit: unit_symbol(r.units.trim()).to_string(),
                            values: Vec::new(),
                            readable: false,
                            writable: true,
                            executable: false,
                            observed: false,
                            input: input_of(r.rtype),
                        }
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let resources = || instances.iter().flat_map(|i| &i.resources);
            let values = resources().map(|r| r.values.len()).sum();
            let anything_observed =
                is_observed(&opath) || instances.iter().any(|i| i.observed) || resources().any(|r| r.observed);
            TreeObject {
                id: oid,
                path: opath.to_string(),
                name: model.map_or_else(|| format!("Object {oid}"), |m| m.name.clone()),
                definition: model
                    .map(|m| m.version.clone())
                    .filter(|v| !version.is_empty() && *v != version),
                version,
                defined: model.is_some(),
                open: ALWAYS_OPEN.contains(&oid) || values > 0 || anything_observed,
                values,
                anything_observed,
                instances,
                creatable,
                observed: is_observed(&opath),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> ResourcePath {
        s.parse().unwrap()
    }

    #[test]
    fn announced_instances_show_every_modelled_resource_with_its_access() {
        let models = Models::embedded();
        let (v13, v7a, v7b) = (Value::Time(1_796_287_783), Value::Integer(3800), Value::Integer(5000));
        let (p13, p7a, p7b) = (p("/3/0/13"), p("/3/0/7/1"), p("/3/0/7/0"));
        let latest = [
            Latest {
                path: &p13,
                value: &v13,
                ts: 5,
            },
            Latest {
                path: &p7a,
                value: &v7a,
                ts: 6,
            },
            Latest {
                path: &p7b,
                value: &v7b,
                ts: 6,
            },
        ];
        let observed: BTreeSet<_> = [p("/3/0/13"), p("/3303/0")].into();
        let versions: BTreeMap<u16, String> = [(1, "1.1"), (3, "1.0"), (5, "1.1"), (3303, "1.0")]
            .map(|(o, v)| (o, v.to_string()))
            .into();
        let tree = build(
            &models,
            &Announced {
                paths: &[p("/1/0"), p("/3/0"), p("/3303/0"), p("/0/0"), p("/3303/1"), p("/5")],
                at: 0,
                versions: &versions,
                discovered: &[],
            },
            &latest,
            &observed,
            &|ms| format!("t{ms}"),
        );
        let ids: Vec<u16> = tree.iter().map(|o| o.id).collect();
        assert_eq!(ids, [1, 3, 5, 3303], "numeric order, Security left out");
        let device = &tree[1];
        assert_eq!(device.name, "Device");
        assert!(device.creatable.is_empty(), "Device is a single-instance object");
        let inst = &device.instances[0];
        assert!(!inst.deletable);
        let r = |id: u16| inst.resources.iter().find(|r| r.id == id).unwrap();
        // Device 1.0 is not embedded: drawn with the nearest, 1.1 (not the
        // registry's 1.2), and the page says so.
        assert_eq!(
            (device.version.as_str(), device.definition.as_deref()),
            ("1.0", Some("1.1"))
        );
        assert_eq!(
            inst.resources.len(),
            models.object_at(3, "1.1").unwrap().resources.len()
        );
        assert_eq!(
            (tree[2].version.as_str(), tree[2].definition.as_deref()),
            ("1.1", Some("1.2"))
        );
        assert_eq!((tree[3].version.as_str(), tree[3].definition.as_deref()), ("1.0", None));
        let time = r(13);
        assert_eq!((time.access.as_str(), time.input, time.observed), ("R W", "time", true));
        assert_eq!(time.values[0].1, "2026-12-03 08:49:43 UTC");
        assert_eq!(time.values[0].3, "t5");
        assert_eq!(time.anchor, "r-3-0-13");
        let voltage = r(7);
        assert_eq!(voltage.unit, "mV");
        let inst_paths: Vec<&str> = voltage.values.iter().map(|v| v.0.as_str()).collect();
        assert_eq!(inst_paths, ["/3/0/7/0", "/3/0/7/1"], "resource instances in order");
        assert!(!voltage.writable);
        let reboot = r(4);
        assert!(reboot.executable && !reboot.readable && !reboot.writable);
        assert!(!r(0).writable, "Manufacturer is read-only");
        // Object 5 announced without instances: nothing to list, nothing
        // to create (single instance).
        assert!(tree[2].instances.is_empty());
        let temp = &tree[3];
        assert_eq!(temp.instances.len(), 2);
        assert!(temp.instances[0].observed && !temp.instances[1].observed);
        assert!(temp.instances[0].deletable, "Temperature has multiple instances");
        let server = &tree[0];
        assert!(!server.instances[0].deletable && server.creatable.is_empty());
        let lifetime = server.instances[0].resources.iter().find(|r| r.id == 1).unwrap();
        assert_eq!((lifetime.input, lifetime.writable), ("integer", true));
        // Open: Device (with values), Firmware Update (always), Temperature
        // (observed); the Server object, with neither, is folded.
        let open: Vec<(u16, bool, usize)> = tree.iter().map(|o| (o.id, o.open, o.values)).collect();
        assert_eq!(open, [(1, false, 0), (3, true, 3), (5, true, 0), (3303, true, 0)]);
        assert!(temp.anything_observed && !server.anything_observed);
    }

    #[test]
    fn resources_the_model_does_not_know_can_only_be_read() {
        let models = Models::embedded();
        let (path, value) = (p("/32769/0/7"), Value::String("x".into()));
        let latest = [Latest {
            path: &path,
            value: &value,
            ts: 1,
        }];
        let versions = BTreeMap::new();
        fn announced<'a>(
            versions: &'a BTreeMap<u16, String>,
            at: i64,
            discovered: &'a [ResourcePath],
        ) -> Announced<'a> {
            Announced {
                paths: &[],
                at,
                versions,
                discovered,
            }
        }
        let tree = build(
            &models,
            &announced(&versions, 0, &[]),
            &latest,
            &BTreeSet::new(),
            &|_| String::new(),
        );
        // A deleted instance's old values do not bring it back once the
        // device has announced its objects since.
        assert!(
            build(
                &models,
                &announced(&versions, 1, &[]),
                &latest,
                &BTreeSet::new(),
                &|_| String::new()
            )
            .is_empty()
        );
        assert_eq!(tree[0].name, "Object 32769");
        assert!(!tree[0].defined);
        let r = &tree[0].instances[0].resources[0];
        assert_eq!((r.name.as_str(), r.access.as_str()), ("Resource 7", "?"));
        // A Discover answer adds the resources it lists, values or not.
        let discovered = [p("/32769"), p("/32769/0"), p("/32769/0/1"), p("/32769/2/3/0")];
        let tree = build(
            &models,
            &announced(&versions, 0, &discovered),
            &latest,
            &BTreeSet::new(),
            &|_| String::new(),
        );
        let inst: Vec<(String, Vec<u16>)> = tree[0]
            .instances
            .iter()
            .map(|i| (i.path.clone(), i.resources.iter().map(|r| r.id).collect()))
            .collect();
        assert_eq!(
            inst,
            [("/32769/0".to_string(), vec![1, 7]), ("/32769/2".to_string(), vec![3])]
        );
        assert!(r.readable && !r.writable && !r.executable);
        assert!(tree[0].creatable.is_empty() && !tree[0].instances[0].deletable);
    }
}
