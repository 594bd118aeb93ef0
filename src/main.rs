//! The `kiln` command: `serve` (the REAPI server) and admin tools.

use clap::{Parser, Subcommand};
use kiln::config::Config;
use std::path::PathBuf;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Single-box REAPI v2 build cache and execution appliance"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The network actions see (`kiln worker --action-network`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ActionNetwork {
    /// A network namespace of the action's own: loopback only.
    None,
    /// The worker's network.
    Host,
}

#[derive(Subcommand)]
enum Command {
    /// Run the REAPI server (defaults embedded: ./kiln-data, 127.0.0.1:8980).
    Serve {
        /// TOML config file; every field is optional (see tuning/kiln.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// TCP address to listen on; repeat for several. Replaces the config's list.
        #[arg(long)]
        listen: Vec<String>,
        /// Data directory. Overrides the config.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// HTTP address for /metrics and /status ("" disables). Overrides the config.
        #[arg(long)]
        metrics_listen: Option<String>,
    },
    /// Scrub the store: every record's checksum and every CAS blob's SHA-256 or BLAKE3 hash, with progress.
    /// Run it while the server is stopped (it takes the data directory's lock). Damaged blobs
    /// are dropped from the index (clients re-upload them) and it exits 1; the torn end of an
    /// upload a crash interrupted is reported apart and is not damage.
    Verify {
        /// TOML config file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data directory. Overrides the config.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Print a running server's status (from its metrics endpoint).
    Status {
        /// The server's metrics address (server.metrics_listen).
        #[arg(long, default_value = "127.0.0.1:8981")]
        metrics: String,
        /// Print the figures as JSON (`/status.json`) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run actions for a server as a Remote Worker API bot.
    Worker {
        /// The server's bots listener: `unix:<data>/bots.sock`, `grpc://HOST:PORT` or
        /// `grpcs://HOST:PORT` (TLS, with `--tls-ca`).
        #[arg(long)]
        server: String,
        /// Directory for the file cache and action directories (one filesystem, so staging
        /// can hardlink from the cache).
        #[arg(long)]
        work_dir: PathBuf,
        /// Actions run at once.
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Extra platform property `key=value` to advertise; repeat for several.
        #[arg(long = "property")]
        properties: Vec<String>,
        /// RLIMIT_AS for each action, bytes (0: unlimited).
        #[arg(long, default_value_t = 0)]
        memory_limit_bytes: u64,
        /// RLIMIT_NOFILE for each action (0: inherited).
        #[arg(long, default_value_t = 0)]
        open_files_limit: u64,
        /// Isolation of each action: `none`, or `namespaces` (new network, IPC, UTS and PID
        /// namespaces per action; needs CAP_SYS_ADMIN).
        #[arg(long, value_enum, default_value_t = kiln::worker::Isolation::None)]
        isolation: kiln::worker::Isolation,
        /// Most bytes of the input file cache in `<work-dir>/cache`; least recently used files
        /// are removed past it (0: unbounded).
        #[arg(long, default_value_t = kiln::worker::DEFAULT_CACHE_MAX_BYTES)]
        cache_max_bytes: u64,
        /// The server's data dir, to copy input files from its store instead of over gRPC
        /// (default: the directory of a `unix:` --server socket; a store that cannot be read
        /// means inputs come over gRPC).
        #[arg(long)]
        server_data_dir: Option<PathBuf>,
        /// User actions run as: a name or `uid[:gid]` (default: `nobody` when the worker is
        /// root; a worker that is not root runs them as its own user in a user namespace).
        #[arg(long)]
        action_user: Option<String>,
        /// Allow actions to run as root (uid 0). Root inside the sandbox can undo its mounts
        /// and reach the server's sockets: only for trusted actions.
        #[arg(long)]
        allow_root_actions: bool,
        /// A directory to hide from actions (covered by an empty tmpfs in their mount
        /// namespace), beside the server data dir and the work dir; repeat for several.
        /// Use it for a socket outside the data dir.
        #[arg(long = "action-hide")]
        action_hide: Vec<PathBuf>,
        /// A directory actions may write besides their own (bound read-write into the
        /// sandbox), e.g. a shared scratch dir; repeat for several.
        #[arg(long = "action-writable")]
        action_writable: Vec<PathBuf>,
        /// `none` (default): each action gets a network namespace with only its own loopback,
        /// so it cannot reach the server's TCP port (and write the action cache) or the
        /// network. `host`: actions share the worker's network (for builds that download);
        /// then protect the server's ports with `[auth]` or a firewall.
        #[arg(long = "action-network", value_enum, default_value = "none")]
        action_network: ActionNetwork,
        /// A file holding the token sent as `authorization: Bearer` (needs the `bot` right;
        /// not needed on `bots.sock` when the worker's uid is a `[[unix_peer]]` with `bot`).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// CA certificate (PEM) that signed the server's certificate, for `grpcs://` servers.
        #[arg(long)]
        tls_ca: Option<PathBuf>,
        /// This worker's client certificate chain (PEM), for servers requiring mutual TLS.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM) of `--tls-cert`.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// The action sandbox helper the worker runs as each action's first process (internal).
    #[command(hide = true)]
    ActionSandbox(kiln::worker::SandboxArgs),
    /// Measure any REAPI endpoint (or this box's limits with `bench baseline`).
    Bench(kiln::bench::BenchArgs),
    /// Manage the tokens file of `[auth]` (send the server SIGHUP to apply).
    Token {
        #[command(subcommand)]
        action: TokenAction,
        /// The tokens file (default: `auth.tokens_file` of --config).
        #[arg(long, global = true)]
        file: Option<PathBuf>,
        /// A config whose `auth.tokens_file` names the file.
        #[arg(long, global = true)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Adds a principal and prints its new token once (only its SHA-256 is stored).
    Add {
        /// Principal name (shown in logs and metrics).
        name: String,
        /// Comma-separated rights: read, write, cache-write, execute, bot.
        #[arg(long)]
        rights: String,
    },
    /// Lists principals and their rights (no secrets).
    List,
    /// Removes a principal.
    Revoke {
        /// Principal name.
        name: String,
    },
}

fn token_command(
    action: TokenAction,
    file: Option<PathBuf>,
    config: Option<PathBuf>,
) -> Result<(), String> {
    use kiln::auth::admin;
    let path = match (file, config) {
        (Some(f), _) => f,
        (None, Some(c)) => {
            let c = load(Some(c))?;
            if c.auth.tokens_file.is_empty() {
                return Err("the config sets no auth.tokens_file; pass --file".into());
            }
            PathBuf::from(c.auth.tokens_file)
        }
        (None, None) => return Err("pass --file PATH or --config kiln.toml".into()),
    };
    match action {
        TokenAction::Add { name, rights } => {
            let token = admin::add(&path, &name, &rights).map_err(|e| e.to_string())?;
            println!("{token}");
            eprintln!(
                "kiln: added {name} to {}; the token above is shown only now. \
                 Send the server SIGHUP to apply.",
                path.display()
            );
        }
        TokenAction::List => print!("{}", admin::list(&path).map_err(|e| e.to_string())?),
        TokenAction::Revoke { name } => {
            admin::revoke(&path, &name).map_err(|e| e.to_string())?;
            eprintln!("kiln: revoked {name}; send the server SIGHUP to apply.");
        }
    }
    Ok(())
}

fn load(config: Option<PathBuf>) -> Result<Config, String> {
    match config {
        Some(path) => Config::load(&path).map_err(|e| e.to_string()),
        None => Ok(Config::default()),
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}

/// `kiln action-sandbox`, parsed on its own: the worker starts one per action, and building
/// the whole command line (every subcommand's arguments) and the log filter first cost each
/// action's start time for nothing.
#[derive(Parser)]
#[command(name = "kiln action-sandbox")]
struct SandboxCli {
    #[command(flatten)]
    args: kiln::worker::SandboxArgs,
}

fn main() -> ExitCode {
    // The sandbox helper must stay single-threaded (user namespaces need it): no runtime, no
    // logger (it reports through its stdin pipe and stderr).
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "action-sandbox")
    {
        let cli = SandboxCli::parse_from(std::env::args_os().skip(1));
        return kiln::worker::sandbox_main(&cli.args);
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    // Reached only when `action-sandbox` is not the first argument (the worker always puts
    // it first): the same helper, with the logger already up.
    if let Command::ActionSandbox(args) = &cli.command {
        return kiln::worker::sandbox_main(args);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = match cli.command {
        Command::Serve {
            config,
            listen,
            data_dir,
            metrics_listen,
        } => runtime.block_on(async {
            let mut config = load(config)?;
            if !listen.is_empty() {
                config.server.listen = listen;
            }
            if let Some(dir) = data_dir {
                config.server.data_dir = dir;
            }
            if let Some(addr) = metrics_listen {
                config.server.metrics_listen = addr;
            }
            kiln::setup::serve(config, shutdown_signal())
                .await
                .map_err(|e| e.to_string())
        }),
        Command::Verify { config, data_dir } => load(config).and_then(|mut config| {
            if let Some(dir) = data_dir {
                config.server.data_dir = dir;
            }
            let report = kiln::admin::verify(&config).map_err(|e| e.to_string())?;
            println!("{}", kiln::admin::describe(&report));
            kiln::admin::outcome(&report)
        }),
        Command::Status { metrics, json } => runtime
            .block_on(kiln::admin::status(&metrics, json))
            .map(|s| print!("{s}")),
        Command::Worker {
            server,
            work_dir,
            concurrency,
            properties,
            memory_limit_bytes,
            open_files_limit,
            isolation,
            cache_max_bytes,
            server_data_dir,
            action_user,
            allow_root_actions,
            action_hide,
            action_writable,
            action_network,
            token_file,
            tls_ca,
            tls_cert,
            tls_key,
        } => runtime.block_on(async {
            let tls = kiln::auth::ClientTls {
                ca: tls_ca,
                cert: tls_cert,
                key: tls_key,
            };
            let bearer = match &token_file {
                Some(p) => kiln::auth::Bearer::from_file(p).map_err(|e| e.to_string())?,
                None => kiln::auth::Bearer::none(),
            };
            let (uid, gid) = kiln::worker::resolve_user(action_user.as_deref(), allow_root_actions)
                .map_err(|e| e.to_string())?;
            let helper = std::env::current_exe()
                .map_err(|e| format!("cannot find the kiln executable: {e}"))?;
            let sandbox = kiln::worker::Sandbox {
                helper,
                uid,
                gid,
                hide: action_hide,
                writable: action_writable,
                private_network: action_network == ActionNetwork::None,
            };
            let properties = properties
                .iter()
                .map(|p| {
                    p.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| format!("--property {p:?} is not key=value"))
                })
                .collect::<Result<Vec<_>, String>>()?;
            let config = kiln::worker::WorkerConfig {
                server,
                work_dir,
                concurrency,
                properties,
                limits: kiln::worker::Limits {
                    memory_bytes: memory_limit_bytes,
                    open_files: open_files_limit,
                    core_dumps: false,
                    isolation,
                    sandbox: Some(std::sync::Arc::new(sandbox)),
                },
                cache_max_bytes,
                server_data_dir,
            };
            tokio::select! {
                r = kiln::worker::run_tls(config, bearer, tls) => r.map_err(|e| e.to_string()),
                () = shutdown_signal() => Ok(()),
            }
        }),
        Command::Bench(args) => runtime.block_on(kiln::bench::run(args)),
        Command::Token {
            action,
            file,
            config,
        } => token_command(action, file, config),
        Command::ActionSandbox(_) => unreachable!("handled before the runtime starts"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln: {e}");
            ExitCode::FAILURE
        }
    }
}
