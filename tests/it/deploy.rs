//! The deployment assets agree with each other and with hookbridge itself.
//!
//! Reads the plain manifests under `deploy/kubernetes/` and what `helm template` renders from
//! `deploy/helm/hookbridge`, and for every container running hookbridge checks that:
//! - the container's `webhook` port is the config's `listen` port, and the liveness (`/healthz`)
//!   and readiness (`/readyz`) probes hit the config's `admin_listen` port, which listens on all
//!   interfaces (the kubelet probes the pod IP);
//! - the config in the ConfigMap passes `hookbridge check-config` (the built binary), with the
//!   container's `HOOKBRIDGE__` env overrides applied;
//! - `terminationGracePeriodSeconds` exceeds `ack_timeout` + the preStop sleep + 1s of drain;
//! - signing secrets are files from a mounted Secret (whole-directory mount, so Kubernetes can
//!   update them in place), never literal values in the ConfigMap or the env;
//! - the security context is hardened (non-root, read-only root filesystem, no privilege
//!   escalation, ALL capabilities dropped, RuntimeDefault seccomp);
//! - Services, the Ingress, the HTTPRoute, the ServiceMonitor, the PDB, the HPA and the
//!   NetworkPolicy point at these pods and ports; the admin port is never on the webhook
//!   Service, and no budget blocks a drain.
//!
//! The chart is rendered with every values file of its `ci/` folder (one per sink kind). Also
//! here: validation of everything against the Kubernetes 1.30 and newest OpenAPI schemas
//! (offline), the alert rules' promtool unit tests, the metrics the dashboard and alerts use
//! against a running bridge (with `hookbridge_build_info` and its start-up line), the libraries
//! the image copies, the release workflow's image and chart names, and the documented examples.
//!
//! The tools are required: helm, promtool and kubernetes-validate are found at
//! `$HOOKBRIDGE_HELM`, `$HOOKBRIDGE_PROMTOOL`, `$HOOKBRIDGE_KUBERNETES_VALIDATE`, then in
//! `${HOOKBRIDGE_CACHE:-~/.cache/hookbridge}` (where `deploy/helm/install-helm.sh` and
//! `deploy/tools/install.sh` put them), then on `PATH`. A missing tool fails the tests; they are
//! never skipped.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use figment::providers::{Format, Yaml};
use figment::Figment;
use serde_json::{json, Value};

/// What the image runs when a container gives no args (deploy/Dockerfile's CMD).
const IMAGE_CONFIG_PATH: &str = "/etc/hookbridge/hookbridge.yaml";
/// hookbridge's own defaults (src/config/raw.rs), for keys a config leaves out.
const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
const DEFAULT_ACK_TIMEOUT: &str = "5s";
/// Kubernetes' default when a pod sets no grace period.
const DEFAULT_GRACE_SECONDS: u64 = 30;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn chart() -> PathBuf {
    repo().join("deploy/helm/hookbridge")
}

// ------------------------------------------------------------------------------------------
// Reading manifests

/// A set of Kubernetes objects that are deployed together, and where they came from.
struct Manifests {
    origin: String,
    docs: Vec<Value>,
}

impl Manifests {
    /// Every YAML document in `text`. Parsed with figment's YAML support, the same parser
    /// hookbridge reads its config with (so no extra YAML crate is needed).
    fn parse(origin: &str, text: &str) -> Manifests {
        let mut docs = Vec::new();
        for (i, doc) in split_documents(text).into_iter().enumerate() {
            let value: Value = Figment::from(Yaml::string(&doc))
                .extract()
                .unwrap_or_else(|e| panic!("{origin}: YAML document {i} does not parse: {e}"));
            docs.push(value);
        }
        Manifests {
            origin: origin.to_string(),
            docs,
        }
    }

    /// Every `*.yaml` file of a plain-manifest directory except kustomization.yaml.
    fn read_dir(dir: &Path) -> Manifests {
        let mut text = String::new();
        for file in yaml_files(dir) {
            text.push_str("\n---\n");
            text.push_str(&std::fs::read_to_string(&file).unwrap());
        }
        Manifests::parse(&dir.strip_prefix(repo()).unwrap().display().to_string(), &text)
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.docs.iter().filter(move |d| str_at(d, "kind") == Some(kind))
    }

    fn find(&self, kind: &str, name: &str) -> Option<&Value> {
        self.docs
            .iter()
            .find(|d| str_at(d, "kind") == Some(kind) && str_at(d, "metadata.name") == Some(name))
    }
}

/// Splits a multi-document YAML stream at `---` lines, dropping documents that hold nothing
/// but comments (helm prints `# Source:` lines).
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line == "---" || line.starts_with("--- ") {
            docs.push(String::new());
        } else {
            let doc = docs.last_mut().unwrap();
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.retain(|d| {
        d.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .filter(|p| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .collect();
    files.sort();
    files
}

fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, key| v.get(key))
}

fn str_at<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    at(v, path).and_then(Value::as_str)
}

fn list_at<'a>(v: &'a Value, path: &str) -> &'a [Value] {
    at(v, path).and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn u64_of(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

// ------------------------------------------------------------------------------------------
// Helm

/// A checking tool (helm, promtool, kubernetes-validate). Panics (the test fails) when it is
/// missing: these checks are part of CI. Found at `$<env_var>`, then in the cache where
/// `deploy/helm/install-helm.sh` and `deploy/tools/install.sh` put them, then on `PATH`.
fn tool(name: &str, env_var: &str, cached: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env_var).filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{env_var}={} is not a file", p.display());
        return p;
    }
    let cache = std::env::var_os("HOOKBRIDGE_CACHE")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hookbridge")));
    if let Some(p) = cache.map(|c| c.join(cached)).filter(|p| p.is_file()) {
        return p;
    }
    if let Some(p) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
    {
        return p;
    }
    panic!(
        "{name} is not installed: run `bash scripts/setup.sh` (it installs helm, promtool and \
         kubernetes-validate into ~/.cache/hookbridge), or point {env_var} at one"
    );
}

fn helm() -> PathBuf {
    tool("helm", "HOOKBRIDGE_HELM", "bin/helm")
}

fn run_helm(args: &[&str]) -> std::process::Output {
    Command::new(helm())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run helm: {e}"))
}

/// The oldest Kubernetes release the chart supports (Chart.yaml's kubeVersion); `helm template`
/// otherwise assumes an old default and refuses the chart.
const KUBE_VERSION: &str = "1.30.0";

/// A values file of the chart's ci/ folder.
fn ci_values(name: &str) -> String {
    chart().join("ci").join(name).to_str().unwrap().to_string()
}

/// Every values file of the chart's ci/ folder.
fn all_ci_values() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("-values.yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "expected a values file per sink kind in ci/: {files:?}"
    );
    files
}

/// The `helm template` arguments for a values file and `--set` overrides.
fn template_args(values: &str, sets: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "template",
        "hb",
        chart().to_str().unwrap(),
        "--kube-version",
        KUBE_VERSION,
    ]
    .map(String::from)
    .to_vec();
    if !values.is_empty() {
        args.extend(["-f".to_string(), values.to_string()]);
    }
    for s in sets {
        let flag = if s.starts_with('{') || s.contains("={") || s.contains("=[") {
            "--set-json"
        } else {
            "--set"
        };
        args.extend([flag.to_string(), s.to_string()]);
    }
    args
}

/// `helm template` of the chart with a values file (or none: "") and `--set` overrides (a value
/// that is JSON goes through `--set-json`); panics with helm's message on failure.
fn render(values: &str, sets: &[&str]) -> Manifests {
    let args = template_args(values, sets);
    let out = run_helm(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "helm template {values} {sets:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Manifests::parse(
        &format!("helm template {values} {sets:?}"),
        &String::from_utf8(out.stdout).unwrap(),
    )
}

