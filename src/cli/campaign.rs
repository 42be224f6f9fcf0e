//! `flownexus campaign …`: firmware campaigns from the command line. They
//! work on the store like the dashboard does; the running server's
//! campaign task acts on them within a second.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;

use crate::campaign::{Request, Target, WaveSize};
use crate::store::{Command, MemberStatus, Store};

#[derive(Subcommand, Debug)]
pub enum CampaignCommand {
    /// Roll an image out to many devices in waves.
    Create(CreateArgs),
    /// Campaigns, newest first.
    List {
        #[arg(long)]
        json: bool,
    },
    /// A campaign's state, waves and timeline (`--devices` lists them).
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        devices: bool,
        /// Only devices in this status (pending, active, succeeded,
        /// failed, cancelled, skipped).
        #[arg(long)]
        status: Option<String>,
    },
    /// Start nothing new; updates under way carry on.
    Pause { id: i64 },
    /// Run a paused or stopped campaign again, or confirm the next wave.
    Resume { id: i64 },
    /// End the campaign: devices not started are cancelled, updates under
    /// way are cancelled where the device allows it.
    Cancel { id: i64 },
    /// Return the failed devices to pending and run again.
    Retry { id: i64 },
}

/// What `campaign create` takes: the fields of a [`Request`].
#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    #[arg(long)]
    pub name: String,
    /// The catalogue image: id or name.
    #[arg(long)]
    pub image: String,
    /// These devices (repeat the flag).
    #[arg(long = "device")]
    pub devices: Vec<String>,
    /// Devices with this tag.
    #[arg(long)]
    pub tag: Option<String>,
    /// Devices now reporting this firmware version (/3/0/3).
    #[arg(long)]
    pub from_version: Option<String>,
    /// Devices of this model (/3/0/1).
    #[arg(long)]
    pub model: Option<String>,
    /// Every device (never implied).
    #[arg(long)]
    pub all: bool,
    /// Wave sizes, e.g. `10,10%,50%,100%` (counts, or cumulative
    /// percentages of the targets); default one wave of all.
    #[arg(long, value_delimiter = ',')]
    pub waves: Vec<WaveSize>,
    /// Percentage of a wave verified that starts the next [95].
    #[arg(long)]
    pub success_threshold: Option<u8>,
    /// Percentage of a wave failed that stops the campaign [10].
    #[arg(long)]
    pub error_threshold: Option<u8>,
    /// Wait for `campaign resume` before each next wave.
    #[arg(long)]
    pub confirm_waves: bool,
    /// Devices downloading at once [100].
    #[arg(long)]
    pub max_concurrent: Option<u32>,
    /// Daily window for new starts, HH:MM-HH:MM.
    #[arg(long)]
    pub window: Option<String>,
    /// IANA time zone of the window [UTC].
    #[arg(long)]
    pub time_zone: Option<String>,
    /// Devices provisioned later that match join the last wave.
    #[arg(long)]
    pub late_joiners: bool,
}

impl From<CreateArgs> for Request {
    fn from(a: CreateArgs) -> Request {
        Request {
            name: a.name,
            image: a.image,
            target: Target {
                devices: a.devices,
                tag: a.tag,
                firmware_version: a.from_version,
                model: a.model,
                all: a.all,
            },
            waves: a.waves,
            success_threshold: a.success_threshold,
            error_threshold: a.error_threshold,
            confirm_waves: a.confirm_waves,
            max_concurrent: a.max_concurrent,
            window: a.window,
            time_zone: a.time_zone,
            late_joiners: a.late_joiners,
        }
    }
}

