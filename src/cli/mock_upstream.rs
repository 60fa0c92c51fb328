//! `ark-gateway mock-upstream`: the simulated Ark tasks API, as a process.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use ark_gateway::mock_upstream::{MockOptions, MockTls, MockUpstream};
use tokio::net::TcpListener;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value = "127.0.0.1:9800")]
    listen: SocketAddr,
    #[arg(long)]
    api_key: String,
    /// How long a new task stays queued.
    #[arg(long, default_value = "2s", value_parser = super::duration)]
    queued_for: Duration,
    /// How long it then runs before it succeeds.
    #[arg(long, default_value = "3s", value_parser = super::duration)]
    running_for: Duration,
    /// Delay before every answer (a slow upstream).
    #[arg(long, default_value = "0s", value_parser = super::duration)]
    delay: Duration,
    /// Do not keep a copy of each request (benchmarks).
    #[arg(long)]
    no_record: bool,
    /// Serve TLS with this PEM certificate chain (ALPN h2 and http/1.1), as Ark does.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
}

pub fn run(args: Args) -> ExitCode {
    super::init_logging(Default::default());
    super::runtime().block_on(async {
        let listener = match TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("cannot bind {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => match (std::fs::read_to_string(cert), std::fs::read_to_string(key)) {
                (Ok(cert_pem), Ok(key_pem)) => Some(MockTls { cert_pem, key_pem }),
                (Err(e), _) | (_, Err(e)) => {
                    eprintln!("cannot read the TLS certificate or key: {e}");
                    return ExitCode::FAILURE;
                }
            },
            _ => None,
        };
        let options = MockOptions {
            api_key: args.api_key,
            queued_for: args.queued_for,
            running_for: args.running_for,
            delay: args.delay,
            record: !args.no_record,
            tls,
        };
        let mock = match MockUpstream::start(listener, options) {
            Ok(mock) => mock,
            Err(e) => {
                eprintln!("mock-upstream: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("mock-upstream listening on {}", mock.base_url());
        let _ = std::io::stdout().flush();
        super::stop_signal().await;
        mock.shutdown().await;
        ExitCode::SUCCESS
    })
}