/// `helm template` that must fail, returning helm's message.
fn render_error(values: &str, sets: &[&str]) -> String {
    let args = template_args(values, sets);
    let out = run_helm(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        !out.status.success(),
        "helm template {values} {sets:?} should have failed"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ------------------------------------------------------------------------------------------
// The checks

/// What one run of the checks found.
#[derive(Default)]
struct Report {
    /// hookbridge containers checked.
    containers: usize,
    problems: Vec<String>,
}

impl Report {
    fn problem(&mut self, msg: String) {
        self.problems.push(msg);
    }

    fn assert_clean(&self, m: &Manifests, at_least: usize) {
        assert!(
            self.problems.is_empty(),
            "{}: {} problem(s):\n  - {}",
            m.origin,
            self.problems.len(),
            self.problems.join("\n  - ")
        );
        assert!(
            self.containers >= at_least,
            "{}: expected at least {at_least} hookbridge container(s), checked {}",
            m.origin,
            self.containers
        );
    }

    fn assert_mentions(&self, needle: &str) {
        assert!(
            self.problems.iter().any(|p| p.contains(needle)),
            "expected a problem mentioning {needle:?}, got: {:#?}",
            self.problems
        );
    }
}

fn is_hookbridge(container: &Value) -> bool {
    str_at(container, "name") == Some("hookbridge")
        || str_at(container, "image").is_some_and(|i| i.contains("hookbridge"))
}

/// Runs every check on every Deployment in `m`.
fn check(m: &Manifests) -> Report {
    let mut r = Report::default();
    for deployment in m.of_kind("Deployment") {
        let name = str_at(deployment, "metadata.name").unwrap_or("?").to_string();
        let pod = at(deployment, "spec.template.spec").cloned().unwrap_or(json!({}));
        let pod_labels = at(deployment, "spec.template.metadata.labels")
            .cloned()
            .unwrap_or(json!({}));
        for container in list_at(&pod, "containers").iter().filter(|c| is_hookbridge(c)) {
            r.containers += 1;
            let ctx = format!(
                "Deployment {name}, container {}",
                str_at(container, "name").unwrap_or("?")
            );
            check_container(m, &ctx, &pod, container, &mut r);
        }
        check_replicas(m, deployment, &name, &mut r);
        check_services(m, &name, &pod, &pod_labels, &mut r);
        check_policies(m, &name, &pod, &pod_labels, &mut r);
        check_routes_and_monitors(m, &name, &pod, &pod_labels, &mut r);
        check_disruption_budgets(m, deployment, &name, &pod_labels, &mut r);
    }
    r
}

/// The pod's webhook port (named `webhook`) and admin port (the one its liveness probe GETs).
fn pod_ports(pod: &Value) -> (Option<u16>, Option<u16>) {
    let containers = list_at(pod, "containers");
    let Some(hookbridge) = containers.iter().find(|c| is_hookbridge(c)) else {
        return (None, None);
    };
    let admin =
        at(hookbridge, "livenessProbe.httpGet.port").and_then(|p| resolve_port(std::slice::from_ref(hookbridge), p));
    (named_port(hookbridge, "webhook"), admin)
}

/// The container port a Service port sends to, when the Service selects these pods.
fn service_target(svc_port: &Value, containers: &[Value]) -> Option<u16> {
    let target = svc_port.get("targetPort").or_else(|| svc_port.get("port"))?;
    resolve_port(containers, target)
}

/// The Gateway API HTTPRoute and the Prometheus Operator ServiceMonitor reach the right ports:
/// the route the webhook port through a Service, on endpoint paths; the monitor the admin port.
fn check_routes_and_monitors(m: &Manifests, name: &str, pod: &Value, labels: &Value, r: &mut Report) {
    let containers = list_at(pod, "containers");
    let (webhook, admin) = pod_ports(pod);
    for route in m.of_kind("HTTPRoute") {
        let route_name = str_at(route, "metadata.name").unwrap_or("?");
        if list_at(route, "spec.parentRefs").is_empty() {
            r.problem(format!("HTTPRoute {route_name}: no parentRefs (no Gateway)"));
        }
        for rule in list_at(route, "spec.rules") {
            for backend in list_at(rule, "backendRefs") {
                let svc_name = str_at(backend, "name").unwrap_or("");
                let Some(svc) = m.find("Service", svc_name) else {
                    r.problem(format!("HTTPRoute {route_name}: backend Service {svc_name} is missing"));
                    continue;
                };
                if !at(svc, "spec.selector").is_some_and(|s| labels_match(s, labels)) {
                    continue;
                }
                let port = backend.get("port").cloned().unwrap_or(Value::Null);
                let target = list_at(svc, "spec.ports")
                    .iter()
                    .find(|sp| sp.get("port") == Some(&port))
                    .and_then(|sp| service_target(sp, containers));
                if target.is_none() || target != webhook {
                    r.problem(format!(
                        "HTTPRoute {route_name}: Service {svc_name} port {port} reaches {target:?}, not Deployment {name}'s webhook port {webhook:?}"
                    ));
                }
            }
            for matcher in list_at(rule, "matches") {
                let path = str_at(matcher, "path.value").unwrap_or("");
                if !endpoint_paths(m).contains(&path.to_string()) {
                    r.problem(format!(
                        "HTTPRoute {route_name}: path {path} is not an endpoint path of hookbridge's config"
                    ));
                }
            }
        }
    }
    for sm in m.of_kind("ServiceMonitor") {
        let sm_name = str_at(sm, "metadata.name").unwrap_or("?");
        let selector = at(sm, "spec.selector.matchLabels").cloned().unwrap_or(json!({}));
        let services: Vec<&Value> = m
            .of_kind("Service")
            .filter(|svc| at(svc, "metadata.labels").is_some_and(|l| labels_match(&selector, l)))
            .collect();
        if services.is_empty() {
            r.problem(format!("ServiceMonitor {sm_name}: selects no Service"));
        }
        for svc in services {
            for ep in list_at(sm, "spec.endpoints") {
                let port_name = ep.get("port").cloned().unwrap_or(Value::Null);
                let target = list_at(svc, "spec.ports")
                    .iter()
                    .find(|sp| sp.get("name") == Some(&port_name))
                    .and_then(|sp| service_target(sp, containers));
                if target.is_none() || target != admin {
                    r.problem(format!(
                        "ServiceMonitor {sm_name}: port {port_name} of Service {:?} reaches {target:?}, not the admin port {admin:?}",
                        str_at(svc, "metadata.name")
                    ));
                }
            }
        }
    }
}

/// A budget that a single-replica (or minimum-size) deployment can never satisfy blocks every
/// node drain.
fn check_disruption_budgets(m: &Manifests, d: &Value, name: &str, labels: &Value, r: &mut Report) {
    let hpa_min = m
        .of_kind("HorizontalPodAutoscaler")
        .find(|h| str_at(h, "spec.scaleTargetRef.name") == Some(name))
        .and_then(|h| at(h, "spec.minReplicas").and_then(u64_of));
    let replicas = hpa_min.or_else(|| at(d, "spec.replicas").and_then(u64_of)).unwrap_or(1);
    for pdb in m.of_kind("PodDisruptionBudget") {
        let selector = at(pdb, "spec.selector.matchLabels").cloned().unwrap_or(json!({}));
        if !labels_match(&selector, labels) {
            continue;
        }
        let pdb_name = str_at(pdb, "metadata.name").unwrap_or("?");
        let blocks = match (at(pdb, "spec.minAvailable"), at(pdb, "spec.maxUnavailable")) {
            (Some(min), _) => min
                .as_str()
                .map_or_else(|| u64_of(min).is_some_and(|n| n >= replicas), |p| p == "100%"),
            (None, Some(max)) => max.as_str().map_or_else(|| u64_of(max) == Some(0), |p| p == "0%"),
            (None, None) => false,
        };
        if blocks {
            r.problem(format!(
                "PodDisruptionBudget {pdb_name} blocks every drain of Deployment {name} at {replicas} replica(s)"
            ));
        }
    }
}

fn check_container(m: &Manifests, ctx: &str, pod: &Value, c: &Value, r: &mut Report) {
    // The config file: --config in args (or the image's default), found through a configMap
    // volume mount.
    let args: Vec<&str> = list_at(c, "args").iter().filter_map(Value::as_str).collect();
    if !args.is_empty() && args[0] != "serve" {
        r.problem(format!("{ctx}: args must start with `serve`, got {args:?}"));
    }
    let config_path = args
        .iter()
        .position(|a| *a == "--config")
        .and_then(|i| args.get(i + 1).copied())
        .unwrap_or(IMAGE_CONFIG_PATH);
    let Some(config_text) = mounted_config(m, pod, c, config_path, ctx, r) else {
        return;
    };
    let config: Value = match Figment::from(Yaml::string(&config_text)).extract() {
        Ok(v) => v,
        Err(e) => {
            r.problem(format!("{ctx}: the config at {config_path} is not YAML: {e}"));
            return;
        }
    };
    let env = literal_env(c);
    let setting = |key: &str, default: &str| -> String {
        env.get(&format!("HOOKBRIDGE__{}", key.to_ascii_uppercase()))
            .cloned()
            .or_else(|| at(&config, key).map(scalar_text))
            .unwrap_or_else(|| default.to_string())
    };

    // Ports and probes.
    let listen = setting("listen", DEFAULT_LISTEN);
    let admin_listen = setting("admin_listen", DEFAULT_ADMIN_LISTEN);
    let (Some((_, webhook_port)), Some((admin_host, admin_port))) = (split_addr(&listen), split_addr(&admin_listen))
    else {
        r.problem(format!(
            "{ctx}: listen {listen:?} / admin_listen {admin_listen:?} are not IP:PORT"
        ));
        return;
    };
    match named_port(c, "webhook") {
        Some(p) if p == webhook_port => {}
        Some(p) => r.problem(format!(
            "{ctx}: containerPort `webhook` is {p} but the config's listen port is {webhook_port}"
        )),
        None => r.problem(format!(
            "{ctx}: no containerPort named `webhook` (config listen {listen})"
        )),
    }
    if !matches!(admin_host.as_str(), "0.0.0.0" | "::") {
        r.problem(format!(
            "{ctx}: admin_listen is {admin_listen}: the kubelet probes the pod IP, so it must listen on 0.0.0.0"
        ));
    }
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        let Some(p) = at(c, probe) else {
            if probe != "startupProbe" {
                r.problem(format!("{ctx}: no {probe}"));
            }
            continue;
        };
        if str_at(p, "httpGet.path") != Some(path) {
            r.problem(format!(
                "{ctx}: {probe} must GET {path}, has {:?}",
                str_at(p, "httpGet.path")
            ));
        }
        match at(p, "httpGet.port").and_then(|port| resolve_port(std::slice::from_ref(c), port)) {
            Some(port) if port == admin_port => {}
            other => r.problem(format!(
                "{ctx}: {probe} must target the admin port {admin_port} (admin_listen), targets {other:?}"
            )),
        }
    }

    // Grace period against ack_timeout + preStop sleep + 1s of drain.
    let ack_text = setting("ack_timeout", DEFAULT_ACK_TIMEOUT);
    match parse_duration(&ack_text) {
        None => r.problem(format!("{ctx}: ack_timeout {ack_text:?} is not a duration")),
        Some(ack) => {
            let grace = at(pod, "terminationGracePeriodSeconds")
                .and_then(u64_of)
                .unwrap_or(DEFAULT_GRACE_SECONDS);
            let pre_stop = at(c, "lifecycle.preStop");
            if pre_stop.is_some_and(|p| p.get("exec").is_some()) {
                r.problem(format!(
                    "{ctx}: preStop uses exec, but the image has no shell or sleep binary; use `sleep: {{seconds: N}}`"
                ));
            }
            let sleep = pre_stop.and_then(|p| at(p, "sleep.seconds")).and_then(u64_of);
            if sleep.is_none() {
                r.problem(format!(
                    "{ctx}: no preStop sleep: the drain would start before the endpoint is removed"
                ));
            }
            let need = ack + Duration::from_secs(sleep.unwrap_or(0) + 1);
            if Duration::from_secs(grace) <= need {
                r.problem(format!(
                    "{ctx}: terminationGracePeriodSeconds {grace} must exceed ack_timeout {ack_text} + preStop sleep {}s + 1s",
                    sleep.unwrap_or(0)
                ));
            }
        }
    }

    // Secrets: only files from a Secret volume; nothing secret in the ConfigMap or the env.
    if config_text.contains("whsec_") {
        r.problem(format!(
            "{ctx}: the ConfigMap's config contains a literal whsec_ secret"
        ));
    }
    for e in list_at(c, "env") {
        let name = str_at(e, "name").unwrap_or("");
        if str_at(e, "value").is_some_and(|v| v.contains("whsec_")) {
            r.problem(format!("{ctx}: env {name} holds a literal signing secret"));
        }
        if name.starts_with("HOOKBRIDGE_") && !name.starts_with("HOOKBRIDGE__") && name != "HOOKBRIDGE_CONFIG" {
            r.problem(format!(
                "{ctx}: env {name} has a single underscore after HOOKBRIDGE; overrides use HOOKBRIDGE__"
            ));
        }
    }
    let mut secret_files = Vec::new();
    let endpoints = list_at(&config, "endpoints");
    if endpoints.is_empty() {
        r.problem(format!("{ctx}: the config has no endpoints"));
    }
    for (i, ep) in endpoints.iter().enumerate() {
        let secrets = list_at(ep, "secrets");
        if secrets.is_empty() {
            r.problem(format!("{ctx}: endpoints[{i}] has no secrets"));
        }
        for (j, s) in secrets.iter().enumerate() {
            let key = format!("endpoints[{i}].secrets[{j}]");
            for literal in ["value", "env"] {
                if s.get(literal).is_some() {
                    r.problem(format!(
                        "{ctx}: {key} uses `{literal}`; in Kubernetes secrets must be files from a mounted Secret"
                    ));
                }
            }
            if let Some(file) = str_at(s, "file") {
                check_secret_file(m, pod, c, file, &format!("{ctx}: {key}"), r);
                secret_files.push(file.to_string());
            }
        }
    }

    // Hardening.
    check_security(ctx, pod, c, r);

    // Finally, hookbridge itself validates the config.
    if let Err(e) = check_config(&config, &env) {
        r.problem(format!(
            "{ctx}: hookbridge check-config rejects the ConfigMap's config:\n{e}"
        ));
    }
}

/// The text of the file at `path` inside the container, from a mounted ConfigMap.
fn mounted_config(m: &Manifests, pod: &Value, c: &Value, path: &str, ctx: &str, r: &mut Report) -> Option<String> {
    let Some((mount, key)) = mount_for(c, path) else {
        r.problem(format!("{ctx}: nothing is mounted at the config path {path}"));
        return None;
    };
    let volume = volume(pod, str_at(mount, "name").unwrap_or(""));
    let Some(cm_name) = volume.and_then(|v| str_at(v, "configMap.name")) else {
        r.problem(format!("{ctx}: the config path {path} is not mounted from a ConfigMap"));
        return None;
    };
    let key = item_key(volume.and_then(|v| at(v, "configMap")), &key);
    let Some(cm) = m.find("ConfigMap", cm_name) else {
        r.problem(format!("{ctx}: ConfigMap {cm_name} is not among the manifests"));
        return None;
    };
    match at(cm, "data").and_then(|d| d.get(&key)).and_then(Value::as_str) {
        Some(text) => Some(text.to_string()),
        None => {
            r.problem(format!("{ctx}: ConfigMap {cm_name} has no key {key}"));
            None
        }
    }
}

/// A signing-secret file must come from a Secret volume mounted as a directory (subPath mounts
/// are never updated, which would defeat rotation), with the key present in the Secret.
fn check_secret_file(m: &Manifests, pod: &Value, c: &Value, file: &str, ctx: &str, r: &mut Report) {
    let Some((mount, key)) = mount_for(c, file) else {
        r.problem(format!("{ctx}: nothing is mounted at {file}"));
        return;
    };
    if mount.get("subPath").is_some() {
        r.problem(format!(
            "{ctx}: {file} is mounted with subPath, so Kubernetes never updates it; mount the Secret as a directory"
        ));
    }
    let volume = volume(pod, str_at(mount, "name").unwrap_or(""));
    let Some(secret_name) = volume.and_then(|v| str_at(v, "secret.secretName")) else {
        r.problem(format!("{ctx}: {file} is not mounted from a Secret volume"));
        return;
    };
    let key = item_key(volume.and_then(|v| at(v, "secret")), &key);
    // A Secret created outside these manifests (existingSecret) cannot be checked here.
    if let Some(secret) = m.find("Secret", secret_name) {
        let has = ["stringData", "data"]
            .iter()
            .any(|d| at(secret, d).and_then(|d| d.get(&key)).is_some());
        if !has {
            r.problem(format!("{ctx}: Secret {secret_name} has no key {key} for {file}"));
        }
    }
}

fn check_security(ctx: &str, pod: &Value, c: &Value, r: &mut Report) {
    let container_or_pod =
        |key: &str| at(c, &format!("securityContext.{key}")).or_else(|| at(pod, &format!("securityContext.{key}")));
    if container_or_pod("runAsNonRoot") != Some(&json!(true)) {
        r.problem(format!("{ctx}: securityContext.runAsNonRoot must be true"));
    }
    if container_or_pod("runAsUser").and_then(u64_of) == Some(0) {
        r.problem(format!("{ctx}: runs as uid 0"));
    }
    if at(c, "securityContext.readOnlyRootFilesystem") != Some(&json!(true)) {
        r.problem(format!("{ctx}: securityContext.readOnlyRootFilesystem must be true"));
    }
    if at(c, "securityContext.allowPrivilegeEscalation") != Some(&json!(false)) {
        r.problem(format!("{ctx}: securityContext.allowPrivilegeEscalation must be false"));
    }
    if at(c, "securityContext.privileged") == Some(&json!(true)) {
        r.problem(format!("{ctx}: must not be privileged"));
    }
    if !list_at(c, "securityContext.capabilities.drop").contains(&json!("ALL")) {
        r.problem(format!("{ctx}: securityContext.capabilities.drop must contain ALL"));
    }
    if !list_at(c, "securityContext.capabilities.add").is_empty() {
        r.problem(format!("{ctx}: adds capabilities; hookbridge needs none"));
    }
    if container_or_pod("seccompProfile.type").and_then(Value::as_str) != Some("RuntimeDefault") {
        r.problem(format!("{ctx}: seccompProfile.type must be RuntimeDefault"));
    }
    let requests = at(c, "resources.requests");
    if requests.and_then(|q| q.get("memory")).is_none() || requests.and_then(|q| q.get("cpu")).is_none() {
        r.problem(format!("{ctx}: resources.requests must set cpu and memory"));
    }
    if at(c, "resources.limits.memory").is_none() {
        r.problem(format!("{ctx}: resources.limits.memory must be set"));
    }
}

/// Two or more replicas (or an HPA with minReplicas >= 2 that targets this Deployment).
fn check_replicas(m: &Manifests, d: &Value, name: &str, r: &mut Report) {
    let hpa = m.of_kind("HorizontalPodAutoscaler").find(|h| {
        str_at(h, "spec.scaleTargetRef.kind") == Some("Deployment")
            && str_at(h, "spec.scaleTargetRef.name") == Some(name)
    });
    let replicas = match hpa {
        Some(h) => at(h, "spec.minReplicas").and_then(u64_of).unwrap_or(1),
        None => at(d, "spec.replicas").and_then(u64_of).unwrap_or(1),
    };
    if replicas < 2 {
        r.problem(format!("Deployment {name}: {replicas} replica(s); run two or more"));
    }
    for h in m.of_kind("HorizontalPodAutoscaler") {
        let target = str_at(h, "spec.scaleTargetRef.name").unwrap_or("");
        if m.find("Deployment", target).is_none() {
            r.problem(format!(
                "HPA {:?} targets a missing Deployment {target}",
                str_at(h, "metadata.name")
            ));
        }
    }
}

/// Services selecting the pods resolve their target ports; the Ingress reaches the webhook
/// port through a Service, on an endpoint path of the config.
fn check_services(m: &Manifests, name: &str, pod: &Value, labels: &Value, r: &mut Report) {
    let containers = list_at(pod, "containers");
    for svc in m.of_kind("Service") {
        let svc_name = str_at(svc, "metadata.name").unwrap_or("?");
        let Some(selector) = at(svc, "spec.selector") else {
            continue;
        };
        if !labels_match(selector, labels) {
            continue;
        }
        let (webhook, admin) = pod_ports(pod);
        let mut targets = Vec::new();
        for port in list_at(svc, "spec.ports") {
            let target = port.get("targetPort").or_else(|| port.get("port")).unwrap();
            match resolve_port(containers, target) {
                None => r.problem(format!(
                    "Service {svc_name}: targetPort {target} is not a port of Deployment {name}"
                )),
                Some(p) => targets.push(p),
            }
        }
        let exposes_admin = admin.is_some_and(|a| targets.contains(&a));
        if exposes_admin && webhook.is_some_and(|w| targets.contains(&w)) {
            r.problem(format!(
                "Service {svc_name}: serves both the webhook and the admin port; the admin port needs its own ClusterIP Service"
            ));
        }
        let svc_type = str_at(svc, "spec.type").unwrap_or("ClusterIP");
        if exposes_admin && svc_type != "ClusterIP" {
            r.problem(format!(
                "Service {svc_name}: exposes the admin port through a {svc_type} Service"
            ));
        }
    }
    for ing in m.of_kind("Ingress") {
        let ing_name = str_at(ing, "metadata.name").unwrap_or("?");
        for rule in list_at(ing, "spec.rules") {
            for p in list_at(rule, "http.paths") {
                let svc_name = str_at(p, "backend.service.name").unwrap_or("");
                let Some(svc) = m.find("Service", svc_name) else {
                    r.problem(format!("Ingress {ing_name}: backend Service {svc_name} is missing"));
                    continue;
                };
                let wanted = at(p, "backend.service.port.name")
                    .or_else(|| at(p, "backend.service.port.number"))
                    .cloned()
                    .unwrap_or(Value::Null);
                let Some(svc_port) = list_at(svc, "spec.ports")
                    .iter()
                    .find(|sp| sp.get("name") == Some(&wanted) || sp.get("port") == Some(&wanted))
                else {
                    r.problem(format!("Ingress {ing_name}: Service {svc_name} has no port {wanted}"));
                    continue;
                };
                let selects_these = at(svc, "spec.selector").is_some_and(|s| labels_match(s, labels));
                if !selects_these {
                    continue;
                }
                let target = svc_port.get("targetPort").or_else(|| svc_port.get("port")).unwrap();
                let webhook = containers
                    .iter()
                    .filter(|c| is_hookbridge(c))
                    .find_map(|c| named_port(c, "webhook"));
                if resolve_port(containers, target) != webhook {
                    r.problem(format!(
                        "Ingress {ing_name}: routes to container port {:?}, not hookbridge's webhook port {webhook:?}",
                        resolve_port(containers, target)
                    ));
                }
                if at(ing, "spec.tls").and_then(Value::as_array).is_none_or(Vec::is_empty) {
                    r.problem(format!("Ingress {ing_name}: no TLS"));
                }
                let path = str_at(p, "path").unwrap_or("");
                if !endpoint_paths(m).contains(&path.to_string()) {
                    r.problem(format!(
                        "Ingress {ing_name}: path {path} is not an endpoint path of hookbridge's config"
                    ));
                }
            }
        }
    }
}

/// PodDisruptionBudgets and NetworkPolicies select these pods and name real ports.
fn check_policies(m: &Manifests, name: &str, pod: &Value, labels: &Value, r: &mut Report) {
    for pdb in m.of_kind("PodDisruptionBudget") {
        let selector = at(pdb, "spec.selector.matchLabels").cloned().unwrap_or(json!({}));
        if !labels_match(&selector, labels) {
            r.problem(format!(
                "PodDisruptionBudget {:?} does not select Deployment {name}'s pods",
                str_at(pdb, "metadata.name")
            ));
        }
    }
    for np in m.of_kind("NetworkPolicy") {
        let selector = at(np, "spec.podSelector.matchLabels").cloned().unwrap_or(json!({}));
        if !labels_match(&selector, labels) {
            r.problem(format!(
                "NetworkPolicy {:?} does not select Deployment {name}'s pods",
                str_at(np, "metadata.name")
            ));
            continue;
        }
        // Ingress rules name the pods' ports; a misspelt name silently opens nothing.
        for rule in list_at(np, "spec.ingress") {
            for port in list_at(rule, "ports") {
                let Some(p) = port.get("port") else { continue };
                if resolve_port(list_at(pod, "containers"), p).is_none() {
                    r.problem(format!(
                        "NetworkPolicy {:?}: port {p} is not a port of Deployment {name}",
                        str_at(np, "metadata.name")
                    ));
                }
            }
        }
    }
}

fn endpoint_paths(m: &Manifests) -> Vec<String> {
    m.of_kind("ConfigMap")
        .flat_map(|cm| {
            at(cm, "data")
                .and_then(Value::as_object)
                .into_iter()
                .flat_map(|d| d.values())
        })
        .filter_map(Value::as_str)
        .filter_map(|text| Figment::from(Yaml::string(text)).extract::<Value>().ok())
        .flat_map(|cfg| {
            list_at(&cfg, "endpoints")
                .iter()
                .filter_map(|e| str_at(e, "path").map(str::to_string))
                .collect::<Vec<_>>()
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// Small helpers

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| s.iter().all(|(k, v)| labels.get(k) == Some(v)))
}

/// The volume mount that holds `path`, and the path relative to it.
fn mount_for<'a>(c: &'a Value, path: &str) -> Option<(&'a Value, String)> {
    list_at(c, "volumeMounts")
        .iter()
        .filter_map(|m| {
            let dir = str_at(m, "mountPath")?;
            if m.get("subPath").is_some() {
                return (dir == path).then(|| (m, str_at(m, "subPath").unwrap().to_string()));
            }
            let rest = path.strip_prefix(dir.trim_end_matches('/'))?.strip_prefix('/')?;
            Some((m, rest.to_string()))
        })
        .max_by_key(|(m, _)| str_at(m, "mountPath").map_or(0, str::len))
}

fn volume<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    list_at(pod, "volumes").iter().find(|v| str_at(v, "name") == Some(name))
}

