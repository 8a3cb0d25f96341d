//! berthd entry point: parse flags, load the configuration, run the daemon.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let flags = berthd::config::Flags::parse();
    let config = berthd::config::Config::load(flags)?;
    berthd::server::run(config)
}
