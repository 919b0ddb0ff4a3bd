//! The complete customer-service demo server: visitor widget, agent console,
//! the bot, and the data hub, on the embedded defaults.
//!
//! **Not built yet.** It needs cs-transport, cs-intent and cs-datahub, which
//! have their own issues. Until it lands this prints what to run instead and
//! exits with status 2, rather than pretending to serve.

use std::process::ExitCode;

fn main() -> ExitCode {
    eprintln!(
        "chat_server is not built yet: it arrives once cs-transport, cs-intent and cs-datahub land.\n\
         Meanwhile, `cargo run --example quickstart` shows routing and storage with cs-core."
    );
    ExitCode::from(2)
}
