//! The deployment files say what the issue asks of them. The schemas are
//! checked by scripts/check-deploy; this checks the choices in them: the
//! image ships the binary the tests build, pods are locked down, secrets
//! arrive as files, the drain fits the grace period.

use std::path::Path;

use meridian_test_support::repo_root;
use serde_json::Value;

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Vec<Value> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).unwrap_or_else(|e| panic!("{path}: {e}")))
        .collect()
}

fn manifests() -> Vec<(String, Value)> {
    let dir = repo_root().join("deploy/kubernetes");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            for doc in yaml(&format!("deploy/kubernetes/{name}")) {
                out.push((name.clone(), doc));
            }
        }
    }
    out
}

fn of_kind<'a>(all: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    all.iter()
        .filter(|(_, d)| d["kind"] == kind)
        .map(|(_, d)| d)
        .collect()
}

#[test]
fn the_image_is_built_by_the_script_the_tests_run() {
    let dockerfile = read("deploy/Dockerfile");
    let script = read("scripts/build-release");
    // One build command, in one place.
    assert!(
        script.contains(
            "cargo auditable build --locked --profile \"$profile\" -p meridian --bin meridian"
        ),
        "scripts/build-release changed its build command"
    );
    // Statically linked, for the target only (scripts/release-env): the
    // production base has no C library.
    assert!(
        script.contains(
            "--target \"$MERIDIAN_RELEASE_TARGET\" --config \"$MERIDIAN_RELEASE_CONFIG\""
        ),
        "scripts/build-release no longer builds the static binary"
    );
    assert!(read("scripts/release-env").contains("target-feature=+crt-static"));
    assert!(read("scripts/supply-chain").contains("scripts/build-release"));
    assert!(read("scripts/test").contains("scripts/supply-chain"));
    let builds: Vec<&str> = dockerfile
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter(|l| {
            l.contains("cargo build")
                || l.contains("cargo auditable")
                || l.contains("build-release")
        })
        .collect();
    assert_eq!(
        builds.len(),
        1,
        "the Dockerfile builds the binary one way: {builds:?}"
    );
    assert!(builds[0].contains("scripts/build-release"), "{}", builds[0]);
    assert!(
        !dockerfile.contains("--features"),
        "features differ from the tested build"
    );
}

#[test]
fn the_production_image_is_distroless_and_not_root() {
    let dockerfile = read("deploy/Dockerfile");
    let stages: Vec<&str> = dockerfile.split("\nFROM ").skip(1).collect();
    let production = stages.last().expect("stages");
    // Base images are build arguments (scripts/test-images passes local
    // stand-ins); the defaults are the registries' images.
    assert!(
        production.starts_with("${RUNTIME_IMAGE} AS production"),
        "{production}"
    );
    assert!(
        dockerfile.contains("\nARG RUNTIME_IMAGE=gcr.io/distroless/static-debian12:nonroot\n"),
        "the production base defaults to distroless/static (no C library: the binary is static)"
    );
    assert!(
        dockerfile.contains(
            "\nARG BUILDER_IMAGE=docker.io/library/rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE}\n"
        ),
        "the builder defaults to the official Rust image"
    );
    // Both targets ship the binary of one stage, which a prebuilt binary
    // can replace (scripts/build-image --binary): dev/prod parity.
    for stage in ["dev", "production"] {
        let body = stages
            .iter()
            .find(|s| s.contains(&format!(" AS {stage}\n")))
            .unwrap();
        assert!(
            body.contains("COPY --from=binary /out/meridian /usr/local/bin/meridian"),
            "{stage}"
        );
    }
    assert!(dockerfile.contains("\nFROM builder AS binary\n"));
    assert!(
        production.contains("\nUSER 65532:65532"),
        "numeric non-root user"
    );
    assert!(
        !production.contains("\nRUN "),
        "nothing runs in the final stage: it has no shell"
    );
    assert!(dockerfile.contains(" AS dev\n"), "a development target");
    for arg in ["ARG RUST_VERSION=", "ARG PROFILE="] {
        assert!(dockerfile.contains(arg), "{arg}");
    }
    let ignore = read(".dockerignore");
    for entry in [
        "target/",
        ".git/",
        "web/node_modules/",
        ".meridian/",
        ".venv/",
        "deploy/demo/secrets/",
        ".env",
    ] {
        assert!(
            ignore.lines().any(|l| l == entry),
            ".dockerignore lacks {entry}"
        );
    }
}

