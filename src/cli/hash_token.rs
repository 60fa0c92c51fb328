//! `ark-gateway hash-token`: prints the SHA-256 of a token read on stdin.

use std::io::Read;
use std::process::ExitCode;

pub fn run() -> ExitCode {
    let mut token = String::new();
    if std::io::stdin().read_to_string(&mut token).is_err() {
        eprintln!("cannot read the token from stdin");
        return ExitCode::FAILURE;
    }
    let token = token.strip_suffix('\n').unwrap_or(&token);
    let token = token.strip_suffix('\r').unwrap_or(token);
    if token.is_empty() {
        eprintln!("the token on stdin is empty");
        return ExitCode::FAILURE;
    }
    println!("{}", hex::encode(ark_gateway::tenant::token_sha256(token.as_bytes())));
    ExitCode::SUCCESS
}
