//! Every example config in `config/` parses and validates.

use ark_gateway::config::{AuditSinkConfig, Config, RatePeriod};

#[test]
fn the_real_ark_config_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("ark-api-key");
    std::fs::write(&key_file, "sk-from-a-mounted-secret\n").unwrap();
    let text = std::fs::read_to_string("config/ark-gateway.toml")
        .unwrap()
        .replace("/run/secrets/ark-api-key", key_file.to_str().unwrap());
    let config = Config::from_toml_str(&text, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.upstream.base_url, "https://ark.cn-beijing.volces.com/api/v3");
    assert!(!config.upstream.allow_insecure_http);
    assert_eq!(config.tenants.len(), 2);
    assert_eq!(config.audit.sink, AuditSinkConfig::File("logs/audit.jsonl".into()));
    assert_eq!(config.tenants[1].rate_limit.per, RatePeriod::Minute);
    assert_eq!(config.server.workers.get(), 2);
    assert!(format!("{config:?}").contains("[redacted]"));
    assert!(!format!("{config:?}").contains("sk-from-a-mounted-secret"));
}

#[test]
fn the_demo_config_is_valid() {
    let text = std::fs::read_to_string("config/demo.toml").unwrap();
    let env = |name: &str| (name == "ARK_GATEWAY_DEMO_KEY").then(|| "demo-key".to_string());
    let config = Config::from_toml_str(&text, &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.tenants.len(), 2);
    assert_eq!(text, ark_gateway::demo::DEMO_CONFIG, "the demo embeds this very file");
}

#[test]
fn workers_default_to_the_cores_and_zero_is_refused() {
    let base = "[upstream]\nbase_url = \"https://ark.example/api/v3\"\napi_key_env = \"K\"\n[[tenant]]\nname = \"a\"\ntoken_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\noperations = [\"get\"]\nrate_limit = { per_second = 1 }\n";
    let env = |_: &str| Some("k".to_string());
    let config = Config::from_toml_str(base, &env).unwrap_or_else(|e| panic!("{e}"));
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(config.server.workers.get(), cores);
    let zero = format!("[server]\nworkers = 0\n{base}");
    let err = Config::from_toml_str(&zero, &env).unwrap_err();
    assert!(err.mentions("server.workers"), "{err}");
}

#[test]
fn a_missing_key_file_is_reported_with_its_key() {
    let text = "[upstream]\nbase_url = \"https://ark.example/api/v3\"\napi_key_file = \"/nonexistent/key\"\n";
    let err = Config::from_toml_str(text, &|_| None).unwrap_err();
    assert!(err.mentions("upstream.api_key_file"), "{err}");
    assert!(err.mentions("tenant"), "{err}");
}

#[test]
fn the_tasks_cli_reads_the_store_and_its_retention_without_the_key() {
    use ark_gateway::config::StoreView;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    // No Ark key is reachable: an operator managing the ledger need not hold it.
    let text = "[upstream]\nbase_url = \"https://x\"\napi_key_env = \"NOT_SET_ANYWHERE\"\n\n\
                [store]\nbackend = \"redis\"\nurl = \"redis://:secret@127.0.0.1:1/0\"\nretention = \"7d\"\n\n\
                [[tenant]]\nname = \"video-team\"\n";
    std::fs::write(&path, text).unwrap();
    let view = StoreView::load(&path).unwrap();
    assert_eq!(view.retention, std::time::Duration::from_secs(7 * 86400));
    assert_eq!(view.tenant_names, ["video-team"]);
    let (url, prefix) = view.redis.expect("the Redis store");
    assert_eq!(prefix, "ark-gateway:");
    assert!(!format!("{url:?} {url}").contains("secret"), "the password is hidden");
    // Without `store.retention`, the default the gateway uses.
    std::fs::write(&path, text.replace("retention = \"7d\"\n", "")).unwrap();
    assert_eq!(
        StoreView::load(&path).unwrap().retention,
        std::time::Duration::from_secs(30 * 86400)
    );
}

/// A minimal valid file with `extra` appended (tables after the tenant).
fn with_spend(pricing: &str, tenant_extra: &str) -> Result<Config, ark_gateway::config::ConfigError> {
    let text = format!(
        r#"
[upstream]
base_url = "https://ark.example/api/v3"
api_key_env = "K"
{pricing}
[[tenant]]
name = "t"
token_sha256 = "{}"
operations = ["create"]
rate_limit = {{ per_second = 1 }}
{tenant_extra}
"#,
        "ab".repeat(32)
    );
    Config::from_toml_str(&text, &|name| (name == "K").then(|| "sk-x".to_string()))
}

