//! `[sovereignty] mode = "local"`: loopback or in-process only, anything else refused at start,
//! naming it; and the local providers of the registry.

use micdrop_providers::ProvidersConfig;
use micdrop_providers::config::{SttKind, TtsKind};

const LOCAL: &str = r#"
[agent]
provider = "openai-compatible"
base_url = "http://127.0.0.1:11434/v1"
model = "mistral-small"

[stt]
provider = "whisper"

[stt.whisper]
model = "tiny.en"
language = "en"

[tts]
provider = "espeak"

[tts.espeak]
voice = "en-us"

[sovereignty]
mode = "local"
"#;

#[test]
fn a_local_stack_passes_the_local_policy() {
    let c = ProvidersConfig::from_toml(LOCAL).unwrap();
    assert_eq!(c.stt.provider, SttKind::Whisper);
    assert_eq!(c.tts.as_ref().map(|t| t.provider), Some(TtsKind::Espeak));
    c.check_sovereignty().unwrap();
    assert!(c.missing_keys().is_empty(), "{:?}", c.missing_keys());
    // localhost and ::1 are local too.
    for url in ["http://localhost:8080/v1", "http://[::1]:8000/v1"] {
        let c =
            ProvidersConfig::from_toml(&LOCAL.replace("http://127.0.0.1:11434/v1", url)).unwrap();
        c.check_sovereignty().unwrap();
    }
}

#[test]
fn the_local_policy_refuses_remote_endpoints_naming_them() {
    // The agent on a remote host (even an EU one, even listed in allowed_hosts).
    let remote = LOCAL
        .replace("http://127.0.0.1:11434/v1", "https://llm.example.eu/v1")
        .replace(
            "mode = \"local\"",
            "mode = \"local\"\nallowed_hosts = [\"llm.example.eu\"]",
        );
    let e = ProvidersConfig::from_toml(&remote)
        .unwrap()
        .check_sovereignty()
        .unwrap_err();
    assert!(e.provider.contains("agent"), "{e:?}");
    assert!(e.endpoint.contains("llm.example.eu"), "{e:?}");
    assert!(e.to_string().contains("not local"), "{e}");

    // The default sovereign stack (Gladia, Gradium, Mistral: EU, but not on this host).
    let e = ProvidersConfig::from_toml("[sovereignty]\nmode = \"local\"\n")
        .unwrap()
        .check_sovereignty()
        .unwrap_err();
    assert!(
        !e.endpoint.is_empty() && e.to_string().contains("not local"),
        "{e}"
    );

    // A remote STT with the local TTS and agent.
    let gladia = LOCAL.replace("provider = \"whisper\"", "provider = \"gladia\"");
    let e = ProvidersConfig::from_toml(&gladia)
        .unwrap()
        .check_sovereignty()
        .unwrap_err();
    assert!(
        e.provider.contains("gladia") && e.endpoint.contains("gladia.io"),
        "{e:?}"
    );

    // The same remote agent is fine under the EU policy with allowed_hosts.
    let eu = remote.replace("mode = \"local\"", "mode = \"eu\"");
    ProvidersConfig::from_toml(&eu)
        .unwrap()
        .check_sovereignty()
        .unwrap();
}

#[test]
fn a_missing_whisper_model_is_a_clear_error_at_build() {
    let c = ProvidersConfig::from_toml(
        &LOCAL.replace("model = \"tiny.en\"", "model = \"/nonexistent/ggml.bin\""),
    )
    .unwrap();
    let Err(e) = c.build() else {
        panic!("no model file")
    };
    let e = e.to_string();
    assert!(e.contains("/nonexistent/ggml.bin"), "{e}");
    let c = ProvidersConfig::from_toml(&LOCAL.replace("voice = \"en-us\"", "voice = \"xx-nope\""))
        .unwrap();
    let Err(e) = c.build() else {
        panic!("no such voice")
    };
    let e = e.to_string();
    assert!(e.contains("xx-nope"), "{e}");
}
