//! The benchmark still runs end to end (a few iterations of every scenario). No timing is
//! asserted: speed is reported in BENCHMARKS.md, never judged in a test.

use std::process::Command;

#[test]
fn every_scenario_runs_and_reports_json() {
    let json = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-smoke.json");
    let out = Command::new(env!("CARGO_BIN_EXE_berth-bench"))
        .args(["all", "--smoke", "--json"])
        .arg(&json)
        .output()
        .expect("run berth-bench");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("valid json");
    let names: Vec<&str> = doc["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    for prefix in [
        "1.", "2.", "3a.", "3b.", "4. 10", "4. 20", "5.", "6.", "7.", "8.", "9.", "10.", "11.",
        "12.", "13.", "14.",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(prefix)),
            "{prefix} missing from {names:?}"
        );
    }
}
