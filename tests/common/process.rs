//! An `ark-gateway run` child process, its output, and log-line waits.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_ark-gateway");

pub struct GatewayProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    stderr: Arc<Mutex<String>>,
    lines: mpsc::Receiver<String>,
    stderr_reader: Option<JoinHandle<()>>,
    stdout_reader: Option<JoinHandle<String>>,
}

/// The `addr` field of a text or a JSON log line.
fn addr_in(line: &str) -> SocketAddr {
    if let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(line) {
        return fields["addr"].as_str().unwrap().parse().unwrap();
    }
    line.split("addr=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

impl GatewayProcess {
    /// Starts `ark-gateway run` and waits for the "listener ready" log lines.
    pub fn spawn(config: &Path, envs: &[(&str, &str)]) -> Self {
        let mut child = Command::new(BIN)
            .args(["run", "--config"])
            .arg(config)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ark-gateway");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, lines) = mpsc::channel();
        let reader = BufReader::new(child.stderr.take().unwrap());
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push_str(&line);
                sink.lock().unwrap().push('\n');
                let _ = tx.send(line);
            }
        });
        let mut stdout = child.stdout.take().unwrap();
        let stdout_reader = std::thread::spawn(move || {
            let mut out = String::new();
            let _ = stdout.read_to_string(&mut out);
            out
        });
        let mut process = Self {
            child,
            addr: "0.0.0.0:0".parse().unwrap(),
            admin_addr: None,
            stderr,
            lines,
            stderr_reader: Some(stderr_reader),
            stdout_reader: Some(stdout_reader),
        };
        let ready = process.wait_for_log("tenant listener ready");
        process.addr = addr_in(&ready);
        let admin = process.wait_for_log("admin listener ready");
        process.admin_addr = Some(addr_in(&admin));
        process
    }

    /// Waits (up to a minute) for the next log line containing `needle`.
    pub fn wait_for_log(&mut self, needle: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => continue,
                Err(_) => panic!(
                    "no log line with {needle:?}; log so far:\n{}",
                    self.stderr.lock().unwrap()
                ),
            }
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for exit; returns (exit code, stdout, stderr).
    pub fn wait(mut self) -> (Option<i32>, String, String) {
        let status = self.child.wait().unwrap();
        let stdout = self.stdout_reader.take().unwrap().join().unwrap();
        self.stderr_reader.take().unwrap().join().unwrap();
        let stderr = self.stderr.lock().unwrap().clone();
        (status.code(), stdout, stderr)
    }
}
