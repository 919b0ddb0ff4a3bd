//! The complete customer-service demo server: visitor widget, agent console,
//! the bot, and the data hub, on the embedded defaults.
//!
//! **Not built yet.** The crates it wires together (cs-transport, cs-intent,
//! cs-datahub) have landed; the server itself is the next issue. Until it
//! lands this prints what to run instead and exits with status 2, rather than
//! pretending to serve.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "chat_server is not built yet: it is the next piece of work, wiring the landed crates into one server.\n\
         Meanwhile you can run:\n  \
         cargo run --example quickstart            # routing and storage with cs-core\n  \
         cargo run --example datahub_profile       # one profile from an ERP and a CRM\n  \
         cargo run --release --example loadgen -- --connections 2000 --rate 30000 --duration 10 --baseline\n  \
         cargo run --release -p cs-intent --example intent_eval -- --train TRAIN.csv --test TEST.csv"
    );
    ExitCode::from(2)
}
