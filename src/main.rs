use std::process::ExitCode;

use clap::Parser;
use kvs::{Args, Config};

/// glibc's allocator spent a fifth of a busy node's CPU in `_int_malloc`, most of it on
/// blocks freed by another thread than the one that allocated them; mimalloc frees those
/// without locks and keeps no per-block header (the store holds a million small blocks).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `kvs healthcheck`: for a Docker `HEALTHCHECK` or a Kubernetes probe (the image has no
/// shell and no curl).
#[derive(Parser)]
#[command(
    name = "kvs healthcheck",
    bin_name = "kvs healthcheck",
    about = "Probes a kvs node over HTTP: exit 0 if it is ready (or, with --live, serving), \
             1 with a one-line reason if not"
)]
struct Healthcheck {
    /// The node to probe, host:port. Default: BIND_ADDRESS (a wildcard IP is probed on
    /// 127.0.0.1), else SOCKET_ADDRESS: the node of this container or pod.
    #[arg(long)]
    address: Option<String>,
    /// Probe liveness (the node serves HTTP) instead of readiness (it has a shard map and
    /// holds its shard's data).
    #[arg(long)]
    live: bool,
    /// How long to wait for the answer.
    #[arg(long, default_value_t = 2000)]
    timeout_ms: u64,
}

fn healthcheck(args: Healthcheck) -> ExitCode {
    let env = |name| std::env::var(name).ok();
    let address = args.address.or_else(|| {
        kvs::health::local_address(
            env("BIND_ADDRESS").as_deref(),
            env("SOCKET_ADDRESS").as_deref(),
        )
    });
    let Some(address) = address else {
        eprintln!("kvs healthcheck: no address (--address, BIND_ADDRESS or SOCKET_ADDRESS)");
        return ExitCode::from(2);
    };
    let path = if args.live {
        kvs::health::LIVE_PATH
    } else {
        kvs::health::READY_PATH
    };
    let timeout = std::time::Duration::from_millis(args.timeout_ms);
    match kvs::health::probe(&address, path, timeout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvs healthcheck: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "healthcheck")
    {
        return healthcheck(Healthcheck::parse_from(std::env::args_os().skip(1)));
    }
    let args = Args::parse();
    let config = match Config::from_args(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("kvs: {e}");
            return ExitCode::from(2);
        }
    };
    let mut logger = env_logger::Builder::from_env(
        env_logger::Env::default()
            .default_filter_or("info,chitchat=warn,actix_server=warn,fjall=warn,lsm_tree=warn"),
    );
    if args.log_format == kvs::config::LogFormat::Json {
        logger.format(|buf, record| {
            use std::io::Write;
            let ts = buf.timestamp_millis().to_string();
            let msg = record.args().to_string();
            let line = kvs::config::json_log_line(&ts, record.level(), record.target(), &msg);
            writeln!(buf, "{line}")
        });
    }
    logger.init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kvs: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(kvs::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kvs: {e:#}");
            ExitCode::FAILURE
        }
    }
}
