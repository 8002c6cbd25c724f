//! End-to-end tests of warm pools through the built `berth` against the real Docker daemon:
//! `pool fill|ls|drain`, `up --pool` and `run --pool` (warm, then cold with a log line once
//! the pool is empty), and gc removing the members of a pool the config no longer has.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use berth_engine_core::testkit::TEST_IMAGE;

mod common;

use common::{docker, fresh_session, json_of, text};

/// A config file with one pool of the test image, in a directory of its own.
struct Setup {
    dir: PathBuf,
    pool: String,
}

impl Setup {
    fn new() -> Self {
        let pool = format!("p{}", &uuid_hex()[..10]);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("pools-{pool}"));
        std::fs::create_dir_all(&dir).expect("test dir");
        let yaml = format!(
            "runner:\n  image: {TEST_IMAGE}\n  workspace: ephemeral\npools:\n  {pool}:\n    min_ready: 1\n    max: 3\n    idle_ttl: 10m\n    max_lifetime: 10m\n    env: {{POOLED: 'yes'}}\n"
        );
        std::fs::write(dir.join("berth.yaml"), yaml).expect("config");
        std::fs::write(
            dir.join("empty.yaml"),
            format!("runner:\n  image: {TEST_IMAGE}\n"),
        )
        .expect("config without the pool");
        Self { dir, pool }
    }

    fn berth_with(&self, config: &str, args: &[&str]) -> Output {
        let mut all = vec!["--config", config];
        all.extend_from_slice(args);
        common::berth_in(&self.dir, &self.dir.join("state"), &all)
            .output()
            .unwrap_or_else(|e| panic!("berth {args:?}: {e}"))
    }

    fn berth(&self, args: &[&str]) -> Output {
        self.berth_with("berth.yaml", args)
    }

    fn ready(&self) -> u64 {
        let out = self.berth(&["--json", "pool", "ls"]);
        assert!(out.status.success(), "pool ls: {}", text(&out.stderr));
        let rows = json_of(&out);
        let row = rows
            .as_array()
            .expect("a list")
            .iter()
            .find(|r| r["name"] == self.pool.as_str())
            .unwrap_or_else(|| panic!("pool ls lacks {}: {rows}", self.pool))
            .clone();
        row["ready"].as_u64().expect("ready")
    }
}

/// Removes every container of the pool (members and claimed ones), pass or fail.
impl Drop for Setup {
    fn drop(&mut self) {
        let filter = format!("name=pool-{}-", self.pool);
        for id in docker(&["ps", "-aq", "--filter", &filter]).lines() {
            let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn uuid_hex() -> String {
    berth_engine_core::SessionId::generate().to_string()
}

#[tokio::test]
async fn fill_claim_warm_then_cold_drain_and_gc_through_the_cli() {
    let (session, _cleanup) = fresh_session().await;
    let setup = Setup::new();

    let out = setup.berth(&["pool", "fill", &setup.pool, "--size", "2"]);
    assert!(out.status.success(), "fill: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("2 ready"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(setup.ready(), 2);
    // Never above max, whatever --size says.
    let out = setup.berth(&["pool", "fill", &setup.pool, "--size", "9"]);
    assert!(out.status.success(), "fill: {}", text(&out.stderr));
    assert_eq!(setup.ready(), 3);

    // up --pool: a member, now the session's (listed under it, labelled as it says).
    let out = setup.berth(&["--json", "up", "--pool", &setup.pool, "--session", &session]);
    assert!(out.status.success(), "up --pool: {}", text(&out.stderr));
    let env = json_of(&out)["id"].as_str().expect("id").to_owned();
    assert!(
        env.contains(&format!("pool-{}-", setup.pool)),
        "not a member: {env}"
    );
    assert_eq!(setup.ready(), 2);
    let out = setup.berth(&["--json", "ls", "--session", &session]);
    let listed = json_of(&out);
    let listed = listed.as_array().expect("a list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["id"], env.as_str());
    let out = setup.berth(&["exec", &env, "sh", "-c", "echo $POOLED; ls -A /workspace"]);
    assert_eq!(text(&out.stdout), "yes\n", "{}", text(&out.stderr));
    // gc keeps the detached claimed environment and the live pool's members.
    let out = setup.berth(&["--json", "gc", "--dry-run"]);
    let report = json_of(&out);
    let garbage = report["garbage"].as_array().expect("garbage");
    assert!(
        !garbage
            .iter()
            .any(|g| g["id"].as_str().is_some_and(|id| id.contains(&setup.pool))),
        "gc would remove a live pool's environment: {report}"
    );

    // run --pool takes the two left, then starts cold and says so.
    for _ in 0..2 {
        let out = setup.berth(&["run", "--pool", &setup.pool, "--", "echo", "hi"]);
        assert!(out.status.success(), "run --pool: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "hi\n");
        assert!(!text(&out.stderr).contains("cold"), "{}", text(&out.stderr));
    }
    assert_eq!(setup.ready(), 0);
    let out = setup.berth(&[
        "run",
        "--pool",
        &setup.pool,
        "--",
        "sh",
        "-c",
        "echo $POOLED",
    ]);
    assert!(
        out.status.success(),
        "cold run --pool: {}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "yes\n");
    assert!(
        text(&out.stderr).contains(&format!("pool {} is empty: starting cold", setup.pool)),
        "no log line for the cold start: {}",
        text(&out.stderr)
    );

    let out = setup.berth(&["down", &env]);
    assert!(out.status.success(), "down: {}", text(&out.stderr));

    // drain stops the unclaimed members.
    let out = setup.berth(&["pool", "fill", &setup.pool]);
    assert!(out.status.success(), "fill: {}", text(&out.stderr));
    assert_eq!(setup.ready(), 1);
    let out = setup.berth(&["--json", "pool", "drain", &setup.pool]);
    assert!(out.status.success(), "drain: {}", text(&out.stderr));
    assert_eq!(json_of(&out)["stopped"].as_array().map(Vec::len), Some(1));
    assert_eq!(setup.ready(), 0);

    // A member of a pool the config no longer has is garbage.
    let out = setup.berth(&["pool", "fill", &setup.pool]);
    assert!(out.status.success(), "fill: {}", text(&out.stderr));
    let out = setup.berth_with("empty.yaml", &["--json", "gc"]);
    assert!(out.status.success(), "gc: {}", text(&out.stderr));
    let report = json_of(&out);
    let removed: Vec<&serde_json::Value> = report["garbage"]
        .as_array()
        .expect("garbage")
        .iter()
        .filter(|g| g["id"].as_str().is_some_and(|id| id.contains(&setup.pool)))
        .collect();
    assert_eq!(removed.len(), 1, "{report}");
    assert!(
        removed[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not configured")),
        "{report}"
    );
    assert_eq!(setup.ready(), 0);
}

#[test]
fn an_unknown_pool_is_berths_failure_naming_the_key() {
    let setup = Setup::new();
    for args in [
        vec!["up", "--pool", "nope"],
        vec!["pool", "fill", "nope"],
        vec!["run", "--pool", "nope", "--", "true"],
    ] {
        let out = setup.berth(&args);
        assert_eq!(
            out.status.code(),
            Some(125),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("pools.nope") && text(&out.stderr).contains(&setup.pool),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
}