#[test]
fn a_cost_budget_needs_a_price_for_every_model_the_tenant_may_use() {
    let priced = "[pricing]\n[[pricing.model]]\nmodel = \"m1\"\nper_million_tokens = 15.0\n";
    // No models list: any model, so a default price is needed.
    let err = with_spend(priced, "budget = { monthly_cost = 10.0 }").unwrap_err();
    assert!(err.mentions("tenant[0].budget"), "{err}");
    // A listed model without a price.
    let err = with_spend(priced, "models = [\"m1\", \"m2\"]\nbudget = { daily_cost = 1.0 }").unwrap_err();
    assert!(err.to_string().contains("m2"), "{err}");
    // Every listed model priced, or a default: accepted.
    with_spend(priced, "models = [\"m1\"]\nbudget = { daily_cost = 1.0 }").unwrap();
    let defaulted = "[pricing]\ndefault_per_million_tokens = 2.5\n";
    with_spend(defaulted, "budget = { monthly_cost = 10.0 }").unwrap();
    // A token budget needs no price.
    with_spend("", "budget = { daily_tokens = 1000 }").unwrap();
}

#[test]
fn spend_settings_are_checked_with_their_keys() {
    let err = with_spend(
        "[pricing]\ncurrency = \"\"\n[[pricing.model]]\nper_million_tokens = -1.0\n",
        "max_active_tasks = 0\nbudget = { daily_tokens = -5, monthly_cost = 0.0 }\ncallback_hosts = [\"https://x\", \"*.\"]",
    )
    .unwrap_err();
    for key in [
        "pricing.currency",
        "pricing.model[0].model",
        "tenant[0].max_active_tasks",
        "tenant[0].budget.daily_tokens",
        "tenant[0].budget.monthly_cost",
        "tenant[0].callback_hosts",
    ] {
        assert!(err.mentions(key), "{key} in:\n{err}");
    }
    let config = with_spend("", "max_active_tasks = 4").unwrap();
    assert!(config.reconcile.enabled, "a quota switches the reconciler on");
    assert!(!with_spend("", "").unwrap().reconcile.enabled, "off without governance");
}

fn tenants_config(tenants: &str) -> Result<Config, ark_gateway::config::ConfigError> {
    let text = format!("[upstream]\nbase_url = \"https://ark.example/api/v3\"\napi_key_env = \"K\"\n{tenants}");
    Config::from_toml_str(&text, &|name| (name == "K").then(|| "sk-x".to_string()))
}

fn tenant_with(name: &str, tokens: &str) -> String {
    format!("[[tenant]]\nname = \"{name}\"\noperations = [\"get\"]\nrate_limit = {{ per_second = 1 }}\n{tokens}\n")
}

#[test]
fn several_tokens_per_tenant_with_names_and_expiry() {
    let (a, b, c) = ("aa".repeat(32), "bb".repeat(32), "cc".repeat(32));
    let config = tenants_config(&tenant_with(
        "t",
        &format!("token_sha256 = \"{a}\"\ntokens = [{{ sha256 = \"{b}\", name = \"ci\", expires = \"2027-06-30T08:00:00+08:00\" }}, {{ sha256 = \"{c}\", name = \"old\", expires = \"2020-01-01T00:00:00Z\" }}]"),
    ))
    .unwrap();
    let tokens = &config.tenants[0].tokens;
    assert_eq!(tokens.len(), 3);
    assert_eq!(
        (tokens[0].name.as_deref(), tokens[1].name.as_deref()),
        (None, Some("ci"))
    );
    assert_eq!(tokens[1].expires_ms, Some(1_814_313_600_000), "2027-06-30T00:00:00Z");
    // Already expired: accepted, with a warning naming the key.
    assert_eq!(config.warnings.len(), 1);
    assert_eq!(config.warnings[0].key, "tenant[0].tokens[1].expires");
}

#[test]
fn a_digest_that_appears_twice_anywhere_is_refused() {
    let a = "aa".repeat(32);
    let across = tenants_config(&format!(
        "{}{}",
        tenant_with("one", &format!("token_sha256 = \"{a}\"")),
        tenant_with("two", &format!("tokens = [{{ sha256 = \"{a}\", name = \"x\" }}]"))
    ))
    .unwrap_err();
    assert!(across.mentions("tenant[1].tokens[0].sha256"), "{across}");
    assert!(across.to_string().contains("tenant[0]"), "{across}");
    let within = tenants_config(&tenant_with(
        "one",
        &format!("token_sha256 = \"{a}\"\ntokens = [{{ sha256 = \"{a}\", name = \"x\" }}]"),
    ))
    .unwrap_err();
    assert!(within.mentions("tenant[0].tokens[0].sha256"), "{within}");
    let b = "bb".repeat(32);
    let names = tenants_config(&tenant_with(
        "one",
        &format!("tokens = [{{ sha256 = \"{a}\", name = \"x\" }}, {{ sha256 = \"{b}\", name = \"x\" }}, {{ name = \"y\" }}, {{ sha256 = \"{}\" }}, {{ sha256 = \"{}\", name = \"z\", expires = \"soon\" }}]", "cc".repeat(32), "dd".repeat(32)),
    ))
    .unwrap_err();
    for key in [
        "tenant[0].tokens[1].name",
        "tenant[0].tokens[2].sha256",
        "tenant[0].tokens[3].name",
        "tenant[0].tokens[4].expires",
    ] {
        assert!(names.mentions(key), "{key} in:\n{names}");
    }
}
