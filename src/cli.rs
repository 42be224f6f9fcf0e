//! The `flownexus` command line. Commands act on the installation whose data
//! directory they are given, whether or not its server is running: queued
//! operations go through the store, which the server polls.

mod campaign;
mod healthcheck;
mod objects;
mod profile;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, Overrides, process_env};
use crate::lwm2m::display::printable;
use crate::lwm2m::operation::{OperationKind, OperationState, WriteValue};
use crate::lwm2m::path::ResourcePath;
use crate::store::tags::Tags;
use crate::store::{Store, now_ms};

/// The heading the options every command takes stand under, after the
/// command's own.
const GLOBAL: &str = "Global options";

#[derive(Parser, Debug)]
#[command(
    name = "flownexus",
    version,
    about = "LwM2M device management and firmware server for nRF9160 fleets"
)]
pub struct Cli {
    /// TOML configuration file (also FLOWNEXUS_CONFIG).
    #[arg(long, global = true, env = "FLOWNEXUS_CONFIG", help_heading = GLOBAL)]
    config: Option<PathBuf>,
    /// Data directory: database, firmware, secrets [env: FLOWNEXUS_DATA_DIR].
    #[arg(long, global = true, help_heading = GLOBAL)]
    data_dir: Option<PathBuf>,
    /// CoAP/UDP listen address, port 0 picks one [env: FLOWNEXUS_COAP_LISTEN].
    #[arg(long, global = true, help_heading = GLOBAL)]
    coap_listen: Option<SocketAddr>,
    /// CoAP/DTLS listen address [env: FLOWNEXUS_COAPS_LISTEN].
    #[arg(long, global = true, help_heading = GLOBAL)]
    coaps_listen: Option<SocketAddr>,
    /// Dashboard and REST API listen address [env: FLOWNEXUS_HTTP_LISTEN].
    #[arg(long, global = true, help_heading = GLOBAL)]
    http_listen: Option<SocketAddr>,
    /// Firmware HTTPS listen address [env: FLOWNEXUS_FW_LISTEN].
    #[arg(long, global = true, help_heading = GLOBAL)]
    fw_listen: Option<SocketAddr>,
    /// Commands that add (device add/import, user add, firmware add):
    /// start a new database if the data directory has none. Without it
    /// they refuse, so a command run in the wrong directory says so
    /// instead of filling a database nobody serves.
    #[arg(long, global = true, help_heading = GLOBAL)]
    create: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server with the effective configuration.
    Serve,
    /// Print the effective configuration (every layer applied) as TOML.
    PrintConfig,
    /// Ask the running server how each component is (its `/healthz`);
    /// exits non-zero when one is down or the server is not running.
    Healthcheck,
    /// Manage devices and send them operations.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// The firmware catalogue.
    #[command(subcommand)]
    Firmware(FirmwareCommand),
    /// Firmware campaigns: one image to many devices, in waves.
    #[command(subcommand)]
    Campaign(campaign::CampaignCommand),
    /// Device profiles: reads and observations asked of a tag's devices
    /// (or every device) at each registration.
    #[command(subcommand)]
    Profile(profile::ProfileCommand),
    /// The LwM2M object definitions known: every object of the OMA
    /// registry, older core versions, lwm2m.models_dir's own.
    Objects(objects::ObjectsArgs),
    /// Operators of the dashboard and API. Passwords are read from the
    /// terminal (twice, not echoed) or, when piped, one line from stdin.
    #[command(subcommand)]
    User(UserCommand),
    /// Write a consistent copy of the database to FILE, checked with
    /// `PRAGMA integrity_check` (safe while the server runs; FILE must not exist).
    Backup { file: PathBuf },
    /// Replace the database with the backup FILE, after checking it; refused
    /// while a server runs on this data directory. The replaced database is
    /// kept beside it as `flownexus.sqlite3.before-restore-<ms>`.
    Restore { file: PathBuf },
    /// Run simulated LwM2M devices against a server.
    Sim(crate::sim::SimArgs),
    /// Measure throughput and memory (see docs/benchmarks.md).
    Bench(crate::bench::BenchArgs),
}