#[test]
fn pods_are_locked_down_probed_and_given_secrets_as_files() {
    let all = manifests();
    let deployments = of_kind(&all, "Deployment");
    let jobs = of_kind(&all, "Job");
    assert_eq!(deployments.len(), 1);
    assert_eq!(jobs.len(), 1, "the migrate Job");
    let deployment = deployments[0];
    assert!(deployment["spec"]["replicas"].as_u64().unwrap() >= 2);

    for workload in deployments.iter().chain(&jobs) {
        let pod = &workload["spec"]["template"]["spec"];
        let name = &workload["metadata"]["name"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{name}"
        );
        assert_eq!(pod["automountServiceAccountToken"], false, "{name}");
        let init = pod["initContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for c in pod["containers"].as_array().unwrap().iter().chain(&init) {
            let sc = &c["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(
                sc["capabilities"]["drop"],
                serde_json::json!(["ALL"]),
                "{name}"
            );
            assert!(
                c["resources"]["requests"]["cpu"].is_string(),
                "{name}: cpu request"
            );
            assert!(
                c["resources"]["requests"]["memory"].is_string(),
                "{name}: memory request"
            );
            let env = c["env"].as_array().cloned().unwrap_or_default();
            assert!(
                env.iter().all(|e| e["valueFrom"]["secretKeyRef"].is_null()),
                "{name}: secrets are mounted as files, not passed in the environment"
            );
        }
        let secret_volumes = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|v| v["secret"].is_object())
            .count();
        // Secret files are root's; with a mode that only root may read
        // (0400), the non-root user reads them through fsGroup. Without it
        // the migrate Job could not read the database URL.
        for v in pod["volumes"].as_array().unwrap() {
            let mode = file_mode(&v["secret"]["defaultMode"]).unwrap_or(0o644);
            if v["secret"].is_object() && mode & 0o004 == 0 {
                assert_eq!(
                    pod["securityContext"]["fsGroup"], pod["securityContext"]["runAsGroup"],
                    "{name}: secret volume {} (mode {mode:o}) unreadable without fsGroup",
                    v["name"]
                );
            }
        }
        assert!(
            secret_volumes >= 1,
            "{name}: the database URL comes from a mounted Secret"
        );
    }

    let c = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz/xds");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");

    // The PDB and the NetworkPolicy cover the Deployment's pods.
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    let covers = |selector: &Value| {
        selector["matchLabels"]
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| &labels[k] == v)
    };
    let pdbs = of_kind(&all, "PodDisruptionBudget");
    assert_eq!(pdbs.len(), 1);
    assert!(covers(&pdbs[0]["spec"]["selector"]));
    let policies = of_kind(&all, "NetworkPolicy");
    assert_eq!(policies.len(), 1);
    assert!(covers(&policies[0]["spec"]["podSelector"]));
    let ports: Vec<u64> = policies[0]["spec"]["ingress"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["port"].as_u64().unwrap())
        })
        .collect();
    // Exactly the ports the settings bind, each one a container port and
    // in the Service.
    let settings = settings(&all);
    let mut bound: Vec<u64> = ["apiAddr", "xdsAddr", "grpcAddr"]
        .iter()
        .map(|key| {
            let addr = settings[key].as_str().unwrap_or_else(|| panic!("{key}"));
            addr.rsplit(':').next().unwrap().parse().unwrap()
        })
        .collect();
    bound.sort();
    let mut ingress = ports.clone();
    ingress.sort();
    assert_eq!(ingress, bound, "ingress only to the ports Meridian binds");
    let container_ports: Vec<u64> = c["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect();
    let service = of_kind(&all, "Service")[0];
    let service_ports: Vec<u64> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    for port in &bound {
        assert!(container_ports.contains(port), "container port {port}");
        assert!(service_ports.contains(port), "Service port {port}");
    }
}

/// A file mode as a manifest writes it: `0400` is octal to Kubernetes
/// (YAML 1.1); a YAML 1.2 reader sees a string (a leading zero), or a
/// number when it is written in decimal.
fn file_mode(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => u64::from_str_radix(s.trim_start_matches("0o"), 8).ok(),
        _ => None,
    }
}

#[test]
fn file_modes_read_as_kubernetes_reads_them() {
    assert_eq!(file_mode(&Value::String("0400".into())), Some(0o400));
    assert_eq!(file_mode(&Value::String("0o440".into())), Some(0o440));
    assert_eq!(file_mode(&serde_json::json!(256)), Some(0o400));
    assert_eq!(file_mode(&Value::Null), None);
}

/// The settings file the ConfigMap carries.
fn settings(all: &[(String, Value)]) -> Value {
    let text = of_kind(all, "ConfigMap")[0]["data"]["meridian.yaml"]
        .as_str()
        .unwrap()
        .to_owned();
    serde_norway::from_str(&text).unwrap()
}

