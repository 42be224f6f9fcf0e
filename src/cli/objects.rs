//! `flownexus objects`: the object definitions the server draws and
//! decodes devices with (the OMA LwM2M registry, older core object
//! versions, Nordic's Advanced Firmware Update, and the operator's own
//! `lwm2m.models_dir`), and the licence notices of the embedded ones.

use std::process::ExitCode;

use anyhow::bail;
use clap::Args;

use crate::config::Config;
use crate::lwm2m::model::notices;

#[derive(Args, Debug)]
pub struct ObjectsArgs {
    /// One object's resources (its default version, or --object-version).
    id: Option<u16>,
    /// The version of ID to show, e.g. 1.0.
    #[arg(long, requires = "id")]
    object_version: Option<String>,
    /// Print the copyright and licence notices of the embedded definitions
    /// (each distinct text once, with the files it covers).
    #[arg(long, conflicts_with = "id")]
    notices: bool,
}

pub fn run(args: ObjectsArgs, config: &Config) -> anyhow::Result<ExitCode> {
    let models = crate::app::load_models(config)?;
    if args.notices {
        for (text, files) in notices() {
            println!("Covers: {}\n\n{text}\n", files.join(", "));
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(id) = args.id else {
        for o in models.objects() {
            println!("{:>5}  {:<12} {}", o.id, models.versions(o.id).join(","), o.name);
        }
        return Ok(ExitCode::SUCCESS);
    };
    let object = match &args.object_version {
        Some(v) => models.object_at(id, v).filter(|o| o.version == *v),
        None => models.object(id),
    };
    let Some(o) = object else {
        bail!(
            "no definition of object {id}{} (known versions: {})",
            args.object_version.map(|v| format!(" version {v}")).unwrap_or_default(),
            models.versions(id).join(", ")
        );
    };
    let instances = if o.multiple {
        "multiple instances"
    } else {
        "single instance"
    };
    println!("/{} {} v{} ({instances})", o.id, o.name, o.version);
    for r in o.resources.values() {
        println!(
            "{:>6}  {:<40} {:<3} {:<16} {}{}",
            r.id,
            r.name,
            r.operations,
            format!("{:?}", r.rtype),
            r.units,
            if r.multiple { " (multiple)" } else { "" }
        );
    }
    Ok(ExitCode::SUCCESS)
}