/// The ConfigMap/Secret key behind a file name, honouring a volume's `items` remapping.
fn item_key(source: Option<&Value>, file: &str) -> String {
    source
        .map(|s| list_at(s, "items"))
        .unwrap_or(&[])
        .iter()
        .find(|i| str_at(i, "path") == Some(file))
        .and_then(|i| str_at(i, "key"))
        .unwrap_or(file)
        .to_string()
}

fn named_port(c: &Value, name: &str) -> Option<u16> {
    list_at(c, "ports")
        .iter()
        .find(|p| str_at(p, "name") == Some(name))
        .and_then(|p| at(p, "containerPort"))
        .and_then(u64_of)
        .and_then(|p| u16::try_from(p).ok())
}

/// A port given by number or by a container port's name.
fn resolve_port(containers: &[Value], port: &Value) -> Option<u16> {
    if let Some(n) = port.as_u64() {
        let n = u16::try_from(n).ok()?;
        return containers
            .iter()
            .any(|c| {
                list_at(c, "ports")
                    .iter()
                    .any(|p| at(p, "containerPort").and_then(u64_of) == Some(n.into()))
            })
            .then_some(n);
    }
    let name = port.as_str()?;
    containers.iter().find_map(|c| named_port(c, name))
}

/// `IP:PORT` or `[IPv6]:PORT` into the host (without brackets) and the port.
fn split_addr(addr: &str) -> Option<(String, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    Some((host.trim_matches(['[', ']']).to_string(), port.parse().ok()?))
}

