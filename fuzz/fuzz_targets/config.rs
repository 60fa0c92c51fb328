//! Config parsing: any text is either a valid config or a list of problems;
//! never a panic, and never an echo of a value that looks like a key.
#![no_main]

use ark_gateway::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let env = |_: &str| Some("sk-fuzz-secret-value".to_string());
    if let Err(e) = Config::from_toml_str(text, &env) {
        let shown = e.to_string();
        assert!(!e.problems.is_empty());
        assert!(!shown.contains("sk-fuzz-secret-value"));
    }
});
