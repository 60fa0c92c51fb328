//! `ark-gateway audit verify FILE…`: checks the audit hash chain.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum AuditAction {
    /// Verify one chain spread over FILES, oldest first (rotated files, then the current one).
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

pub fn run(action: AuditAction) -> ExitCode {
    let AuditAction::Verify { files } = action;
    let mut readers: Vec<(String, Box<dyn std::io::BufRead>)> = Vec::new();
    for path in &files {
        match std::fs::File::open(path) {
            Ok(f) => readers.push((path.display().to_string(), Box::new(std::io::BufReader::new(f)))),
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    match ark_gateway::audit::chain::verify_files(readers) {
        Ok(finding @ ark_gateway::audit::chain::Finding::Intact { .. }) => {
            println!("{finding}");
            ExitCode::SUCCESS
        }
        Ok(finding) => {
            println!("{finding}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("cannot read the audit files: {e}");
            ExitCode::from(2)
        }
    }
}
