//! The trivial server: the same HTTP stack as kvs (actix-web, keep-alive, two workers),
//! answering every request with a fixed small JSON body of about the size of a kvs GET
//! answer. It is the ceiling of HTTP request/response on this machine.

use std::net::SocketAddr;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct FixedArgs {
    /// Where to listen, e.g. 127.0.0.40:9000.
    #[arg(long)]
    pub bind: SocketAddr,
    /// actix worker threads (kvs uses 2).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Set TCP_NODELAY on accepted connections (actix-web leaves the OS default, off).
    #[arg(long)]
    pub nodelay: bool,
}

/// A kvs GET answer for a 100-byte value, with a token of the size kvs issues, so that the
/// client does the same work (parsing, carrying the token) as against kvs.
const BODY: &str = concat!(
    r#"{"causal-metadata":"AQADBH8AAAsfkAEEfwAADB-QAQR_AAANH5ABsHv1B14zGV0","#,
    r#""message":"Retrieved successfully","#,
    r#""value":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","#,
    r#""version":"AQADBH8AAAsfkAEEfwAADB-QAQR_AAANH5ABsHv1B14zGV0"}"#
);

pub fn main(args: FixedArgs) -> Result<()> {
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(|| {
            // The body is read (as kvs reads it): an unread body makes actix close the
            // connection instead of keeping it alive.
            App::new().default_service(web::to(|_body: web::Bytes| async {
                HttpResponse::Ok()
                    .content_type("application/json")
                    .body(BODY)
            }))
        })
        .workers(args.workers)
        .backlog(4096)
        .keep_alive(Duration::from_secs(75))
        .tcp_nodelay(args.nodelay)
        .bind(args.bind)?
        .run()
        .await
    })?;
    Ok(())
}