pub fn run(cmd: CampaignCommand, store: &Store) -> anyhow::Result<ExitCode> {
    let command = match cmd {
        CampaignCommand::Create(args) => {
            let req = Request::from(args);
            let id = crate::shell::campaign::create(store, &req, "cli")?;
            print_report(store, id)?;
            return Ok(ExitCode::SUCCESS);
        }
        CampaignCommand::List { json } => {
            let rows = store.campaigns(100)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
                return Ok(ExitCode::SUCCESS);
            }
            for c in rows {
                let t = crate::campaign::sum(&store.campaign_counts(c.id, c.plan.waves.len())?.waves);
                println!(
                    "{:>5}  {:<24} {:<22} wave {}/{}  {}/{} verified, {} failed  {}  ({})",
                    c.id,
                    c.name,
                    c.state.as_str(),
                    c.wave,
                    c.plan.waves.len(),
                    t.succeeded,
                    t.total(),
                    t.failed,
                    c.firmware_name,
                    c.target.describe()
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        CampaignCommand::Show {
            id,
            json,
            devices,
            status,
        } => {
            let status = match status.as_deref() {
                None => None,
                Some(s) => Some(MemberStatus::parse(s).ok_or_else(|| anyhow::anyhow!("no device status {s:?}"))?),
            };
            if json {
                let mut out = serde_json::to_value(store.campaign_report(id)?)?;
                if devices {
                    out["devices"] = serde_json::to_value(store.campaign_members(id, status, usize::MAX >> 1, 0)?)?;
                }
                println!("{}", serde_json::to_string_pretty(&out)?);
                return Ok(ExitCode::SUCCESS);
            }
            print_report(store, id)?;
            if devices {
                println!(
                    "  {:<32} {:<8} {:<9} {:<12} {:>11}  REASON",
                    "ENDPOINT", "WAVE", "STATUS", "PHASE", "DOWNLOADED"
                );
                for m in store.campaign_members(id, status, usize::MAX >> 1, 0)? {
                    println!(
                        "  {:<32} wave {:<3} {:<9} {:<12} {:>9} B  {}",
                        m.endpoint,
                        m.wave.map(|w| w.to_string()).unwrap_or_else(|| "-".into()),
                        m.status.as_str(),
                        m.phase.map(|p| p.as_str()).unwrap_or(""),
                        m.bytes,
                        m.reason.unwrap_or_default()
                    );
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        CampaignCommand::Pause { id } => (id, Command::Pause),
        CampaignCommand::Resume { id } => (id, Command::Resume),
        CampaignCommand::Cancel { id } => (id, Command::Cancel),
        CampaignCommand::Retry { id } => (id, Command::RetryFailed),
    };
    let (id, command) = command;
    match store.campaign_command(id, command, "cli")? {
        Ok(row) => {
            println!("campaign {id} {}: now {}", command.as_str(), row.state.as_str());
            Ok(ExitCode::SUCCESS)
        }
        Err(reason) => bail!("campaign {id}: {reason}"),
    }
}

fn print_report(store: &Store, id: i64) -> anyhow::Result<()> {
    let r = store.campaign_report(id)?;
    let c = &r.campaign;
    println!("campaign {} {:?}: {}", c.id, c.name, c.state.as_str());
    if let Some(reason) = &c.reason {
        println!("  {reason}");
    }
    println!(
        "  image {} (#{}, version {}) to {}",
        c.firmware_name,
        c.firmware_id,
        c.target_version,
        c.target.describe()
    );
    let waves: Vec<String> = c.plan.waves.iter().map(ToString::to_string).collect();
    println!(
        "  waves {}; next wave at {}% verified, stop over {}% failed; {} downloading at most{}{}",
        waves.join(", "),
        c.plan.success_threshold,
        c.plan.error_threshold,
        c.plan.max_concurrent,
        c.plan
            .window
            .as_ref()
            .map(|w| format!("; starts within {}", w.span()))
            .unwrap_or_default(),
        if c.plan.confirm_waves {
            "; each wave confirmed"
        } else {
            ""
        }
    );
    println!("  wave  devices  pending  downloading  installing  verified  failed  cancelled");
    for (i, w) in r.counts.waves.iter().enumerate() {
        let mark = if i + 1 == c.wave { ">" } else { " " };
        println!(
            " {mark}{:>4}  {:>7}  {:>7}  {:>11}  {:>10}  {:>8}  {:>6}  {:>9}",
            i + 1,
            w.total(),
            w.pending,
            w.downloading,
            w.installing,
            w.succeeded,
            w.failed,
            w.cancelled
        );
    }
    let t = &r.totals;
    println!(
        "   all  {:>7}  {:>7}  {:>11}  {:>10}  {:>8}  {:>6}  {:>9}   ({} skipped, already on {})",
        t.total(),
        t.pending,
        t.downloading,
        t.installing,
        t.succeeded,
        t.failed,
        t.cancelled,
        r.counts.skipped,
        c.target_version
    );
    for s in &r.steps {
        println!(
            "  {}  {:<22} wave {}  {}",
            crate::datetime::rfc3339(s.ts),
            s.state.as_str(),
            s.wave,
            s.detail.as_deref().unwrap_or("")
        );
    }
    Ok(())
}
