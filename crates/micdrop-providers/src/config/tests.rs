use super::*;

fn with_keys(mut c: ProvidersConfig) -> ProvidersConfig {
    // Keys set by code: no process-wide environment changes in tests.
    set_keys(&mut c.agent);
    c.stt.gladia.api_key = Some(ApiKey::new("g"));
    c.stt.gradium.api_key = Some(ApiKey::new("gr"));
    if let Some(t) = &mut c.tts {
        t.gradium.api_key = Some(ApiKey::new("gr"));
    }
    c
}

fn set_keys(a: &mut AgentProviderConfig) {
    a.api_key = Some(ApiKey::new("m"));
    for f in &mut a.fallbacks {
        set_keys(f);
    }
}

#[test]
fn defaults_are_the_sovereign_stack() {
    let c = ProvidersConfig::default();
    assert_eq!(c.agent.provider, AgentKind::Mistral);
    assert_eq!(c.stt.provider, SttKind::Gladia);
    assert_eq!(c.stt.gladia.region, GladiaRegion::EuWest);
    let tts = c.tts.as_ref().unwrap();
    assert_eq!(tts.provider, TtsKind::Gradium);
    assert_eq!(tts.gradium.region, GradiumRegion::Eu);
    assert_eq!(tts.gradium.rewrite_rules.as_deref(), Some("fr"));
    assert_eq!(c.sovereignty.mode, SovereigntyMode::Eu);
    assert!(c.check_sovereignty().is_ok());
    let hosts: Vec<String> = c
        .endpoints()
        .iter()
        .map(|u| u.host_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        hosts,
        ["api.mistral.ai", "api.gladia.io", "eu.api.gradium.ai"]
    );
    assert_eq!(
        c.endpoints()[1].as_str(),
        "https://api.gladia.io/v2/live?region=eu-west"
    );
    assert_eq!(
        c.endpoints()[2].as_str(),
        "wss://eu.api.gradium.ai/api/speech/tts"
    );
    // French end to end: Gladia and Gradium STT listen for French, Gradium speaks with a
    // French voice (Elise).
    assert_eq!(c.stt.gladia.languages, ["fr"]);
    assert_eq!(c.stt.gradium.language.as_deref(), Some("fr"));
    assert_eq!(tts.gradium.voice_id, "b35yykvVppLXyw_l");
    assert_eq!(
        crate::mistral::MISTRAL_DEFAULT_MODEL,
        "mistral-small-latest"
    );
    // An empty document gives the same configuration.
    assert_eq!(ProvidersConfig::from_toml("").unwrap(), c);
}

#[test]
fn delay_in_frames_is_checked_when_the_config_is_read() {
    for ok in crate::gradium::DELAY_IN_FRAMES {
        let c = ProvidersConfig::from_toml(&format!("[stt.gradium]\ndelay_in_frames = {ok}\n"))
            .unwrap();
        assert_eq!(c.stt.gradium.delay_in_frames, Some(ok));
    }
    for bad in [0, 9, 11, 13, 50] {
        let e = ProvidersConfig::from_toml(&format!("[stt.gradium]\ndelay_in_frames = {bad}\n"))
            .unwrap_err();
        assert!(e.to_string().contains("delay_in_frames"), "{e}");
    }
    // Set by code: refused by build.
    let mut c = with_keys(ProvidersConfig::default());
    c.stt.provider = SttKind::Gradium;
    c.stt.gradium.delay_in_frames = Some(9);
    let e = c.build().unwrap_err();
    assert!(e.to_string().contains("delay_in_frames"), "{e}");
}

#[test]
fn builds_with_keys_and_names_missing_ones() {
    let c = with_keys(ProvidersConfig::default());
    assert!(c.missing_keys().is_empty());
    let p = c.build().unwrap();
    assert_eq!(p.model.name(), "mistral");
    assert_eq!(p.stt.name(), "gladia");
    assert_eq!(p.tts.as_ref().unwrap().name(), "gradium-tts");

    let mut c = ProvidersConfig::default();
    c.agent.api_key_env = Some("MICDROP_TEST_UNSET_MISTRAL".into());
    c.stt.gladia.api_key_env = "MICDROP_TEST_UNSET_GLADIA".into();
    let tts = c.tts.as_mut().unwrap();
    tts.gradium.api_key_env = "MICDROP_TEST_UNSET_GRADIUM".into();
    assert_eq!(
        c.missing_keys(),
        [
            "MICDROP_TEST_UNSET_MISTRAL",
            "MICDROP_TEST_UNSET_GLADIA",
            "MICDROP_TEST_UNSET_GRADIUM"
        ]
    );
    match c.build() {
        Err(ConfigError::MissingKey { env, .. }) => assert_eq!(env, "MICDROP_TEST_UNSET_MISTRAL"),
        other => panic!("{other:?}"),
    }
}

