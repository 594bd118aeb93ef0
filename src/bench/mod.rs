//! `kiln bench`: a load generator for any REAPI endpoint (see issue 5). Being built.

/// Command-line arguments of `kiln bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Target: grpc://HOST:PORT or unix:PATH.
    #[arg(long)]
    pub target: Option<String>,
}

/// Runs a benchmark.
pub async fn run(_args: BenchArgs) -> Result<(), String> {
    Err("kiln bench is not implemented yet".into())
}
