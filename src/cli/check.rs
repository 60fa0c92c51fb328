//! `ark-gateway check`: validates a config file and prints every problem.

use std::path::Path;
use std::process::ExitCode;

use ark_gateway::config::Config;

pub fn run(config: &Path) -> ExitCode {
    match Config::load(config) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("  warning: {warning}");
            }
            println!("{}: ok", config.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {} problem(s)", config.display(), e.problems.len());
            for problem in &e.problems {
                eprintln!("  {problem}");
            }
            ExitCode::FAILURE
        }
    }
}
