//! An ordinary axum shop with the cs service desk nested at `/support`.
//!
//! ```sh
//! cargo run --release --example shop -- --addr 127.0.0.1:8081
//! # then log in at http://127.0.0.1:8081/login (ann / demo) and open the chat;
//! # staff answer at http://127.0.0.1:8081/support/agent (alice / demo)
//! ```
//!
//! The shop is the shop's, and knows nothing of customer service:
//!
//! - `shop.rs`: its SQLite tables (customers, products, orders, sessions).
//! - `pages.rs`: its pages (products, a login form, the orders) and assets/.
//!
//! The customer service is one file, `support.rs`: who a request is, the
//! orders panel over the shop's orders table, the desk, the nest, the tag.

mod pages;
mod shop;
mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Errors on the way up, each with what to do about it.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Flags; each also reads an environment variable.
#[derive(Parser, Debug)]
#[command(about = "An ordinary shop with the cs service desk at /support")]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, env = "SHOP_ADDR", default_value = "127.0.0.1:8081")]
    addr: SocketAddr,
    /// Where the shop's database and the desk's database, key and uploads live.
    #[arg(long, env = "SHOP_DATA_DIR", default_value = "./shop-data")]
    data_dir: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // Logs go to stderr, so stdout carries only the "listening" line.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shop: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), BoxError> {
    let dir = &args.data_dir;
    std::fs::create_dir_all(dir).map_err(|e| {
        format!(
            "cannot create the data dir {}: {e}; pass --data-dir to put it elsewhere",
            dir.display()
        )
    })?;
    let shop = shop::Shop::open(&dir.join("shop.db"))
        .await
        .map_err(|e| format!("{e} (at {})", dir.join("shop.db").display()))?;
    let (app, desk) = support::nest(pages::routes(shop.clone()), &shop, dir).await?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| {
            format!(
                "cannot listen on {}: {e}; pass --addr to use another",
                args.addr
            )
        })?;
    let addr = listener.local_addr()?;
    // The tests read this line to find the port when --addr ends in :0.
    println!("shop listening on http://{addr}/ (staff: http://{addr}/support/agent)");
    // Until Ctrl-C or SIGTERM; then the desk drains its messages and tells
    // the open chats to reconnect.
    desk.serve(listener, app).await?;
    Ok(())
}