#[derive(Subcommand, Debug)]
enum UserCommand {
    /// Create a user.
    Add {
        name: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: String,
    },
    /// Users, their roles and whether they are disabled (never a hash).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Change a user's role.
    SetRole {
        name: String,
        role: String,
    },
    /// Stop a user from logging in (the record stays).
    Disable {
        name: String,
    },
    Enable {
        name: String,
    },
    /// Set a new password; the user's API tokens are revoked with the old
    /// one unless --keep-tokens.
    Passwd {
        name: String,
        #[arg(long)]
        keep_tokens: bool,
    },
}

#[derive(Subcommand, Debug)]
enum FirmwareCommand {
    /// Add an image (stored once by content; the record names it).
    Add {
        file: PathBuf,
        /// The image's version; by default the one it states (its MCUboot
        /// header, or a Nordic modem file name). Given and stated must agree.
        #[arg(long)]
        version: Option<String>,
        /// Download name, `/binaries/NAME` (default: the file's name).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value = "")]
        notes: String,
        /// Who uploads it (default: $USER).
        #[arg(long)]
        uploader: Option<String>,
    },
    /// List images (`--all` includes removed ones).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Show an image by id or name, with its download statistics.
    Show { image: String },
    /// Remove an image: it is no longer served; the record stays.
    Remove { image: String },
    /// A download URL for a device, with a signed, expiring token.
    Url {
        image: String,
        #[arg(long)]
        device: String,
        /// Seconds the token stays valid.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
        /// Base URL devices reach the firmware server at.
        #[arg(long, default_value = "https://localhost:8443")]
        base: String,
    },
}

#[derive(Args, Debug)]
struct PskArgs {
    /// The identity the device presents in its DTLS handshake (default: the endpoint name).
    #[arg(long)]
    psk_identity: Option<String>,
    /// The key, as hex.
    #[arg(long, conflicts_with = "generate_psk")]
    psk_key_hex: Option<String>,
    /// Generate a random 128-bit key and print it, once.
    #[arg(long)]
    generate_psk: bool,
}

impl PskArgs {
    /// The PSK these flags describe, if any; `required` for rotation.
    /// Without `--psk-identity` the identity is `default_identity`.
    fn psk(&self, default_identity: &str, required: bool) -> anyhow::Result<Option<crate::psk::Psk>> {
        let identity = self.psk_identity.as_deref().unwrap_or(default_identity);
        Ok(match (&self.psk_key_hex, self.generate_psk) {
            (Some(hex), _) => Some(crate::psk::Psk::from_hex(identity, hex)?),
            (None, true) => Some(crate::psk::Psk::generate(identity)?),
            (None, false) if required || self.psk_identity.is_some() => {
                bail!("give --psk-key-hex HEX or --generate-psk")
            }
            (None, false) => None,
        })
    }
}

