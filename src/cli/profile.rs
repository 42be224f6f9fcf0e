//! `flownexus profile …`: device profiles from the command line, on the
//! store like the dashboard's page; the running server applies them from
//! each device's next registration.

use std::process::ExitCode;

use clap::Subcommand;

use crate::config::Config;
use crate::lwm2m::profile::{Step, parse_steps};
use crate::store::Store;

#[derive(Subcommand, Debug)]
pub enum ProfileCommand {
    /// Profiles and their steps.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Ask every device of a tag (or every device) at each registration.
    Add {
        #[arg(long)]
        name: String,
        /// Only devices with this tag (default: every device).
        #[arg(long)]
        tag: Option<String>,
        /// A step, `read PATH` or `observe PATH [pmin=S] [pmax=S]`
        /// (repeat the flag, in order).
        #[arg(long = "step", required = true)]
        steps: Vec<String>,
        /// How long each queued operation may wait for its device, seconds.
        #[arg(long, default_value_t = 3600)]
        deadline_s: u32,
    },
    /// Remove a profile (operations it queued stay queued).
    Remove { id: i64 },
}

pub fn run(cmd: ProfileCommand, store: &Store, config: &Config) -> anyhow::Result<ExitCode> {
    match cmd {
        ProfileCommand::List { json } => {
            let rows = store.profiles()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            }
            for p in rows.iter().filter(|_| !json) {
                let who = p
                    .tag
                    .as_deref()
                    .map_or("every device".to_string(), |t| format!("tag {t}"));
                let steps: Vec<String> = p.steps.iter().map(Step::to_line).collect();
                println!("{:>4}  {:<28} {:<20} {}", p.id, p.name, who, steps.join("; "));
            }
        }
        ProfileCommand::Add {
            name,
            tag,
            steps,
            deadline_s,
        } => {
            let steps = parse_steps(&steps.join("\n")).map_err(anyhow::Error::msg)?;
            crate::lwm2m::profile::validate(&steps, &crate::app::load_models(config)?)?;
            if deadline_s == 0 {
                anyhow::bail!("--deadline-s must be at least 1");
            }
            let row = store.add_profile(&name, tag.as_deref(), &steps, deadline_s, "cli")?;
            println!("{}", serde_json::to_string_pretty(&row)?);
        }
        ProfileCommand::Remove { id } => {
            let row = store.remove_profile(id)?;
            println!("removed profile {} ({})", row.id, row.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}
