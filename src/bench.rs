//! `flownexus bench`: throughput and memory figures (docs/benchmarks.md).

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs, _config: crate::config::Config) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("bench: see below")
}