#[derive(Args, Debug)]
struct OpArgs {
    /// Wait for the operation to finish and print its result.
    #[arg(long)]
    wait: bool,
    /// With --wait: give up waiting after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Seconds until the queued operation expires (default lwm2m.operation_deadline_s).
    #[arg(long)]
    deadline: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum DeviceCommand {
    /// Provision a device, optionally with a PSK for CoAP over DTLS.
    Add {
        endpoint: String,
        #[arg(long, default_value = "")]
        tags: String,
        #[command(flatten)]
        psk: PskArgs,
    },
    /// File a device under these tags (comma-separated; "" clears them).
    Tag { endpoint: String, tags: String },
    /// Give a device a new PSK (the old one stops working).
    RotatePsk {
        endpoint: String,
        #[command(flatten)]
        psk: PskArgs,
    },
    /// Factory provisioning: add devices from a CSV of endpoint,identity,key-hex
    /// lines. Every bad line is reported; on any error nothing is added.
    Import { file: PathBuf },
    /// List devices with status, last seen and firmware version.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long, default_value_t = 0)]
        offset: usize,
        #[arg(long)]
        json: bool,
    },
    /// Show a device, its latest values and recent operations.
    Show { endpoint: String },
    /// Remove a device and its history.
    Remove { endpoint: String },
    /// Read a path (Core §6.3.1).
    Read {
        endpoint: String,
        path: ResourcePath,
        #[command(flatten)]
        op: OpArgs,
    },
    /// Write a value (Core §6.3.3). A resource or resource instance is always
    /// written with Write-Replace (PUT); an object instance with Partial
    /// Update (POST), or Write-Replace with --replace.
    Write {
        endpoint: String,
        path: ResourcePath,
        value: String,
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        op: OpArgs,
    },
    /// Execute a resource, with optional arguments (Core §6.3.4).
    Exec {
        endpoint: String,
        path: ResourcePath,
        args: Option<String>,
        #[command(flatten)]
        op: OpArgs,
    },
    /// Observe a path, or cancel the observation with --cancel.
    Observe {
        endpoint: String,
        path: ResourcePath,
        #[arg(long)]
        cancel: bool,
        #[command(flatten)]
        op: OpArgs,
    },
    /// Discover the resources and attributes under a path.
    Discover {
        endpoint: String,
        path: ResourcePath,
        #[command(flatten)]
        op: OpArgs,
    },
    /// Create an object instance: PATH=VALUE pairs below the object.
    Create {
        endpoint: String,
        path: ResourcePath,
        values: Vec<String>,
        #[command(flatten)]
        op: OpArgs,
    },
    /// Delete an object instance.
    Delete {
        endpoint: String,
        path: ResourcePath,
        #[command(flatten)]
        op: OpArgs,
    },
    /// Write-Attributes, e.g. `pmin=10 pmax=60`.
    Attributes {
        endpoint: String,
        path: ResourcePath,
        attributes: Vec<String>,
        #[command(flatten)]
        op: OpArgs,
    },
    /// Read several paths at once (Read-Composite, LwM2M 1.1).
    ReadComposite {
        endpoint: String,
        paths: Vec<ResourcePath>,
        #[command(flatten)]
        op: OpArgs,
    },
    /// Observe several paths at once (Observe-Composite, LwM2M 1.1), or
    /// cancel that observation with --cancel and the same paths.
    ObserveComposite {
        endpoint: String,
        paths: Vec<ResourcePath>,
        #[arg(long)]
        cancel: bool,
        #[command(flatten)]
        op: OpArgs,
    },
    /// Write resources of several objects at once: PATH=VALUE pairs
    /// (Write-Composite, LwM2M 1.1; one iPATCH).
    WriteComposite {
        endpoint: String,
        values: Vec<String>,
        #[command(flatten)]
        op: OpArgs,
    },
    /// Cancel a queued operation.
    Cancel { id: i64 },
    /// Show one operation.
    Operation { id: i64 },
    /// Update a device's firmware to catalogue image IMAGE (id or name):
    /// LwM2M Object 5 (or 33629 where the device has it), the Package URI
    /// on the record-limited HTTPS server. More images (Object 33629 only)
    /// are installed together, e.g. an application and a modem image.
    Update {
        endpoint: String,
        #[arg(required = true, num_args = 1..)]
        images: Vec<String>,
        /// Wait until the update ends and print its timeline.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up waiting after this many seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
    /// A device's firmware updates, newest first, with their timelines.
    Updates { endpoint: String },
    /// Cancel an update (an empty Package URI returns the device to Idle).
    UpdateCancel { id: i64 },
}

impl Cli {
    fn flags(&self) -> Overrides {
        Overrides {
            data_dir: self.data_dir.clone(),
            coap_listen: self.coap_listen,
            coaps_listen: self.coaps_listen,
            http_listen: self.http_listen,
            fw_listen: self.fw_listen,
        }
    }