const FULL: &str = r#"
[agent]
provider = "mistral"
model = "mistral-small-latest"
temperature = 0.3
max_tokens = 300
random_seed = 7
safe_prompt = false
max_retries = 2
retry_delay_ms = 100
first_token_timeout_ms = 3000
extra = { prompt_mode = "reasoning" }

[[agent.fallbacks]]
provider = "openai-compatible"
base_url = "http://127.0.0.1:11434/v1"
model = "llama3.1"

[stt]
provider = "gladia"
fallbacks = ["gradium"]

[stt.gladia]
languages = ["fr", "en"]
code_switching = true
endpointing = 0.1
custom_vocabulary = ["Micdrop", "Gradium"]
partial_transcripts = true
settings = { pre_processing = { audio_enhancer = true } }
transcription_timeout_ms = 3000

[stt.gradium]
language = "fr"
delay_in_frames = 10

[tts]
provider = "gradium"

[tts.gradium]
voice_id = "abc123"
padding_bonus = -0.5
output_format = "pcm_24000"

[sovereignty]
mode = "eu"
allowed_hosts = ["llm.internal.example"]
"#;

#[test]
fn parses_every_section() {
    let c = ProvidersConfig::from_toml(FULL).unwrap();
    assert_eq!(c.agent.model.as_deref(), Some("mistral-small-latest"));
    assert_eq!(c.agent.extra["prompt_mode"], "reasoning");
    assert_eq!(c.agent.fallbacks.len(), 1);
    assert_eq!(c.agent.fallbacks[0].provider, AgentKind::OpenaiCompatible);
    assert_eq!(c.stt.chain(), [SttKind::Gladia, SttKind::Gradium]);
    assert_eq!(c.stt.gladia.languages, ["fr", "en"]);
    assert_eq!(c.stt.gradium.delay_in_frames, Some(10));
    let tts = c.tts.as_ref().unwrap();
    assert_eq!(tts.gradium.voice_id, "abc123");
    assert_eq!(tts.gradium.output_rate().unwrap(), 24_000);
    let o = c.agent.model_options("agent").unwrap_or_else(|_| {
        let mut a = c.agent.clone();
        a.api_key = Some(ApiKey::new("k"));
        a.model_options("agent").unwrap()
    });
    assert_eq!(o.retry.max_retries, 2);
    assert_eq!(o.first_token_timeout, Duration::from_secs(3));
    assert_eq!(o.settings.random_seed, Some(7));
    // Loopback is allowed; the build wires two models, two STT providers.
    let c = with_keys(c);
    let p = c.build().unwrap();
    assert_eq!(p.stt.name(), "fallback-stt");
    assert_eq!(p.model.name(), "mistral");
}

#[test]
fn unknown_keys_are_refused() {
    let e = ProvidersConfig::from_toml("[agent]\nmodle = \"x\"\n").unwrap_err();
    assert!(e.to_string().contains("modle"), "{e}");
    let e = ProvidersConfig::from_toml("[stt.gladia]\nregion = \"mars\"\n").unwrap_err();
    assert!(e.to_string().contains("mars"), "{e}");
}

#[test]
fn tts_none_disables_tts() {
    let c = with_keys(ProvidersConfig::from_toml("[tts]\nprovider = \"none\"\n").unwrap());
    assert!(c.tts.is_none());
    assert!(c.build().unwrap().tts.is_none());
    assert_eq!(c.endpoints().len(), 2);
}

#[test]
fn sovereignty_refuses_non_eu_endpoints_and_names_them() {
    let c = ProvidersConfig::from_toml("[stt.gladia]\nregion = \"us-west\"\n").unwrap();
    let e = c.check_sovereignty().unwrap_err();
    assert!(e.endpoint.contains("region=us-west"), "{e}");
    assert!(e.to_string().contains("stt gladia"), "{e}");
    assert!(matches!(
        with_keys(c.clone()).build(),
        Err(ConfigError::Sovereignty(_))
    ));

    let c = ProvidersConfig::from_toml("[tts.gradium]\nregion = \"us\"\n").unwrap();
    let e = c.check_sovereignty().unwrap_err();
    assert_eq!(e.endpoint, "wss://us.api.gradium.ai/api/speech/tts");
    assert_eq!(e.provider, "tts gradium");

    let c = ProvidersConfig::from_toml(
        "[agent]\nprovider = \"openai-compatible\"\nbase_url = \"https://api.openai.com/v1\"\nmodel = \"gpt\"\n",
    )
    .unwrap();
    let e = c.check_sovereignty().unwrap_err();
    assert!(e.to_string().contains("api.openai.com"), "{e}");

    // The operator may vouch for a host, or turn the policy off.
    let c = ProvidersConfig::from_toml(
        "[agent]\nprovider = \"openai-compatible\"\nbase_url = \"https://gpu1.llm.corp.example/v1\"\nmodel = \"m\"\n[sovereignty]\nallowed_hosts = [\"*.corp.example\"]\n",
    )
    .unwrap();
    assert!(c.check_sovereignty().is_ok());
    let c = ProvidersConfig::from_toml(
        "[tts.gradium]\nregion = \"us\"\n[sovereignty]\nmode = \"off\"\n",
    )
    .unwrap();
    assert!(c.check_sovereignty().is_ok());
}

