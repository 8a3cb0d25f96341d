//! berthd entry point: the master by default, a worker generation when started by a master,
//! or one of the `upgrade`/`preflight` commands (and the daemon's own `lxcfs-reattach`
//! helper, dispatched here before any thread exists: it enters a mount namespace).

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let mut flags = berthd::config::Flags::parse();
    match flags.command.take() {
        Some(berthd::config::Command::Upgrade(args)) => berthd::upgrade_cli::run(args),
        Some(berthd::config::Command::Preflight) => berthd::upgrade_cli::preflight(),
        Some(berthd::config::Command::LxcfsReattach(args)) => berthd::lxcfs::reattach::run(args),
        None => {
            let config = berthd::config::Config::load(flags)?;
            if berthd::worker::is_worker() {
                berthd::worker::run(config)
            } else {
                berthd::master::run(config, std::env::args_os().skip(1).collect())
            }
        }
    }
}
