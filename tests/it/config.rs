//! Configuration mistakes are caught at start-up, each with its key, its line and what would be right.

use std::path::Path;

use tierwise::config::{Config, ConfigError, STARTER};

fn load(toml: &str) -> Result<Config, ConfigError> {
    Config::parse(toml, Path::new("tierwise.toml"), &|name| {
        (name == "SET").then(|| "value".into())
    })
}

fn error_of(toml: &str) -> String {
    match load(toml) {
        Ok(_) => panic!("config was accepted:\n{toml}"),
        Err(err) => err.to_string(),
    }
}

/// `BASE` with `from` replaced by `to`; `from` must occur exactly once, so that a change to `BASE`
/// cannot silently leave a test checking the unchanged file.
fn patched(from: &str, to: &str) -> String {
    assert_eq!(
        BASE.matches(from).count(),
        1,
        "{from:?} must occur once in BASE"
    );
    BASE.replace(from, to)
}

const BASE: &str = r#"[providers.vllm]
base_url = "http://localhost:8001/v1"

[tiers]
local = { provider = "vllm", model = "m" }

[routes.classification]
kind = "classification"
tiers = ["local"]
"#;

#[test]
fn the_starter_config_loads_without_any_environment() {
    let config =
        Config::parse(STARTER, Path::new("tierwise.toml"), &|_| None).expect("starter loads");
    assert!(config.routes.iter().any(|r| r.name == "classification"));
    assert_eq!(
        config
            .providers
            .iter()
            .find(|p| p.name == "ollama")
            .unwrap()
            .servers[0]
            .base_url
            .as_str(),
        "http://localhost:11434/v1/"
    );
    assert!(
        config
            .tiers
            .iter()
            .any(|t| t.provider.name == "openai" && t.model == "gpt-4o-mini")
    );
    assert!(
        config.warnings.iter().any(|w| w.contains("api_keys")),
        "no-auth warning missing: {:?}",
        config.warnings
    );
    assert!(
        config
            .warnings
            .iter()
            .any(|w| w.contains("providers.openai.api_key")),
        "{:?}",
        config.warnings
    );
    // Every tier is priced: the local ones by their provider's fixed cost, the API ones by the table.
    let unpriced = tierwise::ledger::Pricing::new(&config).warnings(&config);
    assert!(unpriced.is_empty(), "{unpriced:?}");
}

#[test]
fn an_unknown_key_names_the_key_and_line() {
    let err = error_of(&format!(
        "{BASE}\n[routes.summarize]\nkind = \"summarization\"\ntiers = [\"local\"]\nteirs = []\n"
    ));
    assert!(err.contains("line 14") && err.contains("teirs"), "{err}");
}

#[test]
fn a_tier_naming_a_missing_provider_lists_the_defined_ones() {
    let err = error_of(&patched("provider = \"vllm\"", "provider = \"vlm\""));
    assert!(
        err.contains("line 5: tiers.local.provider: no provider named \"vlm\" (defined: vllm)"),
        "{err}"
    );
}

#[test]
fn a_route_naming_a_missing_tier_or_an_empty_chain_is_refused() {
    let err = error_of(&patched(
        "tiers = [\"local\"]",
        "tiers = [\"local\", \"api\"]",
    ));
    assert!(
        err.contains("line 9: routes.classification.tiers: no tier named \"api\" (defined: local)"),
        "{err}"
    );
    let err = error_of(&patched("tiers = [\"local\"]", "tiers = []"));
    assert!(
        err.contains("line 9: routes.classification.tiers: the chain is empty"),
        "{err}"
    );
}

#[test]
fn a_bad_url_is_refused_with_an_example() {
    for url in [
        "localhost:8001",
        "ftp://x/v1",
        "not a url",
        "http://x/v1?key=1",
    ] {
        let err = error_of(&patched("http://localhost:8001/v1", url));
        assert!(
            err.contains("line 2: providers.vllm.base_url"),
            "{url}: {err}"
        );
        assert!(
            err.contains("e.g. \"http://localhost:8001/v1\"")
                || err.contains("e.g. \"https://api.openai.com/v1\""),
            "{url}: the message shows a URL that would be right: {err}"
        );
    }
}