#[test]
fn loopback_hosts_are_always_allowed() {
    let s = SovereigntyConfig::default();
    for h in ["127.0.0.1", "localhost", "[::1]", "127.3.2.1"] {
        assert!(s.host_allowed(h), "{h}");
    }
    for h in [
        "api.gradium.ai",
        "us.api.gradium.ai",
        "evil-api.mistral.ai.example.com",
    ] {
        assert!(!s.host_allowed(h), "{h}");
    }
}

#[test]
fn point_to_simulators_rewrites_endpoints_and_sets_fake_keys() {
    let mut c = ProvidersConfig::from_toml(FULL).unwrap();
    c.point_to_simulators(
        "http://127.0.0.1:7001",
        "ws://127.0.0.1:7002",
        "http://127.0.0.1:7003",
    );
    assert!(c.missing_keys().is_empty());
    let eps: Vec<String> = c.endpoints().iter().map(Url::to_string).collect();
    assert_eq!(
        eps,
        [
            "http://127.0.0.1:7003/",
            "http://127.0.0.1:11434/v1",
            "http://127.0.0.1:7001/v2/live?region=eu-west",
            "ws://127.0.0.1:7002/api/speech/asr",
            "ws://127.0.0.1:7002/api/speech/tts",
        ]
    );
    let shown = format!("{c:?}");
    assert!(!shown.contains("sim-gladia-key"), "keys redacted in Debug");
    assert!(c.build().is_ok());
}

#[test]
fn openai_compatible_needs_a_base_url_and_a_model() {
    let mut a = AgentProviderConfig {
        provider: AgentKind::OpenaiCompatible,
        ..Default::default()
    };
    let needs = |a: &AgentProviderConfig, key: &str| {
        let e = a.model_options("agent").unwrap_err().to_string();
        assert!(
            e.contains(key) && e.contains("required for provider = \"openai-compatible\""),
            "{e}"
        );
    };
    needs(&a, "agent.model");
    a.model = Some("qwen".into());
    needs(&a, "agent.base_url");
    a.base_url = Some("http://127.0.0.1:8000".into());
    let o = a.model_options("agent").unwrap();
    assert!(o.api_key.is_none(), "no key by default for local servers");
    assert_eq!(o.dialect, Dialect::OpenAi);
}

#[test]
fn gradium_base_urls_accept_http_schemes() {
    let g = GradiumTtsConfig {
        base_url: Some("http://127.0.0.1:9/sim".into()),
        ..Default::default()
    };
    assert_eq!(
        g.url().unwrap().as_str(),
        "ws://127.0.0.1:9/sim/api/speech/tts"
    );
    let g = GradiumSttConfig {
        base_url: Some("https://eu.api.gradium.ai".into()),
        ..Default::default()
    };
    assert_eq!(
        g.url().unwrap().as_str(),
        "wss://eu.api.gradium.ai/api/speech/asr"
    );
    let g = GradiumTtsConfig {
        base_url: Some("ws://127.0.0.1:9/api".into()),
        ..Default::default()
    };
    assert_eq!(g.url().unwrap().as_str(), "ws://127.0.0.1:9/api/speech/tts");
    let g = GradiumTtsConfig {
        output_format: "opus".into(),
        ..Default::default()
    };
    assert!(g.output_rate().is_err());
}

#[test]
fn gradium_base_with_or_without_api_prefix() {
    for base in [
        "ws://127.0.0.1:9/api",
        "ws://127.0.0.1:9/api/",
        "ws://127.0.0.1:9",
    ] {
        let mut c = ProvidersConfig::default();
        c.stt.gradium.base_url = Some(base.into());
        assert_eq!(
            c.stt.gradium.url().unwrap().as_str(),
            "ws://127.0.0.1:9/api/speech/asr",
            "{base}"
        );
    }
}

#[test]
fn provider_sessions_are_on_demand_by_default() {
    // Issue #10: an idle call holds no provider session (and no provider concurrency slot).
    let c = ProvidersConfig::default();
    for (name, policy) in [
        ("gladia", c.stt.gladia.link_policy()),
        ("gradium stt", c.stt.gradium.link_policy()),
        (
            "gradium tts",
            crate::gradium::GradiumTtsConfig::default().link_policy(),
        ),
    ] {
        assert!(!policy.eager, "{name}: opened before it is needed");
        assert!(policy.idle_close.is_some(), "{name}: kept open when idle");
    }
}
