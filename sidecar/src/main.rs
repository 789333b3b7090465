//! pay-sidecar: parses options, sets up logging and signals, and runs the
//! daemon ([`pay_sidecar::run`]).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use log::{error, info, warn};

use pay_sidecar::options::{LogFormat, Options};

fn init_logging(format: LogFormat) {
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        builder.format(|buf, record| {
            let line = serde_json::json!({
                "ts": humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                "level": record.level().to_string(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    builder.init();
}

fn main() {
    let opts = Options::parse();
    init_logging(opts.log_format);
    if let Err(e) = opts.validate() {
        error!("{e}");
        std::process::exit(2);
    }
    let shutdown = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(signal, shutdown.clone()) {
            error!("cannot handle signal {signal}: {e}");
            std::process::exit(1);
        }
    }
    // On SIGTERM/SIGINT: stop claiming, let in-flight payments finish, and
    // exit at the deadline whatever is left (its lease runs out; the next
    // claim retries it, and the idempotency key makes that safe).
    let (said, heard) = std::sync::mpsc::channel();
    {
        let (stop, deadline) = (shutdown.clone(), opts.shutdown_timeout);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
            info!("stopping: no new claims; finishing in-flight payments");
            let _ = said.send(());
            std::thread::sleep(deadline);
            warn!("shutdown deadline reached; exiting");
            std::process::exit(0);
        });
    }
    if let Err(e) = pay_sidecar::run(opts, shutdown) {
        error!("{e}");
        std::process::exit(1);
    }
    // The run ends on shutdown: let the log say so before the process ends.
    let _ = heard.recv_timeout(Duration::from_secs(1));
}