#[test]
fn an_api_key_a_header_cannot_carry_is_refused_without_echoing_it() {
    let toml = patched(
        "base_url = \"http://localhost:8001/v1\"",
        "base_url = \"http://localhost:8001/v1\"\napi_key = \"sk-secret\\n\"",
    );
    let err = error_of(&toml);
    assert!(err.contains("line 3: providers.vllm.api_key"), "{err}");
    assert!(!err.contains("sk-secret"), "the key leaked: {err}");
}

#[test]
fn an_unset_environment_variable_is_named() {
    let err = error_of(&patched(
        "base_url = \"http://localhost:8001/v1\"",
        "base_url = \"http://localhost:8001/v1\"\napi_key = \"${VLLM_API_KEY}\"",
    ));
    assert!(
        err.contains(
            "line 3: providers.vllm.api_key: environment variable VLLM_API_KEY is not set"
        ),
        "{err}"
    );
    let ok = load(&patched(
        "base_url = \"http://localhost:8001/v1\"",
        "base_url = \"http://localhost:8001/v1\"\napi_key = \"${SET}\"",
    ))
    .unwrap();
    assert_eq!(ok.providers[0].api_key.as_ref().unwrap().expose(), "value");
    // The key itself never shows in debug output.
    assert!(
        !format!("{ok:?}").contains("value\""),
        "a secret leaked into Debug output"
    );
}

#[test]
fn duplicate_names_are_refused() {
    let err = error_of(&format!(
        "{BASE}\n[routes.local]\nkind = \"chat\"\ntiers = [\"local\"]\n"
    ));
    assert!(
        err.contains("line 11: routes.local") && err.contains("also a tier name"),
        "{err}"
    );
    let err = error_of(&format!(
        "{BASE}\n[routes.classification]\nkind = \"chat\"\ntiers = [\"local\"]\n"
    ));
    assert!(
        err.contains("line 11") && err.to_lowercase().contains("duplicate"),
        "{err}"
    );
    let err = error_of(&patched(
        "tiers = [\"local\"]",
        "tiers = [\"local\", \"local\"]",
    ));
    assert!(err.contains("listed twice"), "{err}");
}

#[test]
fn every_mistake_is_reported_at_once_and_only_once() {
    let toml = patched(
        "local = { provider = \"vllm\", model = \"m\" }",
        "local = { provider = \"nope\", model = \"m\", temperature = 3.0 }",
    )
    .replace(
        "tiers = [\"local\"]",
        "tiers = [\"local\"]\nbaseline = \"gpt\"",
    );
    let err = load(&toml).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("line 5: tiers.local.provider: no provider named \"nope\""),
        "{text}"
    );
    assert!(text.contains("line 5: tiers.local.temperature"), "{text}");
    assert!(
        text.contains("line 10: routes.classification.baseline: no tier named \"gpt\""),
        "{text}"
    );
    // The tier is defined, with a mistake of its own: the route naming it is not told otherwise.
    assert_eq!(err.issues().len(), 3, "{text}");
    assert!(!text.contains("no tier named \"local\""), "{text}");
}

#[test]
fn a_closed_set_names_what_it_allows() {
    let err = error_of(&patched("kind = \"classification\"", "kind = \"classify\""));
    assert!(err.contains("line 8"), "{err}");
    assert!(
        err.contains("unknown variant `classify`") && err.contains("`classification`"),
        "{err}"
    );
    let err = error_of(&patched(
        "tiers = [\"local\"]",
        "tiers = [\"local\"]\nwhen_all_open = \"wait\"",
    ));
    assert!(
        err.contains("`try_primary`") && err.contains("`fail_fast`"),
        "{err}"
    );
}

