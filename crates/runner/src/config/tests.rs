//! Unit tests of config parsing; none needs a daemon.

use std::path::Path;
use std::time::Duration;

use berth_engine_core::{BackendKind, PullPolicy, SecurityProfile};

use super::keys::{suggest, Schema};
use super::load::{known_paths, variable_of};
use super::*;

fn suggest_for(key: &str) -> Option<String> {
    suggest(key, &known_paths()).map(str::to_owned)
}

#[test]
fn unknown_backend_names_the_key_and_the_choices() {
    let err = BerthConfig::from_yaml_str("runner:\n  backend: dockr\n").unwrap_err();
    let text = err.to_string();
    assert_eq!(text.matches("runner.backend").count(), 1, "{text}");
    assert!(text.contains("dockr"), "{text}");
    assert!(
        text.contains("docker") && text.contains("kubernetes"),
        "{text}"
    );
    assert!(text.contains("runner.backend"), "{text}");
}

#[test]
fn unknown_key_is_rejected_with_a_suggestion() {
    let dir = std::env::temp_dir().join(format!("berth-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("typo.yaml");
    std::fs::write(&path, "runner:\n  imgae: x\nkubernetes:\n  namespce: a\n").unwrap();
    let err = BerthConfig::load(&LoadOptions {
        path: Some(path.clone()),
        ..LoadOptions::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(
        err.contains("unknown key runner.imgae; did you mean runner.image?")
            || err.contains("unknown key kubernetes.namespce; did you mean kubernetes.namespace?"),
        "{err}"
    );
    assert_eq!(suggest_for("docker.hots").as_deref(), Some("docker.host"));
    assert_eq!(suggest_for("runner.zzzzzzzz"), None);
}

#[test]
fn bad_quantity_names_the_key() {
    let err =
        BerthConfig::from_yaml_str("runner:\n  resources:\n    memory: 4 gigs\n").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("runner.resources.memory"), "{text}");
    assert!(text.contains("4 gigs"), "{text}");
    let err =
        BerthConfig::from_yaml_str("kubernetes:\n  resources:\n    limits:\n      cpu: many\n")
            .unwrap_err();
    assert!(
        err.to_string().contains("kubernetes.resources.limits.cpu"),
        "{err}"
    );
}

#[test]
fn malformed_image_names_the_key() {
    let err = BerthConfig::from_yaml_str("runner:\n  image: 'Not An Image'\n").unwrap_err();
    assert!(err.to_string().contains("runner.image"), "{err}");
}

#[test]
fn example_config_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config.example.yaml");
    let loaded = BerthConfig::load(&LoadOptions {
        path: Some(path.clone()),
        ..LoadOptions::default()
    })
    .unwrap();
    assert_eq!(loaded.source, ConfigSource::File(path));
    assert_eq!(loaded.config.runner.backend, BackendKind::Docker);
    assert_eq!(loaded.config.kubernetes.namespace, "berth-agents");
    assert_eq!(
        loaded.config.runner.image.as_deref(),
        Some("berth-test/busybox:2")
    );
}

fn load_file(name: &str, body: &[u8]) -> String {
    let dir = std::env::temp_dir().join(format!("berth-cfg-types-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    BerthConfig::load(&LoadOptions {
        path: Some(path),
        ..LoadOptions::default()
    })
    .map(|_| ())
    .expect_err(name)
    .to_string()
}

#[test]
fn wrong_types_name_the_key_and_what_was_expected() {
    let err = load_file("section.yaml", b"runner: 5\n");
    assert!(
        err.contains("runner") && err.contains("expected a section"),
        "{err}"
    );
    let err = load_file("image.yaml", b"runner:\n  image: 42\n");
    assert!(
        err.contains("runner.image") && err.contains("expected text"),
        "{err}"
    );
    assert!(err.contains("the number 42"), "{err}");
    let err = load_file("hosts.yaml", b"server:\n  git_hosts: github.com\n");
    assert!(
        err.contains("server.git_hosts") && err.contains("expected a list"),
        "{err}"
    );
    let err = load_file("network.yaml", b"runner:\n  network: maybe\n");
    assert!(
        err.contains("runner.network") && err.contains("none, full (or false/true)"),
        "{err}"
    );
    let err = load_file("network.yaml", b"runner:\n  network: {allow: 10.0.0.0/8}\n");
    assert!(
        err.contains("runner.network.allow") && err.contains("expected a list"),
        "{err}"
    );
    let err = load_file(
        "network.yaml",
        b"runner:\n  network: {allow: [], dns: maybe}\n",
    );
    assert!(
        err.contains("runner.network.dns") && err.contains("true or false"),
        "{err}"
    );
    let err = load_file("network.yaml", b"runner:\n  network: {alow: []}\n");
    assert!(err.contains("runner.network.alow"), "{err}");
    let err = load_file(
        "network.yaml",
        b"runner:\n  network: {allow: [10.0.0.0/8:443, '10.0.0.0/40']}\n",
    );
    assert!(
        err.contains("runner.network") && err.contains("\"10.0.0.0/40\"") && err.contains("prefix"),
        "{err}"
    );
}

#[test]
fn binary_and_non_yaml_files_say_so() {
    let err = load_file("binary.yaml", &[0x7f, b'E', b'L', b'F', 0, 1, 2, 0xff]);
    assert!(err.contains("binary data"), "{err}");
    let err = load_file("latin1.yaml", b"runner:\n  image: caf\xe9\n");
    assert!(err.contains("not UTF-8"), "{err}");
    let err = load_file("broken.yaml", b"runner: [unclosed\n");
    assert!(err.contains("not valid YAML"), "{err}");
    let err = load_file("scalar.yaml", b"just some words\n");
    assert!(err.contains("expected sections"), "{err}");
}

#[test]
fn nul_in_a_path_is_refused() {
    let err = load_file("nul.yaml", b"runner:\n  mount_path: \"/work\\0space\"\n");
    assert!(
        err.contains("runner.mount_path") && err.contains("NUL"),
        "{err}"
    );
}

#[test]
fn a_directory_is_not_a_config_file() {
    let err = BerthConfig::load(&LoadOptions {
        path: Some(std::env::temp_dir()),
        ..LoadOptions::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("is a directory"), "{err}");
}

#[test]
fn workspace_forms_are_listed_with_a_suggestion() {
    let err = load_file("ws.yaml", b"runner:\n  workspace: {hostpath: /tmp}\n");
    assert!(err.contains("{host_path: /abs/dir}"), "{err}");
    assert!(err.contains("did you mean host_path?"), "{err}");
    assert!(!err.contains("WorkspaceConfig"), "{err}");
    let err = load_file("ws2.yaml", b"runner:\n  workspace: sometimes\n");
    assert!(err.contains("none, ephemeral"), "{err}");
}

#[test]
fn section_typos_get_suggestions() {
    let err = load_file("runnr.yaml", b"runnr:\n  image: x\n");
    assert!(
        err.contains("unknown key runnr.image; did you mean runner.image?"),
        "{err}"
    );
    assert_eq!(suggest_for("runnr").as_deref(), Some("runner"));
    assert_eq!(suggest_for("runer.image").as_deref(), Some("runner.image"));
    assert_eq!(variable_of("runner.image"), "BERTH_RUNNER__IMAGE");
}

#[test]
fn docker_environments_are_limited_by_default() {
    let r = BerthConfig::from_yaml_str("runner:\n  backend: docker\n")
        .unwrap()
        .runner_resources();
    assert_eq!(r.cpu_millis, Some(2000));
    assert_eq!(r.memory_bytes, Some(4 << 30));
    let r = BerthConfig::from_yaml_str(
        "runner:\n  resources:\n    cpu: unlimited\n    memory: unlimited\n",
    )
    .unwrap()
    .runner_resources();
    assert_eq!((r.cpu_millis, r.memory_bytes), (None, None));
    // Kubernetes: kubernetes.resources decides.
    let r = BerthConfig::from_yaml_str("runner:\n  backend: kubernetes\n")
        .unwrap()
        .runner_resources();
    assert_eq!((r.cpu_millis, r.memory_bytes), (None, None));
}

#[test]
fn missing_file_is_named() {
    let err = BerthConfig::load(&LoadOptions {
        path: Some("/no/such/berth.yaml".into()),
        ..LoadOptions::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("/no/such/berth.yaml"), "{err}");
}

#[test]
fn values_load_typed() {
    let config = BerthConfig::from_yaml_str(
        "runner:\n  max_lifetime: 1h30m\n  pull_policy: never\n  resources:\n    cpu: 0.5\n    memory: 512Mi\n    pids: 100\nkubernetes:\n  start_timeout: 90\n  security: restricted\n  image_pull_policy: Always\n  run_as_user: 1000\n  resources:\n    limits:\n      cpu: 2\n      memory: 1G\n",
    )
    .unwrap();
    assert_eq!(config.max_lifetime(), Duration::from_secs(5400));
    assert_eq!(config.runner.pull_policy, PullPolicy::Never);
    assert_eq!(
        config.runner.resources.cpu,
        Some(Limit::Limited(CpuQuantity::from_millis(500).unwrap()))
    );
    let r = config.runner_resources();
    assert_eq!(
        (r.cpu_millis, r.memory_bytes, r.pids),
        (Some(500), Some(512 << 20), Some(100))
    );
    assert_eq!(
        config.kubernetes.start_timeout.get(),
        Duration::from_secs(90)
    );
    assert_eq!(config.kubernetes.security, SecurityProfile::Restricted);
    assert_eq!(
        config.kubernetes.image_pull_policy,
        Some(PullPolicy::Always)
    );
    assert_eq!(config.kubernetes.run_as_user.as_deref(), Some("1000"));
    let limits = config.kubernetes.resources.limits.resources();
    assert_eq!(
        (limits.cpu_millis, limits.memory_bytes),
        (Some(2000), Some(1_000_000_000))
    );
}

#[test]
fn each_typed_value_names_its_key_and_what_was_expected() {
    for (yaml, key, expected) in [
        (
            "runner:\n  max_lifetime: soon\n",
            "runner.max_lifetime",
            "a duration like",
        ),
        (
            "runner:\n  pull_policy: sometimes\n",
            "runner.pull_policy",
            "always, if_not_present or never",
        ),
        (
            "runner:\n  resources:\n    cpu: 0\n",
            "runner.resources.cpu",
            "positive CPU quantity",
        ),
        (
            "runner:\n  resources:\n    pids: 0\n",
            "runner.resources.pids",
            "positive process count",
        ),
        (
            "kubernetes:\n  start_timeout: 0s\n",
            "kubernetes.start_timeout",
            "a duration like",
        ),
        (
            "kubernetes:\n  scale_up_grace: later\n",
            "kubernetes.scale_up_grace",
            "a duration like",
        ),
        (
            "kubernetes:\n  security: strict\n",
            "kubernetes.security",
            "hardened or restricted",
        ),
        (
            "kubernetes:\n  image_pull_policy: always\n",
            "kubernetes.image_pull_policy",
            "Always, IfNotPresent or Never",
        ),
        (
            "kubernetes:\n  resources:\n    requests:\n      memory: 1Gb\n",
            "kubernetes.resources.requests.memory",
            "memory quantity",
        ),
        (
            "copy:\n  max_bytes: lots\n",
            "copy.max_bytes",
            "memory quantity",
        ),
        (
            "runner:\n  network: maybe\n",
            "runner.network",
            "none, full",
        ),
    ] {
        let err = BerthConfig::from_yaml_str(yaml).expect_err(yaml);
        let text = err.to_string();
        assert!(
            matches!(&err, ConfigError::Invalid { key: k, .. } if k == key),
            "{yaml}: {text}"
        );
        assert!(text.contains(expected), "{yaml}: {text}");
        assert!(text.contains("inline YAML"), "{text}");
        assert_eq!(text.matches(key).count(), 1, "{text}");
    }
}

#[test]
fn a_file_names_itself_with_a_typed_value_error() {
    let err = load_file("lifetime.yaml", b"runner:\n  max_lifetime: forever\n");
    assert!(err.contains("lifetime.yaml"), "{err}");
    assert!(err.contains("runner.max_lifetime"), "{err}");
    assert!(err.contains("\"forever\""), "{err}");
}

#[test]
fn numbers_load_from_a_file_where_the_schema_takes_them() {
    let dir = std::env::temp_dir().join(format!("berth-cfg-numbers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("numbers.yaml");
    std::fs::write(
        &path,
        "runner:\n  max_lifetime: 90\n  resources:\n    cpu: 2\n    pids: 10\nkubernetes:\n  run_as_user: 1000\ncopy:\n  max_bytes: 5000\n  max_entries: 10\n",
    )
    .unwrap();
    let loaded = BerthConfig::load(&LoadOptions {
        path: Some(path),
        ..LoadOptions::default()
    })
    .unwrap();
    assert_eq!(loaded.config.max_lifetime(), Duration::from_secs(90));
    assert_eq!(loaded.config.copy.limits().max_entries, 10);
    assert_eq!(loaded.config.copy.limits().max_bytes, 5000);
    let err = load_file("user.yaml", b"kubernetes:\n  run_as_user: true\n");
    assert!(
        err.contains("kubernetes.run_as_user") && err.contains("text or a number"),
        "{err}"
    );
}

#[test]
fn the_config_serialises_to_canonical_text_and_reads_back() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config.example.yaml");
    let example = BerthConfig::load(&LoadOptions {
        path: Some(path),
        ..LoadOptions::default()
    })
    .unwrap()
    .config;
    let value = serde_json::to_value(&example).unwrap();
    assert_eq!(value["runner"]["max_lifetime"], "1d");
    assert_eq!(value["runner"]["backend"], "docker");
    assert_eq!(value["runner"]["pull_policy"], "if_not_present");
    assert_eq!(value["runner"]["resources"]["cpu"], "2");
    assert_eq!(value["runner"]["resources"]["memory"], "4Gi");
    assert_eq!(value["kubernetes"]["resources"]["limits"]["cpu"], "2");
    assert_eq!(value["kubernetes"]["resources"]["requests"]["cpu"], "500m");
    assert_eq!(value["kubernetes"]["image_pull_policy"], "IfNotPresent");
    assert_eq!(value["kubernetes"]["security"], "hardened");
    assert_eq!(value["copy"]["max_bytes"], "8Gi");
    let back: BerthConfig = serde_json::from_value(value.clone()).unwrap();
    assert_eq!(back, example);
    // Through the layered loader too.
    let yaml = serde_json::to_string(&value).unwrap();
    assert_eq!(BerthConfig::from_yaml_str(&yaml).unwrap(), example);
    let unlimited =
        BerthConfig::from_yaml_str("runner:\n  resources:\n    cpu: unlimited\n").unwrap();
    let value = serde_json::to_value(&unlimited).unwrap();
    assert_eq!(value["runner"]["resources"]["cpu"], "unlimited");
}

/// Every path serde knows of the default config, sections included.
fn serde_paths(prefix: &str, value: &serde_json::Value, out: &mut Vec<String>) {
    if let serde_json::Value::Object(map) = value {
        for (key, child) in map {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            out.push(path.clone());
            serde_paths(&path, child, out);
        }
    }
}

#[test]
fn the_known_keys_are_the_schema_fields() {
    let mut from_serde = Vec::new();
    serde_paths(
        "",
        &serde_json::to_value(BerthConfig::default()).unwrap(),
        &mut from_serde,
    );
    // The workspace's mapping forms are values of a key serde shows as "none".
    for form in WorkspaceConfig::keys() {
        let text = format!("runner:\n  workspace: {{{}: /abs}}\n", form.name);
        let config = BerthConfig::from_yaml_str(&text).unwrap();
        let value = serde_json::to_value(&config).unwrap();
        serde_paths("", &value, &mut from_serde);
    }
    // So are the allow-list form's keys of `runner.network` (serde shows "full").
    let config =
        BerthConfig::from_yaml_str("runner:\n  network: {allow: [10.0.0.0/8], dns: true}\n")
            .unwrap();
    serde_paths("", &serde_json::to_value(&config).unwrap(), &mut from_serde);
    // A named map's entries are any name, `*` in the schema.
    let mut named = BerthConfig::default();
    let mut builder = super::BuilderConfig::default();
    builder.labels.insert("*".into(), "x".into());
    named.builders.insert("*".into(), builder);
    named.docker.secret_files.insert("*".into(), "/x".into());
    named.kubernetes.annotations.insert("*".into(), "x".into());
    named.kubernetes.labels.insert("*".into(), "x".into());
    named
        .kubernetes
        .secret_env
        .insert("*".into(), super::KeyEntry::default());
    serde_paths("", &serde_json::to_value(&named).unwrap(), &mut from_serde);
    // A pool, with each workspace form.
    for workspace in [
        WorkspaceConfig::HostPath("/abs".into()),
        WorkspaceConfig::Volume("v".into()),
    ] {
        let mut pooled = BerthConfig::default();
        let mut pool = super::PoolConfig::default();
        pool.env.insert("*".into(), "x".into());
        pool.workspace = workspace;
        // A pool's own network takes runner.network's forms, the allow list's keys too.
        pool.network = Some(
            BerthConfig::from_yaml_str("runner:\n  network: {allow: [10.0.0.0/8], dns: true}\n")
                .expect("an allow list")
                .runner
                .network,
        );
        pooled.pools.insert("*".into(), pool);
        serde_paths("", &serde_json::to_value(&pooled).unwrap(), &mut from_serde);
    }
    from_serde.sort();
    from_serde.dedup();
    let mut from_schema: Vec<String> = known_paths().into_iter().map(|(p, _)| p).collect();
    from_schema.sort();
    assert_eq!(from_schema, from_serde);
    assert!(known_keys().contains(&"kubernetes.scale_up_grace".to_owned()));
    assert!(!known_keys().contains(&"kubernetes".to_owned()));
}

#[test]
fn a_declared_field_is_known_without_a_list() {
    super::keys::section! {
        /// A section as a later issue might add it.
        #[derive(Debug, Default)]
        pub struct Extra {
            /// A new duration.
            pub idle_timeout: Option<HumanDuration>,
            /// A nested section.
            pub nested: QuantityPair,
        }
    }
    let mut paths = Vec::new();
    super::keys::flatten("extra", &Extra::keys(), &mut paths);
    let names: Vec<&str> = paths.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        names,
        [
            "extra.idle_timeout",
            "extra.nested",
            "extra.nested.cpu",
            "extra.nested.memory"
        ]
    );
    assert_eq!(paths[0].1, super::keys::ValueKind::Quantity);
    let Extra {
        idle_timeout,
        nested,
    } = Extra::default();
    assert_eq!((idle_timeout, nested), (None, QuantityPair::default()));
}

#[test]
fn environment_variables_are_named_for_their_keys() {
    assert_eq!(
        variable_of("kubernetes.start_timeout"),
        "BERTH_KUBERNETES__START_TIMEOUT"
    );
}

#[test]
fn server_values_are_checked_by_name() {
    for (yaml, key, expected) in [
        (
            "server:\n  listen: localhost\n",
            "server.listen",
            "127.0.0.1:8080",
        ),
        (
            "kubernetes:\n  max_concurrent_writes: 0\n",
            "kubernetes.max_concurrent_writes",
            "at least 1",
        ),
        (
            "server:\n  max_concurrent_jobs: 0\n",
            "server.max_concurrent_jobs",
            "at least 1",
        ),
        (
            "server:\n  tls:\n    cert: /c.pem\n",
            "server.tls",
            "both cert and key",
        ),
        ("server:\n  image: \"Bad Image\"\n", "server.image", ""),
        (
            "server:\n  drain_timeout: soon\n",
            "server.drain_timeout",
            "duration",
        ),
        ("server:\n  listn: 1\n", "listn", "unknown"),
        (
            "server:\n  git_hosts: github.com\n",
            "server.git_hosts",
            "expected a",
        ),
    ] {
        let err = BerthConfig::from_yaml_str(yaml).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains(expected), "{yaml}: {err}");
    }
    let ok =
        BerthConfig::from_yaml_str("server:\n  listen: \"[::]:9000\"\n  max_cpu: 2\n").unwrap();
    assert_eq!(ok.server.listen, "[::]:9000");
    assert_eq!(ok.server.max_cpu.millis(), 2000);
    assert_eq!(ok.server.max_concurrent_jobs, 4);
    assert!(ok.server.git_hosts.is_empty() && !ok.server.allow_private_git_hosts);
    let hosts = BerthConfig::from_yaml_str(
        "server:\n  git_hosts: [github.com, git.example.com]\n  allow_private_git_hosts: true\n",
    )
    .unwrap();
    assert_eq!(hosts.server.git_hosts, ["github.com", "git.example.com"]);
    assert!(hosts.server.allow_private_git_hosts);
}

#[test]
fn docker_remote_settings_parse_and_are_validated_by_name() {
    let config = BerthConfig::from_yaml_str(
        "docker:\n  host: ssh://me@far:2222\n  ssh_config: /etc/berth/ssh_config\n  context: far\n  tls: {ca: /c/ca.pem, cert: /c/cert.pem, key: /c/key.pem}\n",
    )
    .unwrap();
    assert_eq!(config.docker.host.as_deref(), Some("ssh://me@far:2222"));
    assert_eq!(config.docker.context.as_deref(), Some("far"));
    let tls = &config.docker.tls;
    assert!(tls.is_set());
    assert!(tls.verify, "verify defaults to true");
    assert_eq!(tls.ca.as_deref(), Some(Path::new("/c/ca.pem")));
    let err = BerthConfig::from_yaml_str(
        "docker:\n  tls: {ca: /c/ca.pem, cert: /c/cert.pem, key: /c/key.pem, verify: false}\n",
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("docker.tls.verify"), "{err}");
    let err = BerthConfig::from_yaml_str("docker:\n  tls: {cert: /c/cert.pem, key: /c/key.pem}\n")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("docker.tls.ca") && err.contains("PEM"),
        "{err}"
    );
    assert_eq!(
        suggest_for("docker.contxt").as_deref(),
        Some("docker.context")
    );
    assert_eq!(
        suggest_for("docker.tls.caa").as_deref(),
        Some("docker.tls.ca")
    );
}

/// The commented examples of `kubernetes:` and `docker:` in config.example.yaml, uncommented.
fn example_block(section: &str, from: &str, to: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config.example.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let start = text.find(from).unwrap();
    let end = start + text[start..].find(to).unwrap() + to.len();
    let mut out = format!("{section}:\n");
    for line in text[start..end].lines() {
        let Some(rest) = line.strip_prefix("  # ") else {
            continue;
        };
        let yaml = rest.starts_with("  ")
            || rest.split_once(':').is_some_and(|(k, _)| {
                !k.is_empty() && k.bytes().all(|c| c.is_ascii_lowercase() || c == b'_')
            });
        if yaml {
            out.push_str("  ");
            out.push_str(rest);
            out.push('\n');
        }
    }
    out
}

#[test]
fn the_examples_of_secrets_config_maps_and_caches_load() {
    let yaml = example_block("kubernetes", "  # env_from:", "  # labels: {team: agents}");
    let config = BerthConfig::from_yaml_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let k = &config.kubernetes;
    assert_eq!(k.env_from.len(), 2, "{yaml}");
    assert_eq!(k.env_from[0].prefix.as_deref(), Some("API_"));
    assert!(k.env_from[1].optional);
    assert_eq!(k.secret_env["DB_PASSWORD"].key, "password");
    assert_eq!(k.mounts[0].items["tls.crt"], "cert.pem");
    assert!(k.mounts[0].read_only, "mounts are read-only by default");
    let size = k.caches[1].create.as_ref().unwrap().size.unwrap();
    assert_eq!(size.bytes(), 10 << 30);
    assert_eq!(extras_size(&config), "10Gi");
    assert_eq!(k.security_context.supplemental_groups, [3000]);
    assert_eq!(k.annotations["example.com/team"], "agents");
    assert_eq!(k.labels["team"], "agents");
    let extras = k.pod_extras().unwrap();
    assert_eq!(extras.mounts[0].mode, Some(0o440));
    assert_eq!(extras.security.fs_group, Some(2000));
    let yaml = example_block("docker", "  # env_files:", "api-token}");
    let docker = BerthConfig::from_yaml_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(docker.docker.env_files.len(), 1, "{yaml}");
    assert_eq!(docker.docker.secret_files.len(), 1, "{yaml}");
}

fn extras_size(config: &BerthConfig) -> String {
    let extras = config.kubernetes.pod_extras().unwrap();
    extras.caches[1].create.as_ref().unwrap().size.clone()
}

#[test]
fn bad_secret_and_mount_entries_name_the_key_and_what_was_expected() {
    for (yaml, key, expected) in [
        (
            "kubernetes:\n  env_from: [{secret: a, config_map: b}]\n",
            "kubernetes.env_from[0]",
            "got both",
        ),
        (
            "kubernetes:\n  env_from: [{prefix: X_}]\n",
            "kubernetes.env_from[0]",
            "secret: NAME or config_map: NAME",
        ),
        (
            "kubernetes:\n  env_from: [{secret: Bad_Name}]\n",
            "kubernetes.env_from[0]",
            "object name",
        ),
        (
            "kubernetes:\n  secret_env: {1BAD: {secret: a, key: k}}\n",
            "kubernetes.secret_env.1BAD",
            "variable name",
        ),
        (
            "kubernetes:\n  secret_env: {GOOD: {secret: a}}\n",
            "kubernetes.secret_env.GOOD.key",
            "key",
        ),
        (
            "kubernetes:\n  mounts: [{secret: a, path: etc/x}]\n",
            "kubernetes.mounts[0].path",
            "absolute path",
        ),
        (
            "kubernetes:\n  mounts: [{secret: a, path: /x, items: {k: ../../etc/passwd}}]\n",
            "kubernetes.mounts[0].items.k",
            "without '..'",
        ),
        (
            "kubernetes:\n  mounts: [{secret: a, path: /x, mode: \"999\"}]\n",
            "kubernetes.mounts[0].mode",
            "octal",
        ),
        (
            "kubernetes:\n  caches: [{claim: c, path: /c, create: {size: lots}}]\n",
            "kubernetes.caches[0].create.size",
            "memory quantity",
        ),
        (
            "kubernetes:\n  caches: [{claim: c, path: /c, create: {}}]\n",
            "kubernetes.caches[0].create.size",
            "10Gi",
        ),
        (
            "kubernetes:\n  caches: [{path: /c}]\n",
            "kubernetes.caches[0].claim",
            "object name",
        ),
        (
            "kubernetes:\n  labels: {\"bad key!\": x}\n",
            "kubernetes.labels.bad key!",
            "label",
        ),
        (
            "docker:\n  secret_files: {relative/path: /etc/hosts}\n",
            "docker.secret_files.relative/path",
            "absolute path",
        ),
        (
            "kubernetes:\n  mounts: [{secret: a, path: /x, itmes: {}}]\n",
            "itmes",
            "unknown field",
        ),
        (
            "kubernetes:\n  env_from: {secret: a}\n",
            "kubernetes.env_from",
            "expected a sequence",
        ),
    ] {
        let err = BerthConfig::from_yaml_str(yaml).unwrap_err().to_string();
        assert!(err.contains(key) && err.contains(expected), "{yaml}: {err}");
    }
}

#[test]
fn options_without_meaning_on_the_backend_are_refused_naming_the_key() {
    let options = crate::spec::EnvOptions::default();
    let docker = BerthConfig::from_yaml_str(
        "runner:\n  image: busybox\n  backend: docker\nkubernetes:\n  env_from: [{secret: a}]\n",
    )
    .unwrap();
    let err = crate::spec::environment_spec(&docker, &options)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("kubernetes.env_from") && err.contains("docker.env_files"),
        "{err}"
    );
    let on_k8s = BerthConfig::from_yaml_str(
        "runner:\n  image: busybox\n  backend: kubernetes\ndocker:\n  env_files: [/tmp/a.env]\n",
    )
    .unwrap();
    let err = crate::spec::environment_spec(&on_k8s, &options)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("docker.env_files") && err.contains("kubernetes.env_from"),
        "{err}"
    );
    // Labels mean something on both.
    let labelled = BerthConfig::from_yaml_str(
        "runner:\n  image: busybox\nkubernetes:\n  labels: {team: agents}\n",
    )
    .unwrap();
    let spec = crate::spec::environment_spec(&labelled, &options).unwrap();
    assert_eq!(spec.labels["team"], "agents");
}

