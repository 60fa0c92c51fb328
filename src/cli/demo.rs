//! `ark-gateway demo`: the mock upstream and a gateway with two demo tenants.

use std::net::SocketAddr;
use std::process::ExitCode;

use ark_gateway::demo;

pub fn run(listen: SocketAddr) -> ExitCode {
    super::init_logging(Default::default());
    super::runtime().block_on(async {
        match demo::start(listen).await {
            Ok((mock, gateway)) => {
                eprintln!("{}", demo::instructions(gateway.addr(), gateway.admin_addr()));
                gateway.run_until(super::stop_signal()).await;
                mock.shutdown().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("demo: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