#[test]
fn route_details_are_checked() {
    let cases = [
        (
            "tiers = [\"local\"]",
            "tiers = [\"local\"]\noutput = { labels = [] }",
            "output.labels: is empty",
        ),
        (
            "tiers = [\"local\"]",
            "tiers = [\"local\"]\nbaseline = \"gpt\"",
            "baseline: no tier named \"gpt\"",
        ),
        (
            "tiers = [\"local\"]",
            "tiers = [\"local\"]\nshadow = { reference = \"local\", sample_rate = 1.5 }",
            "shadow.sample_rate: must be between 0 and 1",
        ),
        (
            "tiers = [\"local\"]",
            "tiers = [\"local\"]\nshadow = { reference = \"local\", sample_rate = 0.1 }",
            "shadow.reference: \"local\" is the route's primary tier",
        ),
        (
            "tiers = [\"local\"]",
            "tiers = [\"local\"]\nshadow = { reference = \"local\", sample_rate = 0.1, window = 10, min_samples = 20 }",
            "shadow.min_samples: is more than the window (10)",
        ),
        (
            "tiers = [\"local\"]",
            "tiers = [\"local\"]\nshadow = { reference = \"local\", sample_rate = 0.1, concurrency = 0 }",
            "shadow.concurrency: must be at least 1",
        ),
        (
            "tiers = [\"local\"]",
            "tiers = [\"local\"]\nshadow = { reference = \"local\", sample_rate = 0.1, daily_budget_usd = -1.0 }",
            "shadow.daily_budget_usd: must be a number of dollars, 0 or more",
        ),
        (
            "tiers = [\"local\"]",
            "tiers = [\"local\"]\nshadow = { reference = \"local\", sample_rate = 0.1, on_drift = \"panic\" }",
            "unknown variant `panic`, expected `alert` or `demote`",
        ),
        (
            "tiers = [\"local\"]",
            "tiers = [\"local\"]\nprompts.api = \"p.txt\"",
            "prompts.api: \"api\" is not in this route's tiers",
        ),
        (
            "tiers = [\"local\"]",
            "tiers = [\"local\"]\nprompts.local = \"missing.txt\"",
            "cannot read prompt file",
        ),
        (
            "tiers = [\"local\"]",
            "tiers = [\"local\"]\nprofile = { quality = \"best\" }",
            "unknown variant `best`, expected `good_enough` or `frontier`",
        ),
        (
            "model = \"m\" }",
            "model = \"m\", temperature = 3.0 }",
            "tiers.local.temperature: must be between 0 and 2",
        ),
    ];
    for (from, to, expected) in cases {
        let err = error_of(&patched(from, to));
        assert!(err.contains(expected), "expected {expected:?} in {err}");
    }
}

/// A webhook URL may carry a token: a bad one is named by its key, never echoed.
#[test]
fn an_alert_webhook_must_be_http_and_is_never_echoed() {
    let err = error_of(&format!(
        "{BASE}\n[alerts]\nwebhook = \"ftp://hooks.example/T0KEN-77\"\n"
    ));
    assert!(
        err.contains("alerts.webhook: is not an http:// or https:// URL"),
        "{err}"
    );
    assert!(!err.contains("T0KEN-77"), "{err}");
    let ok = format!("{BASE}\n[alerts]\nwebhook = \"https://hooks.example/T0KEN-77\"\n");
    let config = Config::parse(&ok, std::path::Path::new("t.toml"), &|_| None).unwrap();
    assert_eq!(
        config.alerts.webhook.unwrap().as_str(),
        "https://hooks.example/T0KEN-77"
    );
}

#[test]
fn providers_are_required() {
    let err = error_of("[server]\nlisten = \"127.0.0.1:4000\"\n");
    assert!(err.contains("providers: no provider is defined"), "{err}");
    let err = error_of(&format!("[server]\nlisten = \"localhost\"\n{BASE}"));
    assert!(err.contains("line 2: server.listen"), "{err}");
}

#[test]
fn every_example_config_loads_without_any_environment() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut loaded = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            if let Err(err) = Config::parse(&text, &path, &|_| None) {
                panic!("{err}");
            }
            loaded += 1;
        }
    }
    assert!(
        loaded >= 2,
        "examples/ should hold the starter and the vLLM config"
    );
}

/// A tier billed per token whose model has no known price is a warning at start that names the
/// tier and the model and says how to fix it; a priced or fixed-cost tier is not.
#[test]
fn a_tier_whose_model_has_no_price_is_warned_about() {
    let config = load(BASE).unwrap();
    let warnings = tierwise::ledger::Pricing::new(&config).warnings(&config);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("tier local uses model \"m\", which has no known price")
            && warnings[0].contains("add [prices.\"m\"]"),
        "{warnings:?}"
    );
    let fixed = load(&patched(
        "base_url = \"http://localhost:8001/v1\"",
        "base_url = \"http://localhost:8001/v1\"\nfixed_monthly_usd = 90",
    ))
    .unwrap();
    assert!(
        tierwise::ledger::Pricing::new(&fixed)
            .warnings(&fixed)
            .is_empty()
    );
}

