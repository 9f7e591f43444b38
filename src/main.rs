use std::process::ExitCode;

use clap::Parser;
use kvs::{Args, Config};

/// glibc's allocator spent a fifth of a busy node's CPU in `_int_malloc`, most of it on
/// blocks freed by another thread than the one that allocated them; mimalloc frees those
/// without locks and keeps no per-block header (the store holds a million small blocks).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::from_args(&args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("kvs: {e}");
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::from_env(
        env_logger::Env::default()
            .default_filter_or("info,chitchat=warn,actix_server=warn,fjall=warn,lsm_tree=warn"),
    )
    .init();
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
