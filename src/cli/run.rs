//! `ark-gateway run`: serves until SIGTERM/SIGINT; SIGHUP reloads the config.

use std::path::PathBuf;
use std::process::ExitCode;

use ark_gateway::config::Config;
use ark_gateway::gateway;

pub fn run(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: the gateway will not start:", path.display());
            for problem in &e.problems {
                eprintln!("  {problem}");
            }
            return ExitCode::FAILURE;
        }
    };
    super::init_logging(config.log);
    super::runtime().block_on(async {
        let running = match gateway::start(config, Some(path)).await {
            Ok(running) => running,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = signal(SignalKind::hangup()).expect("installing the SIGHUP handler");
        let stop = super::stop_signal();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = hangup.recv() => {
                    tracing::info!("SIGHUP: reloading the config");
                    let _ = running.reload();
                }
                () = &mut stop => break,
            }
        }
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}