/// A tier on an OpenAI model takes its window and abilities from the built-in table wherever the
/// config says nothing; what the config says wins; other models are assumed able and unbounded.
#[test]
fn openai_models_come_with_their_windows_and_abilities() {
    let text = patched(
        "local = { provider = \"vllm\", model = \"m\" }",
        "local = { provider = \"vllm\", model = \"m\" }\nold = { provider = \"vllm\", model = \"gpt-3.5-turbo-2024-01-25\" }\n\
         told = { provider = \"vllm\", model = \"gpt-4o\", context_tokens = 64000, vision = false }",
    );
    let config = Config::parse(&text, Path::new("t.toml"), &|_| None).unwrap();
    let tier = |name: &str| {
        config
            .tiers
            .iter()
            .find(|t| t.name == name)
            .unwrap()
            .clone()
    };
    let old = tier("old");
    assert_eq!(old.context_tokens, Some(16_385));
    assert!(old.abilities.tools && !old.abilities.json_schema && !old.abilities.vision);
    let told = tier("told");
    assert_eq!(told.context_tokens, Some(64_000));
    assert!(told.abilities.json_schema && !told.abilities.vision);
    let local = tier("local");
    assert_eq!(local.context_tokens, None);
    assert_eq!(local.abilities, tierwise::config::Abilities::ALL);
}

/// A provider's proxy comes from its `proxy` key, or else from the environment as curl reads it:
/// the variable for the URL's scheme, then `ALL_PROXY`, unless `NO_PROXY` names the host. A
/// proxy's password shows nowhere, and one tierwise cannot use is said, not silently ignored.
#[test]
fn proxies_come_from_the_key_or_the_environment_and_no_proxy_is_honoured() {
    const PROVIDERS: &str = r#"[providers.local]
base_url = "http://10.1.2.3:8000/v1"
[providers.openai]
base_url = "https://api.openai.com/v1"
[providers.pinned]
base_url = "https://api.example.com/v1"
proxy = "http://tw:key-pw@egress.internal:8080"
[providers.direct]
base_url = "https://api.example.org/v1"
proxy = ""
[tiers]
local = { provider = "local", model = "m" }
api = { provider = "openai", model = "m" }
pinned = { provider = "pinned", model = "m" }
direct = { provider = "direct", model = "m" }
[routes.classification]
kind = "classification"
tiers = ["local", "api", "pinned", "direct"]
"#;
    let proxies = |vars: &[(&str, &str)]| {
        let config = Config::parse(PROVIDERS, Path::new("t.toml"), &|name| {
            vars.iter()
                .find(|(var, _)| *var == name)
                .map(|(_, value)| value.to_string())
        })
        .unwrap();
        let debug = format!("{config:?}");
        assert!(
            !debug.contains("env-pw") && !debug.contains("key-pw"),
            "a proxy password shows: {debug}"
        );
        let of = |name: &str| {
            let provider = config.providers.iter().find(|p| p.name == name).unwrap();
            provider.servers[0]
                .proxy
                .as_ref()
                .map(|proxy| format!("{proxy:?}"))
        };
        (
            [of("local"), of("openai"), of("pinned"), of("direct")],
            config.warnings,
        )
    };
    let pinned = Some("http://egress.internal:8080/ from the proxy key (with credentials)".into());

    let (none, _) = proxies(&[]);
    assert_eq!(none, [None, None, pinned.clone(), None]);

    let (https_only, _) = proxies(&[("HTTPS_PROXY", "http://u:env-pw@squid:3128")]);
    assert_eq!(
        https_only,
        [
            None,
            Some("http://squid:3128/ from HTTPS_PROXY (with credentials)".into()),
            pinned.clone(),
            None
        ]
    );

    let (all, _) = proxies(&[
        ("all_proxy", "squid:3128"),
        ("NO_PROXY", "api.openai.com, 10.0.0.0/8"),
    ]);
    assert_eq!(all, [None, None, pinned.clone(), None]);

    let (switched_off, warnings) = proxies(&[("HTTPS_PROXY", ""), ("ALL_PROXY", "")]);
    assert_eq!(switched_off, [None, None, pinned.clone(), None]);
    assert!(
        !warnings.iter().any(|w| w.contains("PROXY")),
        "{warnings:?}"
    );

    let (http, _) = proxies(&[("http_proxy", "http://squid:3128")]);
    assert_eq!(
        http[0].as_deref(),
        Some("http://squid:3128/ from http_proxy")
    );

    let (socks, warnings) = proxies(&[("ALL_PROXY", "socks5://u:env-pw@socks:1080")]);
    assert_eq!(socks, [None, None, pinned, None]);
    assert!(
        warnings.iter().any(
            |w| w.contains("ALL_PROXY is set but is not an HTTP proxy URL")
                && w.contains("providers.openai is reached directly")
        ),
        "{warnings:?}"
    );
    assert!(!warnings.iter().any(|w| w.contains("env-pw")));

    let wrong = PROVIDERS.replace(
        "proxy = \"http://tw:key-pw@egress.internal:8080\"",
        "proxy = \"socks5://tw:key-pw@egress.internal:1080\"",
    );
    let err = Config::parse(&wrong, Path::new("t.toml"), &|_| None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("providers.pinned.proxy")
            && err.contains("line 7")
            && err.contains("is not an HTTP proxy URL"),
        "{err}"
    );
    assert!(!err.contains("key-pw"), "{err}");
}

