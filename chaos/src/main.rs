//! `make chaos`: redis-pay under a nemesis, judged by a checker (issue 14).
//!
//! Starts the system on 127.0.0.1 (a primary and a replica with the module
//! behind three Sentinels, two pay-sidecars, a provider stand-in with a
//! ledger, a Slack stand-in), runs the application clients while the
//! nemesis injects faults from a seeded schedule, lets the system settle,
//! checks the five invariants over the whole history, and writes the report.
//! Exit status: 0 every invariant holds, 1 one was violated, 2 the run could
//! not be carried out.

mod checker;
mod clients;
mod clock;
mod history;
mod nemesis;
mod procs;
mod provider;
mod redisio;
mod report;
mod run;
mod settings;
mod slack;
mod system;

use clap::Parser;

fn main() {
    let opts = settings::Options::parse();
    let code = match run::run(&opts) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("pay-chaos: {e}");
            2
        }
    };
    // Every child is stopped by now (the system's guards dropped).
    std::process::exit(code);
}
