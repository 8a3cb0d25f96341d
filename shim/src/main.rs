//! `berth-shim --config <shim-dir>/config.json`: the per-container monitor (see the library docs).

fn main() {
    std::process::exit(berth_shim::main_entry(std::env::args_os()));
}