#[test]
fn budgets_are_checked_with_their_key_and_line() {
    let api = "[providers.openai]\nbase_url = \"https://api.openai.com/v1\"\n\n[tiers.api_fast]\nprovider = \"openai\"\nmodel = \"gpt-4o-mini\"\n";
    let with = |route_budget: &str, budget: &str| {
        format!(
            "{}\n{api}\n{budget}\n",
            patched(
                "tiers = [\"local\"]",
                &format!("tiers = [\"local\"]\n{route_budget}")
            )
            .replace(
                "base_url = \"http://localhost:8001/v1\"",
                "base_url = \"http://localhost:8001/v1\"\nfixed_monthly_usd = 0",
            )
        )
    };
    let config = load(&with(
        "budget = { monthly_usd = 200, on_exhausted = \"local_any\", alert_at = 0.5 }",
        "[budget]\nmonthly_usd = 1000",
    ))
    .unwrap();
    let route = &config.routes[0];
    let budget = route.budget.unwrap();
    assert_eq!(
        (budget.monthly_pusd, budget.on_exhausted, budget.alert_at),
        (
            200_000_000_000_000,
            tierwise::config::OnExhausted::LocalAny,
            0.5
        )
    );
    let all = config.budget.unwrap();
    assert_eq!(
        (all.monthly_usd, all.on_exhausted, all.alert_at),
        (1000.0, tierwise::config::OnExhausted::LocalOnly, 0.8)
    );

    let err = error_of(&with(
        "budget = { monthly_usd = -1, alert_at = 1.5 }",
        "[budget]\nmonthly_usd = 1e12",
    ));
    for expected in [
        "line 11: routes.classification.budget.monthly_usd: must be a number of dollars from 0 to 9000000",
        "line 11: routes.classification.budget.alert_at: must be a share of the budget above 0 and at most 1",
        "line 21: budget.monthly_usd: must be a number of dollars",
    ] {
        assert!(err.contains(expected), "{expected:?} in\n{err}");
    }
    let err = error_of(&with(
        "",
        "[budget]\nmonthly_usd = 1\non_exhausted = \"fail\"",
    ));
    assert!(
        err.contains("line 22")
            && err.contains(
                "unknown variant `fail`, expected one of `local_only`, `local_any`, `reject`"
            ),
        "{err}"
    );

    // A budget over a tier whose model has no price could never be spent.
    let unpriced = with("", "[budget]\nmonthly_usd = 10")
        .replace("model = \"gpt-4o-mini\"", "model = \"my-finetune\"");
    let err = error_of(&unpriced);
    assert!(
        err.contains("budget.monthly_usd: cannot be held: tiers api_fast (\"my-finetune\")"),
        "{err}"
    );

    // Once spent, a route without a local tier can only refuse: said at start.
    let api_only = with("", "").replace(
        "tiers = [\"local\"]",
        "tiers = [\"api_fast\"]\nbudget = { monthly_usd = 5 }",
    );
    let config = load(&api_only).unwrap();
    assert!(
        config.warnings.iter().any(|w| w
            .starts_with("routes.classification.budget: route classification has no local tier")),
        "{:?}",
        config.warnings
    );
}

