//! Inputs shared by the integration tests of several crates.

use std::path::PathBuf;

/// 100 ms of a 440 Hz tone at 16 kHz, 16-bit little endian: speech for the simulators' energy
/// detector. `offset` is the frame's index, so that consecutive frames join without a click.
pub fn tone_frame(offset: usize) -> Vec<u8> {
    (0..1600)
        .flat_map(|i| {
            let t = (offset * 1600 + i) as f32 / 16_000.0;
            let s = (t * 440.0 * std::f32::consts::TAU).sin() * 8000.0;
            (s as i16).to_le_bytes()
        })
        .collect()
}

/// The Python that runs the test MCP servers: `MICDROP_PYTHON`, or the virtualenv that
/// `scripts/deps` makes in `target/py` with the official MCP SDK. Panics naming the fix when
/// neither is there.
pub fn mcp_python() -> String {
    if let Ok(p) = std::env::var("MICDROP_PYTHON") {
        return p;
    }
    let venv = workspace_dir().join("target/py/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run scripts/deps (it installs the Python MCP SDK)",
        venv.display()
    );
    venv.display().to_string()
}

/// The test MCP server (a CRM written with the official Python SDK) of `micdrop-tools`' tests.
pub fn mcp_test_server() -> String {
    workspace_dir()
        .join("crates/micdrop-tools/tests/mcp/crm_server.py")
        .display()
        .to_string()
}

fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}