fn parse_duration(text: &str) -> Option<Duration> {
    text.trim()
        .parse::<u64>()
        .map(Duration::from_secs)
        .ok()
        .or_else(|| humantime::parse_duration(text.trim()).ok())
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The container's env entries with a literal `value` (valueFrom cannot be resolved here).
fn literal_env(c: &Value) -> BTreeMap<String, String> {
    list_at(c, "env")
        .iter()
        .filter_map(|e| Some((str_at(e, "name")?.to_string(), str_at(e, "value")?.to_string())))
        .collect()
}

// ------------------------------------------------------------------------------------------
// hookbridge check-config

/// Points every `{file: PATH}` secret source (endpoint secrets, a sink's `secret_options`) at a
/// placeholder file under `dir`.
fn placeholder_files(v: &mut Value, dir: &Path, n: &mut usize) {
    match v {
        Value::Object(map) => {
            if let Some(file) = map.get_mut("file").filter(|f| f.is_string()) {
                *n += 1;
                let local = dir.join(format!("secret-{n}"));
                std::fs::write(&local, "whsec_deploy_test_placeholder\n").unwrap();
                *file = json!(local.to_str().unwrap());
            }
            for child in map.values_mut() {
                placeholder_files(child, dir, n);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|c| placeholder_files(c, dir, n)),
        _ => {}
    }
}

/// Runs the built `hookbridge check-config` on a config taken from a ConfigMap.
///
/// The config names its signing secrets (and a sink's `secret_options` files) by their paths
/// inside the pod (`/var/run/secrets/stripe/current`), which do not exist here, and check-config
/// reads every secret. Env overrides cannot help: figment's `HOOKBRIDGE__` keys cannot address an element
/// of the `endpoints[].secrets[]` lists. So the test writes a placeholder secret into a temp
/// file for each such path and points the config's `file:` entries there, changing nothing
/// else: it edits the parsed config (not the text, so no other string can be hit by accident)
/// and writes it back as JSON, which is YAML too. The container's literal `HOOKBRIDGE__` env
/// overrides are passed through, so a misspelt override key fails here as it would in the pod;
/// the test's own `HOOKBRIDGE*` variables are removed.
fn check_config(config: &Value, env: &BTreeMap<String, String>) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config.clone();
    let mut n = 0;
    placeholder_files(&mut config, dir.path(), &mut n);
    let path = dir.path().join("hookbridge.yaml");
    std::fs::write(&path, serde_json::to_string_pretty(&config).unwrap()).unwrap();

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookbridge"));
    cmd.arg("check-config").arg("--config").arg(&path);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("HOOKBRIDGE") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env.iter().filter(|(k, _)| k.starts_with("HOOKBRIDGE__")) {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

// ------------------------------------------------------------------------------------------
// Tests

#[test]
fn helm_lint_passes() {
    for values in all_ci_values() {
        let out = run_helm(&[
            "lint",
            "--strict",
            "--kube-version",
            KUBE_VERSION,
            chart().to_str().unwrap(),
            "-f",
            values.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "helm lint -f {} failed:\n{}{}",
            values.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every ci/*-values.yaml (one per sink kind) renders a consistent chart whose config passes
/// `hookbridge check-config`, with the Ingress on as well.
#[test]
fn every_ci_values_file_renders_a_consistent_chart() {
    for values in all_ci_values() {
        let values = values.to_str().unwrap();
        for sets in [&[][..], &["ingress.enabled=true"][..]] {
            let m = render(values, sets);
            let kinds: Vec<&str> = m.docs.iter().filter_map(|d| str_at(d, "kind")).collect();
            for kind in ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"] {
                assert!(kinds.contains(&kind), "{}: no {kind} rendered: {kinds:?}", m.origin);
            }
            check(&m).assert_clean(&m, 1);
        }
    }
    // Between them, the files exercise every sink kind and every optional resource.
    let all = all_ci_values()
        .iter()
        .map(|v| std::fs::read_to_string(v).unwrap())
        .collect::<String>();
    for kind in ["kind: kafka", "kind: rabbitmq", "kind: nats", "kind: file"] {
        assert!(all.contains(kind), "no ci values file has a sink of {kind}");
    }
    let fanout = render(&ci_values("fanout-values.yaml"), &[]);
    let kinds: Vec<&str> = fanout.docs.iter().filter_map(|d| str_at(d, "kind")).collect();
    for kind in [
        "ServiceAccount",
        "Secret",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "HTTPRoute",
        "ServiceMonitor",
        "PrometheusRule",
    ] {
        assert!(kinds.contains(&kind), "fanout-values.yaml renders no {kind}: {kinds:?}");
    }
}

/// `sinks` and `routes` given by the user replace the chart's as a whole: a RabbitMQ-only
/// install has exactly the RabbitMQ sink, and no env override recreates another.
#[test]
fn user_sinks_and_routes_replace_the_defaults() {
    let m = render(&ci_values("rabbitmq-values.yaml"), &[]);
    let config = first_config(&m);
    let sinks: Vec<&String> = config["sinks"].as_object().unwrap().keys().collect();
    assert_eq!(sinks, ["amqp"], "{config:#}");
    assert_eq!(config["routes"].as_array().unwrap().len(), 2);
    let d = m.of_kind("Deployment").next().unwrap();
    let env = serde_json::to_string(&list_at(d, "spec.template.spec.containers")[0]["env"]).unwrap();
    assert!(
        !env.contains("SINKS__EVENTS"),
        "an env override names another sink: {env}"
    );
}

#[test]
fn chart_with_an_existing_secret_mounts_it_and_creates_none() {
    let m = render(&ci_values("kafka-values.yaml"), &[]);
    assert!(m.of_kind("Secret").next().is_none(), "a Secret was rendered");
    let d = m.of_kind("Deployment").next().unwrap();
    let names: Vec<_> = list_at(d, "spec.template.spec.volumes")
        .iter()
        .filter_map(|v| str_at(v, "secret.secretName"))
        .collect();
    assert_eq!(names, ["stripe-signing", "kafka-credentials"]);
    check(&m).assert_clean(&m, 1);
}

#[test]
fn chart_takes_container_ports_from_the_config() {
    let m = render(
        &ci_values("rabbitmq-values.yaml"),
        &[
            "config.listen=0.0.0.0:8443",
            "config.admin_listen=0.0.0.0:9443",
            "ingress.enabled=true",
            "autoscaling.enabled=false",
        ],
    );
    let d = m.of_kind("Deployment").next().unwrap();
    let c = &list_at(d, "spec.template.spec.containers")[0];
    assert_eq!(named_port(c, "webhook"), Some(8443));
    assert_eq!(named_port(c, "admin"), Some(9443));
    assert_eq!(at(d, "spec.replicas").and_then(u64_of), Some(2));
    check(&m).assert_clean(&m, 1);
}

#[test]
fn chart_refuses_what_would_only_fail_in_the_cluster() {
    let rabbit = ci_values("rabbitmq-values.yaml");
    let e = render_error(&rabbit, &["config.admin_listen=127.0.0.1:9090"]);
    assert!(e.contains("admin_listen"), "{e}");
    let e = render_error(&rabbit, &["terminationGracePeriodSeconds=16"]);
    assert!(e.contains("terminationGracePeriodSeconds"), "{e}");
    // No secret at all: one message naming both ways to give one. Never a placeholder.
    let e = render_error(&rabbit, &["secrets.current="]);
    assert!(
        e.contains("secrets.existingSecret") && e.contains("secrets.current"),
        "{e}"
    );
    let e = render_error("", &[]);
    assert!(
        e.contains("secrets.existingSecret") && e.contains("secrets.current"),
        "{e}"
    );
    // No sinks or routes.
    let e = render_error("", &["secrets.current=whsec_x"]);
    assert!(e.contains("sinks and routes are required"), "{e}");
    let e = render_error(&rabbit, &["routes=[]"]);
    assert!(e.contains("sinks and routes are required"), "{e}");
    let e = render_error(&rabbit, &[r#"config={"sinks":{"x":{"kind":"file","path":"-"}}}"#]);
    assert!(e.contains("config.sinks"), "{e}");
    // values.schema.json: an unknown or mistyped key fails with its name.
    let e = render_error(&rabbit, &["replicaCoutn=3"]);
    assert!(e.contains("replicaCoutn"), "{e}");
    let e = render_error(&rabbit, &["service.tpye=LoadBalancer"]);
    assert!(e.contains("tpye"), "{e}");
    let e = render_error(&rabbit, &["replicaCount=two"]);
    assert!(e.contains("replicaCount"), "{e}");
    // kubeVersion: the preStop sleep action needs Kubernetes 1.30.
    let mut args = template_args(&rabbit, &[]);
    let v = args.iter().position(|a| a == KUBE_VERSION).unwrap();
    args[v] = "1.29.9".into();
    let out = run_helm(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(!out.status.success(), "the chart installed on Kubernetes 1.29");
    assert!(String::from_utf8_lossy(&out.stderr).contains("kubeVersion"));
}

/// The admin port has its own ClusterIP Service, whatever the webhook Service's type.
#[test]
fn the_admin_port_is_never_exposed_with_the_webhook() {
    let m = render(
        &ci_values("rabbitmq-values.yaml"),
        &["service.type=LoadBalancer", "service.externalTrafficPolicy=Local"],
    );
    let webhook = m.find("Service", "hb-hookbridge").unwrap();
    assert_eq!(str_at(webhook, "spec.type"), Some("LoadBalancer"));
    let ports: Vec<_> = list_at(webhook, "spec.ports")
        .iter()
        .filter_map(|p| str_at(p, "name"))
        .collect();
    assert_eq!(ports, ["webhook"]);
    let metrics = m.find("Service", "hb-hookbridge-metrics").unwrap();
    assert_eq!(str_at(metrics, "spec.type"), Some("ClusterIP"));
    check(&m).assert_clean(&m, 1);
}

/// A single replica can still be drained.
#[test]
fn the_disruption_budget_never_blocks_a_drain() {
    let m = render(
        &ci_values("file-values.yaml"),
        &["replicaCount=1", "autoscaling.enabled=false"],
    );
    let r = check(&m);
    assert!(
        r.problems.iter().all(|p| !p.contains("PodDisruptionBudget")),
        "{:?}",
        r.problems
    );
    let plain = Manifests::read_dir(&repo().join("deploy/kubernetes/gateway"));
    let mut docs = plain.docs.clone();
    for d in &mut docs {
        if d["kind"] == "PodDisruptionBudget" {
            d["spec"] = json!({"minAvailable": 2, "selector": d["spec"]["selector"].clone()});
        }
    }
    check(&Manifests {
        origin: "mutated".into(),
        docs,
    })
    .assert_mentions("blocks every drain");
}

#[test]
fn config_change_rolls_the_pods() {
    let rabbit = ci_values("rabbitmq-values.yaml");
    let checksum = |m: &Manifests| {
        let d = m.of_kind("Deployment").next().unwrap();
        at(d, "spec.template.metadata.annotations")
            .and_then(|a| a.get("checksum/config"))
            .and_then(Value::as_str)
            .unwrap()
            .to_string()
    };
    let a = checksum(&render(&rabbit, &[]));
    let b = checksum(&render(&rabbit, &["config.ack_timeout=4s"]));
    let c = checksum(&render(&rabbit, &["secrets.current=whsec_other"]));
    assert_ne!(a, b, "a config change must change the pod template");
    assert_eq!(
        a, c,
        "a secret change must not roll the pods: hookbridge re-reads the files"
    );
}

#[test]
fn plain_gateway_manifests_are_consistent() {
    let dir = repo().join("deploy/kubernetes/gateway");
    check_kustomization(&dir);
    let m = Manifests::read_dir(&dir);
    check(&m).assert_clean(&m, 1);
    let d = m.of_kind("Deployment").next().unwrap();
    assert!(
        at(d, "spec.replicas").is_none(),
        "the HPA owns the replica count; a count in the Deployment resets it on every apply"
    );
    assert!(
        m.of_kind("Secret").next().is_none(),
        "an apply would overwrite the real Secret"
    );
}

#[test]
fn plain_sidecar_manifests_are_consistent() {
    let dir = repo().join("deploy/kubernetes/sidecar");
    check_kustomization(&dir);
    let m = Manifests::read_dir(&dir);
    check(&m).assert_clean(&m, 1);
}

/// The config text of the first ConfigMap.
fn first_config(m: &Manifests) -> Value {
    let cm = m.of_kind("ConfigMap").next().unwrap();
    let text = at(cm, "data")
        .and_then(|d| d.get("hookbridge.yaml"))
        .and_then(Value::as_str)
        .unwrap();
    Figment::from(Yaml::string(text)).extract().unwrap()
}

/// The chart's config defaults are the plain gateway's config, once given the same sinks and
/// routes.
#[test]
fn plain_and_chart_gateways_run_the_same_config() {
    let plain = first_config(&Manifests::read_dir(&repo().join("deploy/kubernetes/gateway")));
    let sinks = format!("sinks={}", plain["sinks"]);
    let routes = format!("routes={}", plain["routes"]);
    let chart = first_config(&render("", &["secrets.current=whsec_x", &sinks, &routes]));
    assert_eq!(
        plain, chart,
        "deploy/kubernetes/gateway and the chart's defaults differ"
    );
}

/// The kustomization lists exactly the manifest files beside it.
fn check_kustomization(dir: &Path) {
    let k: Value = Figment::from(Yaml::file(dir.join("kustomization.yaml")))
        .extract()
        .unwrap();
    let mut listed: Vec<String> = list_at(&k, "resources")
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    listed.sort();
    let files: Vec<String> = yaml_files(dir)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(listed, files, "{}: kustomization.yaml resources", dir.display());
}

/// The checks are not vacuous: breaking one thing at a time in the plain gateway is caught.
#[test]
fn the_checks_catch_each_kind_of_mistake() {
    let mut base = Manifests::read_dir(&repo().join("deploy/kubernetes/gateway"));
    // The signing-secret Secret as deployment.yaml tells the user to create it with kubectl.
    base.docs.push(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "hookbridge-stripe"},
        "data": {"current": "d2hzZWNfeA==", "previous": "d2hzZWNfeA=="}
    }));
    let mutated = |f: &dyn Fn(&mut Value)| -> Report {
        let mut docs = base.docs.clone();
        for d in &mut docs {
            f(d);
        }
        check(&Manifests {
            origin: "mutated".into(),
            docs,
        })
    };
    fn container(d: &mut Value) -> Option<&mut Value> {
        if d["kind"] != "Deployment" {
            return None;
        }
        d.pointer_mut("/spec/template/spec/containers/0")
    }
    let config_text = |d: &mut Value, from: &str, to: &str| {
        if d["kind"] == "ConfigMap" {
            let text = d["data"]["hookbridge.yaml"].as_str().unwrap().replace(from, to);
            d["data"]["hookbridge.yaml"] = json!(text);
        }
    };

    mutated(&|d| {
        if let Some(c) = container(d) {
            c["readinessProbe"]["httpGet"]["path"] = json!("/healthz");
        }
    })
    .assert_mentions("readinessProbe must GET /readyz");
    mutated(&|d| {
        if let Some(c) = container(d) {
            c["livenessProbe"]["httpGet"]["port"] = json!(8080);
        }
    })
    .assert_mentions("livenessProbe must target the admin port");
    mutated(&|d| {
        if let Some(c) = container(d) {
            c["ports"][0]["containerPort"] = json!(8000);
        }
    })
    .assert_mentions("containerPort `webhook` is 8000");
    mutated(&|d| config_text(d, "admin_listen: \"0.0.0.0:9090\"", "admin_listen: \"127.0.0.1:9090\""))
        .assert_mentions("must listen on 0.0.0.0");
    mutated(&|d| {
        if d["kind"] == "Deployment" {
            d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(15);
        }
    })
    .assert_mentions("terminationGracePeriodSeconds 15 must exceed");
    mutated(&|d| config_text(d, "ack_timeout: \"5s\"", "ack_timeout: \"25s\""))
        .assert_mentions("terminationGracePeriodSeconds 30 must exceed");
    mutated(&|d| {
        config_text(
            d,
            "- file: /var/run/secrets/stripe/previous",
            "- value: whsec_pasted_into_the_configmap",
        )
    })
    .assert_mentions("uses `value`");
    mutated(&|d| config_text(d, "/var/run/secrets/stripe/previous", "/var/run/secrets/stripe/older"))
        .assert_mentions("has no key older");
    mutated(&|d| {
        if let Some(c) = container(d) {
            c["volumeMounts"][1]["mountPath"] = json!("/var/run/secrets/stripe/current");
            c["volumeMounts"][1]["subPath"] = json!("current");
        }
    })
    .assert_mentions("mounted with subPath");
    mutated(&|d| {
        if let Some(c) = container(d) {
            c["securityContext"]["readOnlyRootFilesystem"] = json!(false);
            c["securityContext"]["capabilities"]["drop"] = json!(["NET_RAW"]);
        }
    })
    .assert_mentions("drop must contain ALL");
    mutated(&|d| {
        if let Some(c) = container(d) {
            c["lifecycle"]["preStop"] = json!({"exec": {"command": ["sleep", "10"]}});
        }
    })
    .assert_mentions("preStop uses exec");
    mutated(&|d| {
        if let Some(c) = container(d) {
            c["env"] = json!([{"name": "HOOKBRIDGE__SINKS__EVENT__BROKERS", "value": "kafka:9092"}]);
        }
    })
    .assert_mentions("check-config rejects");
    mutated(&|d| config_text(d, "max_body_bytes: 1048576", "max_body_bytes: 1048576\nno_such_key: 1"))
        .assert_mentions("check-config rejects");
    mutated(&|d| {
        if d["kind"] == "Ingress" {
            d["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"] =
                json!({"name": "hookbridge-metrics", "port": {"name": "admin"}});
        }
    })
    .assert_mentions("not hookbridge's webhook port");
    mutated(&|d| {
        if d["kind"] == "Service" && d["metadata"]["name"] == "hookbridge" {
            d["spec"]["type"] = json!("LoadBalancer");
            d["spec"]["ports"]
                .as_array_mut()
                .unwrap()
                .push(json!({"name": "admin", "port": 9090, "targetPort": "admin"}));
        }
    })
    .assert_mentions("serves both the webhook and the admin port");
    mutated(&|d| {
        if d["kind"] == "NetworkPolicy" {
            d["spec"]["ingress"][1]["ports"][0]["port"] = json!("metrics");
        }
    })
    .assert_mentions("port \"metrics\" is not a port");
}

// ------------------------------------------------------------------------------------------
// Validation against the Kubernetes OpenAPI schemas, offline

/// `kubernetes-validate` (PyPI) bundles the schemas of every Kubernetes release, so this runs
/// offline; deploy/tools/install.sh installs it into a venv under ~/.cache/hookbridge.
fn kubernetes_validate(file: &Path, version: Option<&str>) -> std::process::Output {
    let exe = tool(
        "kubernetes-validate",
        "HOOKBRIDGE_KUBERNETES_VALIDATE",
        "venv-kubernetes-validate/bin/kubernetes-validate",
    );
    let mut cmd = Command::new(exe);
    cmd.arg("--strict");
    if let Some(v) = version {
        cmd.args(["--kubernetes-version", v]);
    }
    cmd.arg(file).output().unwrap()
}

/// The oldest release the chart supports, and the newest whose schemas the validator has (its
/// default).
const SCHEMA_VERSIONS: [Option<&str>; 2] = [Some("1.30.0"), None];

fn assert_valid(file: &Path, what: &str) {
    for version in SCHEMA_VERSIONS {
        let out = kubernetes_validate(file, version);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && !text.contains("ERROR"),
            "{what} does not validate against Kubernetes {}:\n{text}",
            version.unwrap_or("(newest)")
        );
        assert!(text.contains("passed"), "{what}: nothing was validated:\n{text}");
    }
}

#[test]
fn manifests_validate_against_kubernetes_1_30_and_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    for values in all_ci_values() {
        for sets in [&[][..], &["ingress.enabled=true"][..]] {
            let args = template_args(values.to_str().unwrap(), sets);
            let out = run_helm(&args.iter().map(String::as_str).collect::<Vec<_>>());
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let file = dir.path().join("rendered.yaml");
            std::fs::write(&file, &out.stdout).unwrap();
            assert_valid(&file, &format!("helm template -f {} {sets:?}", values.display()));
        }
    }
    for sub in ["gateway", "sidecar"] {
        for file in yaml_files(&repo().join("deploy/kubernetes").join(sub)) {
            assert_valid(&file, &file.display().to_string());
        }
    }
    // Not vacuous: a misspelt field fails.
    let file = dir.path().join("broken.yaml");
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/gateway/service.yaml")).unwrap();
    std::fs::write(&file, text.replace("targetPort:", "targetPortt:")).unwrap();
    let out = kubernetes_validate(&file, Some("1.30.0"));
    assert!(!out.status.success(), "a misspelt field validated");
}

// ------------------------------------------------------------------------------------------
// Monitoring: alert rules, the dashboard, and the metrics a running bridge exports

fn promtool() -> PathBuf {
    tool("promtool", "HOOKBRIDGE_PROMTOOL", "bin/promtool")
}

fn run_promtool(args: &[&str]) -> String {
    let out = Command::new(promtool()).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

fn rules_file() -> PathBuf {
    repo().join("deploy/prometheus/hookbridge-rules.yaml")
}

fn dashboard_file() -> PathBuf {
    repo().join("deploy/grafana/hookbridge.json")
}

/// Every alert of the rules file.
fn alert_rules() -> Vec<Value> {
    let rules: Value = Figment::from(Yaml::file(rules_file())).extract().unwrap();
    list_at(&rules, "groups")
        .iter()
        .flat_map(|g| list_at(g, "rules").to_vec())
        .collect()
}

/// Every query of the dashboard's panels, with Grafana's variables replaced by what Prometheus
/// can parse.
fn dashboard_queries() -> Vec<String> {
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(dashboard_file()).unwrap()).unwrap();
    list_at(&dashboard, "panels")
        .iter()
        .flat_map(|p| list_at(p, "targets").to_vec())
        .filter_map(|t| str_at(&t, "expr").map(str::to_string))
        .map(|e| {
            e.replace("$__rate_interval", "5m")
                .replace("$namespace", ".*")
                .replace("$job", ".*")
        })
        .collect()
}

#[test]
fn alert_rules_pass_promtool_and_every_alert_has_a_unit_test() {
    let rules = rules_file();
    run_promtool(&["check", "rules", rules.to_str().unwrap()]);
    let tests = repo().join("deploy/prometheus/hookbridge-rules.test.yaml");
    run_promtool(&["test", "rules", tests.to_str().unwrap()]);
    let test_text = std::fs::read_to_string(&tests).unwrap();
    let alerts: Vec<String> = alert_rules()
        .iter()
        .filter_map(|r| str_at(r, "alert").map(str::to_string))
        .collect();
    for alert in [
        "HookbridgeSinkDown",
        "HookbridgeServerErrors",
        "HookbridgeSignatureMismatch",
        "HookbridgeSlowAnswers",
        "HookbridgeNoWebhooks",
    ] {
        assert!(alerts.contains(&alert.to_string()), "no alert {alert}: {alerts:?}");
    }
    for alert in &alerts {
        assert!(
            test_text.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - exp_labels"
            )),
            "alert {alert} has no unit test in which it fires"
        );
    }
}

/// The chart ships the plain rules file and dashboard unchanged.
#[test]
fn chart_ships_the_plain_rules_and_dashboard() {
    let m = render(&ci_values("fanout-values.yaml"), &[]);
    let rule = m.of_kind("PrometheusRule").next().unwrap();
    let plain: Value = Figment::from(Yaml::file(rules_file())).extract().unwrap();
    assert_eq!(
        rule["spec"],
        plain,
        "the PrometheusRule differs from {}",
        rules_file().display()
    );
    let cm = m.find("ConfigMap", "hb-hookbridge-dashboard").unwrap();
    assert_eq!(at(cm, "metadata.labels.grafana_dashboard"), Some(&json!("1")));
    let shipped: Value = serde_json::from_str(cm["data"]["hookbridge.json"].as_str().unwrap()).unwrap();
    let plain: Value = serde_json::from_str(&std::fs::read_to_string(dashboard_file()).unwrap()).unwrap();
    assert_eq!(shipped, plain);
}

/// The sample names a running hookbridge exports, from `/metrics` (each family's `# TYPE` line,
/// so that families without samples yet count too).
fn exported_names(exposition: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in exposition.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#') {
            if let Some(name) = line.split(['{', ' ']).next().filter(|n| !n.is_empty()) {
                names.push(name.to_string());
            }
        }
    }
    names
}

/// A plain HTTP/1.0 GET (the admin port), returning the body.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "GET {path}: {head}"
    );
    body.to_string()
}

/// Every metric an alert or a dashboard panel uses is one a running hookbridge exports, and
/// every expression parses (promtool). The same bridge shows `hookbridge_build_info` and its
/// start-up line.
#[test]
fn dashboards_and_alerts_use_only_exported_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = common::yaml(
        "sinks:\n  archive:\n    kind: file\n    path: \"events.jsonl\"\nroutes:\n  - match: \"*\"\n    to: [{ sink: archive, topic: \"t\" }]\n",
    )
    .replace("events.jsonl", dir.path().join("events.jsonl").to_str().unwrap());
    let mut served = common::serve_binary(dir.path(), &yaml);
    let stderr = served.child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("no `hookbridge started` line");
        if line.contains("hookbridge started") {
            break line;
        }
    };
    for part in [
        format!("version={}", env!("CARGO_PKG_VERSION")),
        format!("config={}", served.config.display()),
        format!("endpoints={}", common::PATH),
        "sinks=archive (file)".to_string(),
        format!("webhook=127.0.0.1:{}", served.webhook),
        format!("admin=127.0.0.1:{}", served.admin),
    ] {
        assert!(started.contains(&part), "the start-up line lacks {part:?}: {started}");
    }

    let exposition = http_get(served.admin, "/metrics");
    let build = exposition
        .lines()
        .find(|l| l.starts_with("hookbridge_build_info{"))
        .unwrap_or_else(|| panic!("no hookbridge_build_info:\n{exposition}"));
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))),
        "{build}"
    );
    assert!(build.contains("commit=\"") && !build.contains("commit=\"\""), "{build}");
    assert!(build.ends_with(" 1"), "{build}");

    let exported = exported_names(&exposition);
    let mut queries: Vec<String> = alert_rules()
        .iter()
        .filter_map(|r| str_at(r, "expr").map(str::to_string))
        .collect();
    let alert_count = queries.len();
    queries.extend(dashboard_queries());
    assert!(queries.len() >= alert_count + 10, "the dashboard has too few queries");
    let mut used = std::collections::BTreeSet::new();
    for q in &queries {
        let bytes = q.as_bytes();
        let mut i = 0;
        while let Some(pos) = q[i..].find("hookbridge_") {
            let start = i + pos;
            let end = start
                + q[start..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(q.len() - start);
            // A label value or an annotation is not a metric name.
            if start == 0 || !matches!(bytes[start - 1], b'"' | b'\'' | b'.') {
                used.insert(q[start..end].to_string());
            }
            i = end;
        }
    }
    assert!(used.len() >= 8, "too few metric names found: {used:?}");
    let missing: Vec<_> = used.iter().filter(|n| !exported.contains(n)).collect();
    assert!(
        missing.is_empty(),
        "used but not exported by hookbridge: {missing:?}\nexported: {exported:?}"
    );

    // Every dashboard query parses: promtool checks them as recording rules.
    let rules = json!({"groups": [{"name": "dashboard", "rules": dashboard_queries()
        .iter()
        .enumerate()
        .map(|(i, e)| json!({"record": format!("dashboard:query_{i}"), "expr": e}))
        .collect::<Vec<_>>()}]});
    let file = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&file, serde_json::to_string_pretty(&rules).unwrap()).unwrap();
    run_promtool(&["check", "rules", file.to_str().unwrap()]);
}

// ------------------------------------------------------------------------------------------
// The container image

/// deploy/runtime-libs.sh (what the Dockerfile copies into the runtime image) on a binary.
fn runtime_libs(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("bash")
        .arg(repo().join("deploy/runtime-libs.sh"))
        .arg(binary)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "runtime-libs.sh {} failed:\n{}",
        binary.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(PathBuf::from)
        .collect()
}

/// The Dockerfile's runtime stage gets exactly the libraries the binary links besides glibc:
/// it copies what deploy/runtime-libs.sh lists for the release binary, and the same script, run
/// here on the binary cargo built (and on target/release/hookbridge when one exists: the same
/// features link the same libraries), finds every library ldd names.
#[test]
fn the_image_gets_exactly_the_libraries_the_binary_links() {
    let dockerfile = std::fs::read_to_string(repo().join("deploy/Dockerfile")).unwrap();
    for needle in [
        "COPY deploy/runtime-libs.sh /usr/local/bin/runtime-libs",
        "libs=\"$(runtime-libs target/release/hookbridge)\"",
        "for lib in $libs; do cp -L --parents \"$lib\" /out/; done",
        "COPY --from=builder /out/ /",
    ] {
        assert!(dockerfile.contains(needle), "deploy/Dockerfile no longer has: {needle}");
    }
    let runtime = &dockerfile[dockerfile.find("AS runtime").unwrap()..];
    let copies: Vec<&str> = runtime.lines().filter(|l| l.starts_with("COPY")).collect();
    assert_eq!(
        copies,
        ["COPY --from=builder /out/ /"],
        "the runtime stage copies more than /out"
    );

    let mut binaries = vec![PathBuf::from(env!("CARGO_BIN_EXE_hookbridge"))];
    let release = repo().join("target/release/hookbridge");
    if release.is_file() {
        binaries.push(release);
    }
    for binary in binaries {
        let libs = runtime_libs(&binary);
        assert!(!libs.is_empty(), "{}: no library listed", binary.display());
        for lib in &libs {
            assert!(
                lib.is_absolute() && lib.exists(),
                "{}: {} does not exist",
                binary.display(),
                lib.display()
            );
        }
        let names: Vec<String> = libs
            .iter()
            .map(|l| l.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(
            !names.iter().any(|n| n.starts_with("libc.so")),
            "glibc itself listed: {names:?}"
        );
        // What ldd itself reports, read independently of the script.
        let ldd = Command::new("ldd").arg(&binary).output().unwrap();
        let ldd = String::from_utf8_lossy(&ldd.stdout);
        for soname in ["libssl.so", "libcrypto.so", "libz.so"] {
            if ldd.contains(soname) {
                assert!(
                    names.iter().any(|n| n.starts_with(soname)),
                    "{soname} linked but not copied: {names:?}"
                );
            }
        }
        let linked = ldd.lines().filter(|l| l.contains("=> /")).count();
        let glibc = ldd
            .lines()
            .filter(|l| l.contains("=> /"))
            .filter(|l| {
                let n = l.trim_start();
                [
                    "libc.so",
                    "libm.so",
                    "libdl.so",
                    "libpthread.so",
                    "librt.so",
                    "libresolv.so",
                    "ld-linux",
                ]
                .iter()
                .any(|g| n.starts_with(g))
            })
            .count();
        assert_eq!(
            libs.len(),
            linked - glibc,
            "{}: ldd says\n{ldd}\nscript says {names:?}",
            binary.display()
        );
    }
}

/// The release workflow publishes what the chart and the manifests point at: the image name of
/// values.yaml, tagged with the chart's appVersion (= Cargo.toml's version), built from the
/// Dockerfile; and the chart itself.
#[test]
fn the_release_workflow_publishes_what_the_manifests_use() {
    let workflow: Value = Figment::from(Yaml::file(repo().join(".github/workflows/release.yml")))
        .extract()
        .unwrap();
    let values: Value = Figment::from(Yaml::file(chart().join("values.yaml")))
        .extract()
        .unwrap();
    let chart_meta: Value = Figment::from(Yaml::file(chart().join("Chart.yaml"))).extract().unwrap();
    let image = str_at(&workflow, "env.IMAGE").unwrap();
    assert_eq!(Some(image), str_at(&values, "image.repository"));
    assert!(repo().join(str_at(&workflow, "env.DOCKERFILE").unwrap()).is_file());
    assert_eq!(repo().join(str_at(&workflow, "env.CHART").unwrap()), chart());
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(str_at(&chart_meta, "appVersion"), Some(version));
    assert_eq!(str_at(&chart_meta, "version"), Some(version));
    assert_eq!(str_at(&chart_meta, "kubeVersion"), Some(">=1.30.0-0"));
    let platforms = serde_json::to_string(&workflow["jobs"]["image"]).unwrap();
    for arch in ["amd64", "arm64"] {
        assert!(platforms.contains(arch), "the image job builds no {arch}");
    }
    for sub in ["gateway", "sidecar"] {
        let m = Manifests::read_dir(&repo().join("deploy/kubernetes").join(sub));
        for d in m.of_kind("Deployment") {
            for c in list_at(d, "spec.template.spec.containers")
                .iter()
                .filter(|c| is_hookbridge(c))
            {
                assert_eq!(str_at(c, "image"), Some(format!("{image}:{version}").as_str()));
            }
        }
    }
}

/// docs/deployment.md's allow-list example (Stripe's webhook addresses, behind a trusted proxy)
/// is a config hookbridge accepts.
#[test]
fn the_stripe_allow_list_example_in_the_docs_is_valid() {
    let doc = std::fs::read_to_string(repo().join("docs/deployment.md")).unwrap();
    let blocks: Vec<&str> = doc
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("\n```").next())
        .filter(|b| b.contains("allow_networks:"))
        .collect();
    assert_eq!(blocks.len(), 1, "expected one allow-list example in docs/deployment.md");
    let config: Value = Figment::from(Yaml::string(blocks[0])).extract().unwrap();
    let networks = list_at(&config, "http.allow_networks");
    assert!(networks.len() >= 10, "{networks:?}");
    assert_eq!(str_at(&config, "http.client_ip_header"), Some("x-forwarded-for"));
    assert!(!list_at(&config, "http.trusted_proxies").is_empty());
    check_config(&config, &BTreeMap::new()).unwrap_or_else(|e| panic!("check-config: {e}"));
    // Not vacuous: check-config reads the list (a bad entry fails it).
    let mut bad = config.clone();
    bad["http"]["allow_networks"][0] = json!("3.18.12.630/32");
    let e = check_config(&bad, &BTreeMap::new()).unwrap_err();
    assert!(e.contains("allow_networks"), "{e}");
}

/// Every value of values.yaml is in the chart README's table and typed in values.schema.json
/// (which rejects unknown keys at the top and in every chart-owned object).
#[test]
fn every_value_is_documented_and_typed() {
    let values: Value = Figment::from(Yaml::file(chart().join("values.yaml")))
        .extract()
        .unwrap();
    let readme = std::fs::read_to_string(chart().join("README.md")).unwrap();
    let schema: Value =
        serde_json::from_str(&std::fs::read_to_string(chart().join("values.schema.json")).unwrap()).unwrap();
    assert_eq!(schema["additionalProperties"], json!(false));
    // Objects whose keys are the user's (maps of labels, Kubernetes objects, hookbridge's config).
    let free = [
        "config",
        "sinks",
        "podAnnotations",
        "podLabels",
        "nodeSelector",
        "affinity",
        "resources",
        "podSecurityContext",
        "securityContext",
        "annotations",
        "labels",
        "probes",
    ];
    fn walk(v: &Value, path: String, free: &[&str], out: &mut Vec<String>) {
        let last = path.rsplit('.').next().unwrap_or("");
        match v.as_object() {
            Some(map) if !map.is_empty() && !free.contains(&last) => {
                for (k, child) in map {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(child, p, free, out);
                }
            }
            _ => out.push(path),
        }
    }
    let mut paths = Vec::new();
    walk(&values, String::new(), &free, &mut paths);
    for path in &paths {
        assert!(
            readme.contains(&format!("`{path}")),
            "value {path} is not in the README's table"
        );
        let mut s = &schema;
        for key in path.split('.') {
            s = &s["properties"][key];
            assert!(!s.is_null(), "value {path} is not in values.schema.json");
        }
    }
}