/// Where a container mounts the volume `name`.
fn mount_of(container: &Value, name: &str) -> Option<String> {
    container["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["mountPath"].as_str())
        .map(str::to_owned)
}

#[test]
fn every_role_runs_and_writes_only_to_mounted_volumes() {
    let all = manifests();
    let settings = settings(&all);
    let roles: Vec<&str> = settings["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for role in ["api", "xds", "health", "failover", "grpc", "gitops"] {
        assert!(roles.contains(&role), "the replicas run {role}");
    }
    // The root filesystem is read-only, so the GitOps caches under
    // dataDir need a volume of their own.
    let data_dir = settings["dataDir"].as_str().expect("dataDir is set");
    let pod = &of_kind(&all, "Deployment")[0]["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let writable: Vec<String> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["readOnly"] != true)
        .map(|m| m["mountPath"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        writable.iter().any(|w| Path::new(data_dir).starts_with(w)),
        "dataDir {data_dir} is on none of the writable mounts {writable:?}"
    );
}

#[test]
fn the_upgrade_job_migrates_then_imports_the_admin_token_from_a_secret() {
    let all = manifests();
    let job = of_kind(&all, "Job")[0];
    let pod = &job["spec"]["template"]["spec"];
    let args = |c: &Value| -> Vec<String> {
        c["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    };
    // Init containers run to completion, in order, before the containers.
    let init = &pod["initContainers"][0];
    assert_eq!(args(init)[0], "migrate");
    let token = &pod["containers"][0];
    let token_args = args(token);
    assert_eq!(token_args[..2], ["token", "import"]);
    let file = token_args
        .iter()
        .find_map(|a| a.strip_prefix("--file="))
        .expect("--file=");
    let mount = mount_of(token, "admin-token").expect("the token Secret is mounted");
    assert_eq!(Path::new(file).parent().unwrap(), Path::new(&mount));
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "admin-token")
        .unwrap();
    assert_eq!(volume["secret"]["secretName"], "meridian-admin-token");
    assert!(token_args.contains(&"--role=admin".to_owned()));
    // The example Secret shows the token's key under that name.
    let text = read("deploy/kubernetes/secret.example.yaml");
    assert!(text.contains("name: meridian-admin-token") && text.contains("token: mrd_"));
}

#[test]
fn the_drain_fits_the_grace_period_and_migrations_run_once() {
    let all = manifests();
    let settings = settings(&all);
    let drain = settings["drainSeconds"].as_u64().unwrap();
    let deployment = of_kind(&all, "Deployment")[0];
    let grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .unwrap();
    let pre_stop = deployment["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]
        ["sleep"]["seconds"]
        .as_u64()
        .unwrap_or(0);
    // SIGTERM comes after preStop; the drain, then up to 2 s closing
    // connections, must end before the kubelet's SIGKILL.
    assert!(
        pre_stop + drain + 2 < grace,
        "preStop {pre_stop} s + drain {drain} s + 2 s must end before SIGKILL at {grace} s"
    );
    assert_eq!(
        settings["migrate"], false,
        "replicas leave migrations to the Job"
    );
    let job = of_kind(&all, "Job")[0];
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        job["metadata"]["name"],
        format!("meridian-migrate-{}", version.replace('.', "-")),
        "one Job name per version: a new version runs it once"
    );
    let image = |w: &Value| {
        w["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        image(job),
        image(deployment),
        "the Job migrates with the image it deploys"
    );
    assert!(image(deployment).ends_with(&format!(":{version}")));

    // The file mounted from the Secret is where the config looks.
    let mount = mount_of(
        &deployment["spec"]["template"]["spec"]["containers"][0],
        "database",
    )
    .unwrap();
    let file = settings["databaseUrlFile"].as_str().unwrap();
    assert_eq!(Path::new(file).parent().unwrap(), Path::new(&mount));
}

#[test]
fn the_compose_stack_has_every_part_of_the_demo() {
    let compose = &yaml("deploy/compose.yaml")[0];
    let services = compose["services"].as_object().unwrap();
    for name in [
        "postgres",
        "migrate",
        "meridian-1",
        "meridian-2",
        "envoy",
        "backend-a",
        "backend-b",
        "pdns",
        "moto",
    ] {
        assert!(services.contains_key(name), "compose lacks {name}");
    }
    // The demo policies' endpoints are the backends' loopback addresses
    // (their first argument), and every service stays on loopback.
    for backend in ["backend-a", "backend-b"] {
        let ip = compose["services"][backend]["command"][0].as_str().unwrap();
        assert!(ip.starts_with("127."), "{backend} at {ip}");
        assert!(
            read("deploy/demo/policies/shop.yaml").contains(ip),
            "{backend} at {ip}"
        );
    }
    for (name, service) in services {
        // The replicas take it from the shared `<<: *meridian` block.
        let network = if service["network_mode"].is_null() {
            &service["<<"]["network_mode"]
        } else {
            &service["network_mode"]
        };
        assert_eq!(network, "host", "{name}");
        assert!(service["ports"].is_null(), "{name}: nothing published");
    }
}