/// The admin key may correct budgets: a client key with the same value would let that client
/// reset its own. Refused, whether the client key is bare or named, and never echoed.
#[test]
fn an_admin_key_equal_to_a_client_key_is_refused() {
    for clients in [
        "[server]\napi_keys = [\"tw-dup-secret-42\"]\nadmin_key = \"tw-dup-secret-42\"\n",
        "[server]\nadmin_key = \"tw-dup-secret-42\"\n\n[keys.batch]\nkey = \"tw-dup-secret-42\"\n",
    ] {
        let err = error_of(&format!("{clients}\n{BASE}"));
        assert!(
            err.contains("server.admin_key: is the same key as one in keys or server.api_keys"),
            "{err}"
        );
        assert!(!err.contains("tw-dup-secret-42"), "{err}");
    }
}

/// What `tierwise check` says of limits that cannot mean what they say: a key that may call no
/// route is refused; a budget of $0 (meant at times: API tiers closed) and a budget over a route
/// with no API tier (it never applies) are warned about.
#[test]
fn limits_that_cannot_mean_what_they_say_are_refused_or_warned_about() {
    let err = error_of(&format!(
        "[keys.batch]\nkey = \"tw-batch-1\"\nroutes = []\n\n{BASE}"
    ));
    assert!(
        err.contains("keys.batch.routes: is empty: the key could call nothing"),
        "{err}"
    );
    let config = load(
        &patched(
            "tiers = [\"local\"]",
            "tiers = [\"local\"]\nbudget = { monthly_usd = 0 }",
        )
        .replace(
            "base_url = \"http://localhost:8001/v1\"",
            "base_url = \"http://localhost:8001/v1\"\nfixed_monthly_usd = 0",
        ),
    )
    .unwrap();
    for expected in [
        "routes.classification.budget.monthly_usd = 0: no API call is ever admitted",
        "routes.classification.budget: route classification has no API tier",
    ] {
        assert!(
            config.warnings.iter().any(|w| w.starts_with(expected)),
            "{expected:?} in {:?}",
            config.warnings
        );
    }
}

#[test]
fn a_providers_server_list_is_checked_whole() {
    let url = "base_url = \"http://localhost:8001/v1\"";
    let cases = [
        ("servers = []", "providers.vllm.servers: is empty"),
        (
            "base_url = \"http://a:1/v1\"\nservers = [{ url = \"http://b:1/v1\" }]",
            "providers.vllm.base_url: is set beside servers",
        ),
        (
            "servers = [{ url = \"http://a:1/v1\" }, { url = \"http://a:1/other/v1\" }]",
            "providers.vllm.servers[1]: is named \"vllm@a:1\" like another server",
        ),
        (
            "servers = [{ url = \"http://a:1/v1\", weight = 0 }]",
            "providers.vllm.servers[0].weight: must be at least 1",
        ),
        (
            "servers = [{ url = \"a:1\" }]",
            "providers.vllm.servers[0].url: is not an http(s) URL",
        ),
        (
            "base_url = \"http://a:1/v1\"\naffinity_prefix_bytes = 64",
            "providers.vllm.affinity_prefix_bytes: is set without affinity",
        ),
    ];
    for (servers, expected) in cases {
        let err = error_of(&patched(url, servers));
        assert!(err.contains(expected), "{servers}: {err}");
    }
    // Two servers on one host and port are told apart by their names.
    let named = "servers = [{ url = \"http://a:1/v1\" }, { url = \"http://a:1/other/v1\", name = \"other\" }]";
    let config = load(&patched(url, named)).expect("named servers load");
    let vllm = config.providers.iter().find(|p| p.name == "vllm").unwrap();
    let names: Vec<&str> = vllm.servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["vllm@a:1", "other"]);
}