    fn load_config(&self) -> anyhow::Result<Config> {
        Ok(Config::load(self.config.as_deref(), &process_env(), &self.flags())?)
    }
}

/// `print-config`: the merged configuration even when it has problems,
/// each marked beside its key; exit 2 while there are any.
fn print_config(cli: &Cli) -> ExitCode {
    match Config::inspect(cli.config.as_deref(), &process_env(), &cli.flags()) {
        Ok(seen) => {
            print!("{}", seen.annotated());
            if seen.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!("flownexus: {}", crate::error::Error::Configuration(seen.problems));
                ExitCode::from(2)
            }
        }
        Err(e) => {
            eprintln!("flownexus: {e:#}");
            ExitCode::from(2)
        }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // FLOWNEXUS_LOG is not a config key but is held to the same rule: an
    // invalid value stops start-up, naming it (docs/configuration.md).
    let log_override = std::env::var("FLOWNEXUS_LOG").ok();
    if let Some(v) = &log_override
        && v.parse::<log::LevelFilter>().is_err()
    {
        eprintln!("flownexus: FLOWNEXUS_LOG: `{v}` is not a log level (off, error, warn, info, debug, trace)");
        return ExitCode::from(2);
    }
    if matches!(cli.command, Command::PrintConfig) {
        return print_config(&cli);
    }
    let config = match cli.load_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("flownexus: {e:#}");
            return ExitCode::from(2);
        }
    };
    let level = log_override.unwrap_or_else(|| config.log.level.clone());
    crate::logging::init(&level, &config.log.target, &config.log.journal_socket);
    match run(cli.command, config, cli.create) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("flownexus: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Commands that only print should end quietly when piped into `head`
/// (default SIGPIPE). Commands that talk to the network must never die on
/// it: a peer that closes its socket mid-write is normal there, and Rust
/// ignores SIGPIPE by default, turning it into an EPIPE error.
fn set_sigpipe(command: &Command) {
    let network = matches!(
        command,
        Command::Serve | Command::Sim(_) | Command::Bench(_) | Command::Healthcheck
    );
    if !network {
        // SAFETY: setting a signal disposition before any thread is started.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
}

fn run(command: Command, config: Config, create: bool) -> anyhow::Result<ExitCode> {
    set_sigpipe(&command);
    match command {
        Command::Serve => {
            runtime()?.block_on(crate::app::serve(config))?;
            Ok(ExitCode::SUCCESS)
        }
        // main answers it before loading (print_config); a valid
        // configuration prints the same here.
        Command::PrintConfig => {
            print!("{}", config.to_toml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck => healthcheck::run(&config),
        Command::Device(d) => device(d, &config, create),
        Command::Firmware(f) => firmware(f, &config, create),
        Command::Campaign(c) => campaign::run(c, &open_store(&config)?),
        Command::Profile(p) => profile::run(p, &open_store(&config)?, &config),
        Command::Objects(o) => objects::run(o, &config),
        Command::User(u) => user(u, &config, create),
        Command::Backup { file } => {
            let s = open_store(&config)?.backup_to(&file)?;
            println!(
                "backup {}: {} bytes, schema {}, {} devices, integrity ok",
                s.path.display(),
                s.bytes,
                s.schema,
                s.devices
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { file } => {
            crate::app::create_data_dir(&config.data_dir)?;
            let _lock = crate::app::ServeLock::acquire(&config.data_dir)?;
            let db = config.database_path();
            let kept = crate::store::backup::restore(&db, &file, now_ms())?;
            // Opening applies the migrations a backup from an older release lacks.
            let devices = Store::open(&db)?.endpoints()?.len();
            println!("restored {} into {} ({devices} devices)", file.display(), db.display());
            if let Some(k) = kept {
                println!("the replaced database is kept as {}", k.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sim(args) => runtime()?.block_on(crate::sim::run(args)),
        Command::Bench(args) => runtime()?.block_on(crate::bench::run(args, config)),
    }
}

fn user(cmd: UserCommand, config: &Config, create: bool) -> anyhow::Result<ExitCode> {
    use crate::users::{Role, check_name, hash_password};
    let store = match cmd {
        UserCommand::Add { .. } => open_store_to_add(config, create)?,
        _ => open_store(config)?,
    };
    match cmd {
        UserCommand::Add { name, role } => {
            check_name(&name)?;
            let role: Role = role.parse()?;
            let hash = hash_password(&read_password(&format!("password for {name}"))?)?;
            store.add_user(&name, &hash, role)?;
            println!("added {name} ({})", role.as_str());
        }
        UserCommand::List { json } => {
            let users = store.users()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else {
                for u in users {
                    let created = crate::datetime::rfc3339(u.created_at);
                    let state = if u.disabled { "disabled" } else { "active" };
                    println!("{:<32} {:<9} {:<9} {created}", u.name, u.role.as_str(), state);
                }
            }
        }
        UserCommand::SetRole { name, role } => {
            let role: Role = role.parse()?;
            store.set_user_role(&name, role)?;
            println!("{name} is now {}", role.as_str());
        }
        UserCommand::Disable { name } => {
            store.set_user_disabled(&name, true)?;
            println!("disabled {name}");
        }
        UserCommand::Enable { name } => {
            store.set_user_disabled(&name, false)?;
            println!("enabled {name}");
        }
        UserCommand::Passwd { name, keep_tokens } => {
            if store.user_credentials(&name)?.is_none() {
                bail!("no user {name}");
            }
            let hash = hash_password(&read_password(&format!("new password for {name}"))?)?;
            store.set_user_password(&name, &hash)?;
            let revoked = if keep_tokens { 0 } else { store.revoke_tokens_of(&name)? };
            println!("password of {name} changed; {revoked} API tokens revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A password: from the terminal, typed twice with echo off; else one line
/// of stdin (for scripts: `printf '%s\n' "$PW" | flownexus user add …`).
fn read_password(prompt: &str) -> anyhow::Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    let read_hidden = |prompt: &str| -> anyhow::Result<String> {
        eprint!("{prompt}: ");
        std::io::stderr().flush()?;
        let fd = libc::STDIN_FILENO;
        // SAFETY: termios calls on stdin with a zeroed struct they fill.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            bail!("cannot read the terminal's settings");
        }
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
        let mut line = String::new();
        let read = stdin.lock().read_line(&mut line);
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
        eprintln!();
        read?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    };
    let first = read_hidden(prompt)?;
    if read_hidden("again")? != first {
        bail!("the passwords differ");
    }
    Ok(first)
}

/// A listener's address (`fw`, `coap`) from a running server's runtime
/// file: the base of Package URIs when the public URLs are unset.
fn running_addr(config: &Config, listener: &str) -> Option<std::net::SocketAddr> {
    let runtime = std::fs::read_to_string(config.runtime_path()).ok()?;
    let v: serde_json::Value = serde_json::from_str(&runtime).ok()?;
    v[listener].as_str()?.parse().ok()
}

/// One update and its timeline, for the terminal.
fn print_update(store: &Store, id: i64) -> anyhow::Result<crate::store::UpdateRow> {
    let row = store.update(id)?;
    let steps = store.update_steps(id)?;
    let out = serde_json::json!({ "update": row, "steps": steps });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(row)
}

fn open_store(config: &Config) -> anyhow::Result<Store> {
    let path = config.database_path();
    if !path.exists() {
        bail!(
            "no database at {}: is that the data directory you meant? Give --data-dir \
             (or FLOWNEXUS_DATA_DIR), or run `flownexus serve` there first; \
             commands that add take --create to start a new one",
            path.display()
        );
    }
    Store::open(&path).with_context(|| format!("opening {}", path.display()))
}

/// The store for a command that adds to it: a new one only when asked
/// (`--create`). Run from the wrong directory, `device add --generate-psk`
/// would otherwise print a key, shown once, that lands in a database no
/// server reads.
fn open_store_to_add(config: &Config, create: bool) -> anyhow::Result<Store> {
    if !create {
        return open_store(config);
    }
    crate::app::create_data_dir(&config.data_dir)?;
    let path = config.database_path();
    Store::open(&path).with_context(|| format!("opening {}", path.display()))
}

fn firmware(cmd: FirmwareCommand, config: &Config, create: bool) -> anyhow::Result<ExitCode> {
    let catalogue = crate::firmware::Catalogue::new(&config.data_dir, config.fw.max_image_bytes);
    match cmd {
        FirmwareCommand::Add {
            file,
            version,
            name,
            notes,
            uploader,
        } => {
            let mut store = open_store_to_add(config, create)?;
            let name = match name {
                Some(n) => n,
                None => file
                    .file_name()
                    .and_then(|n| n.to_str())
                    .context("FILE has no usable name; give --name")?
                    .to_string(),
            };
            let mut src = std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
            let total = src.metadata().map(|m| m.len()).unwrap_or(0);
            let uploader = uploader
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "cli".into());
            let show = std::io::IsTerminal::is_terminal(&std::io::stderr()) && total > 0;
            let mut last = 0u64;
            let mut progress = |n: u64| {
                if show && (n - last >= 1 << 20 || n == total) {
                    last = n;
                    eprint!(
                        "\r{:>8.1} / {:.1} MiB ({:>3}%)",
                        n as f64 / 1048576.0,
                        total as f64 / 1048576.0,
                        n * 100 / total
                    );
                }
            };
            let upload = crate::firmware::Upload {
                name: &name,
                version: version.as_deref(),
                notes: &notes,
                uploader: &uploader,
            };
            let (row, new) = catalogue.add(&mut store, &mut src, &upload, &mut progress)?;
            if show {
                eprintln!();
            }
            if !new {
                println!(
                    "already in the catalogue as #{} {} ({}); stored once",
                    row.id, row.name, row.version
                );
            }
            println!("{}", serde_json::to_string_pretty(&row)?);
        }
        FirmwareCommand::List { all, json } => {
            let rows = open_store(config)?.firmware_list(all)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:>4} {:<28} {:<14} {:>10} {:<20} {:<16} UPLOADED",
                    "ID", "NAME", "VERSION", "SIZE", "TYPE", "SHA-256"
                );
                for r in rows {
                    println!(
                        "{:>4} {:<28} {:<14} {:>10} {:<20} {:<16} {}{}",
                        r.id,
                        r.name,
                        r.version,
                        r.size,
                        r.image_type,
                        &r.sha256[..16],
                        crate::datetime::rfc3339(r.uploaded_at),
                        if r.deleted_at.is_some() { " (removed)" } else { "" }
                    );
                }
            }
        }
        FirmwareCommand::Show { image } => {
            let store = open_store(config)?;
            let row = store.firmware(&image)?;
            let stats = store.download_stats(row.id)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({ "firmware": row, "downloads": stats }))?
            );
        }
        FirmwareCommand::Remove { image } => {
            let store = open_store(config)?;
            let row = store.firmware(&image)?;
            let row = catalogue.remove(&store, row.id)?;
            println!("removed #{} {} ({}); no longer served", row.id, row.name, row.version);
        }
        FirmwareCommand::Url {
            image,
            device,
            ttl,
            base,
        } => {
            let store = open_store(config)?;
            let row = store.firmware(&image)?;
            if row.deleted_at.is_some() {
                bail!("firmware #{} was removed", row.id);
            }
            let key_path = config
                .fw
                .token_secret_file
                .clone()
                .unwrap_or_else(|| config.data_dir.join("fw-token.key"));
            let key = crate::download::token::TokenKey::load_or_create(&key_path)?;
            let token = key.sign(&device, &row.sha256, now_ms() / 1000 + ttl as i64);
            println!(
                "{}/fw/{}/{}?t={token}",
                base.trim_end_matches('/'),
                row.sha256,
                row.name
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_assignments(values: &[String]) -> anyhow::Result<Vec<WriteValue>> {
    values
        .iter()
        .map(|a| {
            let (p, v) = a.split_once('=').with_context(|| format!("`{a}` is not PATH=VALUE"))?;
            Ok(WriteValue {
                path: p.parse()?,
                value: v.to_string(),
            })
        })
        .collect()
}

fn device(cmd: DeviceCommand, config: &Config, create: bool) -> anyhow::Result<ExitCode> {
    let mut store = match &cmd {
        DeviceCommand::Add { .. } | DeviceCommand::Import { .. } => open_store_to_add(config, create)?,
        _ => open_store(config)?,
    };
    let (endpoint, kind, op) = match cmd {
        DeviceCommand::Add { endpoint, tags, psk } => {
            let psk = psk.psk(&endpoint, false)?;
            store.add_device(&endpoint, psk.as_ref(), &Tags::parse(&tags)?)?;
            println!("added {endpoint}");
            if let Some(p) = psk {
                // The only time the key is shown.
                println!(
                    "psk identity: {}\npsk key (hex, shown once): {}",
                    p.identity,
                    p.key_hex()
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        DeviceCommand::Tag { endpoint, tags } => {
            let tags = Tags::parse(&tags)?;
            store.set_tags(&endpoint, &tags)?;
            println!("{endpoint} tags: {tags}");
            return Ok(ExitCode::SUCCESS);
        }
        DeviceCommand::RotatePsk { endpoint, psk } => {
            // A new key keeps the device's identity unless told otherwise.
            let current = store
                .device(&endpoint)?
                .psk_identity
                .unwrap_or_else(|| endpoint.clone());
            let p = psk.psk(&current, true)?.expect("required");
            store.rotate_psk(&endpoint, &p)?;
            println!(
                "new psk for {endpoint}\npsk identity: {}\npsk key (hex, shown once): {}",
                p.identity,
                p.key_hex()
            );
            return Ok(ExitCode::SUCCESS);
        }
        DeviceCommand::Import { file } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let errors = match crate::psk::parse_provisioning(&text) {
                Ok(rows) => match store.import_devices(&rows)? {
                    Ok(n) => {
                        println!("imported {n} devices");
                        return Ok(ExitCode::SUCCESS);
                    }
                    Err(errors) => errors,
                },
                Err(errors) => errors,
            };
            for e in &errors {
                eprintln!("{}: {e}", file.display());
            }
            eprintln!("nothing imported ({} bad lines)", errors.len());
            return Ok(ExitCode::FAILURE);
        }
        DeviceCommand::List { limit, offset, json } => {
            let now = now_ms();
            let l = &config.lwm2m;
            let rows = store.list_devices(limit, offset)?;
            if json {
                let out: Vec<_> = rows
                    .iter()
                    .map(|d| serde_json::json!({ "device": d, "status": d.status(now, l.queue_awake_window_s, l.lifetime_grace_s) }))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                println!("{:<40} {:<9} {:<24} FIRMWARE", "ENDPOINT", "STATUS", "LAST SEEN");
                for d in rows {
                    let status = d.status(now, l.queue_awake_window_s, l.lifetime_grace_s);
                    let seen = d
                        .last_seen
                        .map(crate::datetime::rfc3339)
                        .unwrap_or_else(|| "never".into());
                    println!(
                        "{:<40} {:<9} {:<24} {}",
                        printable(&d.endpoint),
                        serde_json::to_value(status)?.as_str().unwrap_or(""),
                        seen,
                        printable(d.firmware_version.as_deref().unwrap_or("-"))
                    );
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        DeviceCommand::Show { endpoint } => {
            let d = store.device(&endpoint)?;
            let l = &config.lwm2m;
            let models = crate::app::load_models(config)?;
            let values: Vec<_> = store
                .latest_values(&endpoint)?
                .into_iter()
                .map(|v| serde_json::json!({ "path": v.path, "name": models.describe(&v.path), "ts": v.ts, "value": v.value }))
                .collect();
            let out = serde_json::json!({
                "device": d,
                "status": d.status(now_ms(), l.queue_awake_window_s, l.lifetime_grace_s),
                "values": values,
                "operations": store.operations_of(&endpoint, 20)?,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(ExitCode::SUCCESS);
        }
        DeviceCommand::Remove { endpoint } => {
            store.remove_device(&endpoint)?;
            println!("removed {endpoint}");
            return Ok(ExitCode::SUCCESS);
        }
        DeviceCommand::Cancel { id } => {
            if store.cancel_operation(id)? {
                println!("cancelled operation {id}");
                return Ok(ExitCode::SUCCESS);
            }
            bail!("operation {id} is not queued (already sent or finished)");
        }
        DeviceCommand::Operation { id } => {
            println!("{}", serde_json::to_string_pretty(&store.operation(id)?)?);
            return Ok(ExitCode::SUCCESS);
        }
        DeviceCommand::Update {
            endpoint,
            images,
            wait,
            timeout,
        } => {
            let starter =
                crate::shell::fota::Starter::new(config, running_addr(config, "fw"), running_addr(config, "coap"))?;
            let images: Vec<&str> = images.iter().map(String::as_str).collect();
            let id = starter.create(&store, &endpoint, &images, "cli", None)?;
            println!("firmware update {id} of {endpoint} queued");
            if !wait {
                return Ok(ExitCode::SUCCESS);
            }
            let until = std::time::Instant::now() + Duration::from_secs(timeout);
            loop {
                let row = store.update(id)?;
                if row.phase.is_final() {
                    let row = print_update(&store, id)?;
                    return Ok(if row.phase == crate::fota::Phase::Succeeded {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    });
                }
                if std::time::Instant::now() >= until {
                    eprintln!(
                        "update {id} is still {} after {timeout} s; it goes on",
                        row.phase.as_str()
                    );
                    return Ok(ExitCode::from(3));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        }
        DeviceCommand::Updates { endpoint } => {
            for row in store.updates_of(&endpoint, 20)? {
                print_update(&store, row.id)?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        DeviceCommand::UpdateCancel { id } => {
            if store.request_update_cancel(id)? {
                println!("cancelling firmware update {id}: the server writes an empty Package URI");
                return Ok(ExitCode::SUCCESS);
            }
            bail!("firmware update {id} is not active");
        }
        DeviceCommand::Read { endpoint, path, op } => (endpoint, OperationKind::Read { path }, op),
        DeviceCommand::Write {
            endpoint,
            path,
            value,
            replace,
            op,
        } => (
            endpoint,
            OperationKind::Write {
                path,
                values: vec![WriteValue { path, value }],
                replace: replace.then_some(true),
            },
            op,
        ),
        DeviceCommand::Exec {
            endpoint,
            path,
            args,
            op,
        } => (endpoint, OperationKind::Execute { path, args }, op),
        DeviceCommand::Observe {
            endpoint,
            path,
            cancel,
            op,
        } => {
            let kind = if cancel {
                OperationKind::CancelObserve { path }
            } else {
                OperationKind::Observe { path }
            };
            (endpoint, kind, op)
        }
        DeviceCommand::Discover { endpoint, path, op } => (endpoint, OperationKind::Discover { path }, op),
        DeviceCommand::Create {
            endpoint,
            path,
            values,
            op,
        } => (
            endpoint,
            OperationKind::Create {
                path,
                values: parse_assignments(&values)?,
            },
            op,
        ),
        DeviceCommand::Delete { endpoint, path, op } => (endpoint, OperationKind::Delete { path }, op),
        DeviceCommand::Attributes {
            endpoint,
            path,
            attributes,
            op,
        } => (endpoint, OperationKind::WriteAttributes { path, attributes }, op),
        DeviceCommand::ReadComposite { endpoint, paths, op } => (endpoint, OperationKind::ReadComposite { paths }, op),
        DeviceCommand::ObserveComposite {
            endpoint,
            paths,
            cancel,
            op,
        } => {
            let kind = if cancel {
                OperationKind::CancelObserveComposite { paths }
            } else {
                OperationKind::ObserveComposite { paths }
            };
            (endpoint, kind, op)
        }
        DeviceCommand::WriteComposite { endpoint, values, op } => (
            endpoint,
            OperationKind::WriteComposite {
                values: parse_assignments(&values)?,
            },
            op,
        ),
    };
    let models = crate::app::load_models(config)?;
    kind.validate(&models)?;
    let deadline_s = op.deadline.unwrap_or(config.lwm2m.operation_deadline_s);
    let id = store.queue_operation(
        &endpoint,
        &kind,
        now_ms() + deadline_s as i64 * 1000,
        config.lwm2m.operation_max_attempts,
    )?;
    if !op.wait {
        println!("queued operation {id}");
        return Ok(ExitCode::SUCCESS);
    }
    let until = std::time::Instant::now() + Duration::from_secs(op.timeout);
    loop {
        let row = store.operation(id)?;
        if row.state.is_final() {
            println!("{}", serde_json::to_string_pretty(&row)?);
            return Ok(if row.state == OperationState::Succeeded {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        if std::time::Instant::now() >= until {
            eprintln!(
                "operation {id} is still {} after {} s; it stays queued",
                row.state.as_str(),
                op.timeout
            );
            return Ok(ExitCode::from(3));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