/// A named map's keys are the user's own and may hold dots (`example.com/team`): they are
/// not read as nested keys, while a wrong key inside a named entry is still named.
#[test]
fn named_map_keys_may_hold_dots() {
    let dir = std::env::temp_dir().join(format!("berth-cfg-dots-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dots.yaml");
    std::fs::write(
        &path,
        "kubernetes:\n  annotations: {example.com/team: infra, a.b.c/d: x}\n  labels: {app.kubernetes.io/part-of: agents}\nbuilders:\n  arm.1: {host: ssh://b@arm}\n",
    )
    .unwrap();
    let config = BerthConfig::load(&LoadOptions {
        path: Some(path.clone()),
        ..LoadOptions::default()
    })
    .unwrap();
    assert_eq!(
        config.config.kubernetes.annotations["example.com/team"],
        "infra"
    );
    assert_eq!(
        config.config.kubernetes.labels["app.kubernetes.io/part-of"],
        "agents"
    );
    std::fs::write(&path, "builders:\n  arm.1: {hots: ssh://b@arm}\n").unwrap();
    let err = BerthConfig::load(&LoadOptions {
        path: Some(path),
        ..LoadOptions::default()
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("builders.arm.1.hots"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn network_takes_every_form_and_booleans_still_work() {
    use berth_engine_core::Network;
    for (yaml, want) in [
        ("runner:\n  network: true\n", Network::Full),
        ("runner:\n  network: false\n", Network::None),
        ("runner:\n  network: none\n", Network::None),
        ("runner:\n  network: full\n", Network::Full),
    ] {
        let config = BerthConfig::from_yaml_str(yaml).expect(yaml);
        assert_eq!(config.runner.network, want, "{yaml}");
    }
    let config = BerthConfig::from_yaml_str(
        "runner:\n  network:\n    allow: [10.0.0.0/8:443, pypi.org:443, 1.2.3.4]\n    dns: false\n",
    )
    .expect("allow");
    let allow = config.runner.network.allow_list().expect("an allow list");
    assert_eq!(allow.allow.len(), 3);
    assert!(!allow.dns);
    let config =
        BerthConfig::from_yaml_str("runner:\n  network: {allow: [10.0.0.0/8]}\n").expect("dns");
    assert!(
        config.runner.network.allow_list().expect("allow").dns,
        "dns defaults on"
    );
    let err = BerthConfig::from_yaml_str("runner:\n  network: {allow: ['a b:1']}\n")
        .expect_err("bad entry")
        .to_string();
    assert!(
        err.contains("runner.network") && err.contains("\"a b:1\""),
        "{err}"
    );
}

#[test]
fn git_image_and_secret_are_checked_and_reach_the_engine() {
    let err = load_file("gi.yaml", b"kubernetes:\n  git_image: 'not an image'\n");
    assert!(err.contains("kubernetes.git_image"), "{err}");
    let err = load_file("gs.yaml", b"kubernetes:\n  git_secret: Bad_Name\n");
    assert!(err.contains("kubernetes.git_secret"), "{err}");
    let config = BerthConfig::from_yaml_str(
        "kubernetes:\n  git_image: example.com/git:2\n  git_secret: git-token\n",
    )
    .expect("valid");
    let k8s = crate::backend::kubernetes_config(&config);
    assert_eq!(k8s.git_image, "example.com/git:2");
    assert_eq!(k8s.git_secret.as_deref(), Some("git-token"));
    assert_eq!(
        crate::backend::kubernetes_config(&BerthConfig::default()).git_image,
        crate::config::DEFAULT_GIT_IMAGE
    );
}
