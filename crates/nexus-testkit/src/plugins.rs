//! The example tool plugins of `examples/`, run as processes in a test's namespace.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use crate::ServiceProcess;

/// `examples/python-plugin/weather.py` of this checkout.
pub fn python_weather_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/python-plugin/weather.py")
}

/// Starts the Python example plugin (the `weather` tool, provider `weather-py`)
/// with `env`, which must hold the test's `NATS_URL` and `NEXUS_NAMESPACE`.
/// Panics, saying what to install, when `python3` or nats-py is missing.
pub fn python_weather(env: &[(String, String)]) -> ServiceProcess {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(why) = READY.get_or_init(python_with_nats) {
        panic!("{why}");
    }
    let script = python_weather_script();
    ServiceProcess::spawn_program(
        "weather.py",
        OsStr::new("python3"),
        &[&script.display().to_string()],
        env,
    )
}

/// Whether `python3` runs and imports nats-py, in the environment plugins get.
fn python_with_nats() -> Result<(), String> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import nats"])
        .env_clear()
        .envs(
            ["PATH", "HOME"]
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (*k, v))),
        )
        .output()
        .map_err(|e| format!("python3 is needed for the plugin tests: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "the plugin tests need nats-py: `python3 -m pip install -r examples/python-plugin/requirements.txt` \
         (.ci/run does this); python3 said: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}
