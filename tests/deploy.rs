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
//! - Services, the Ingress, the PDB, the HPA and the NetworkPolicy point at these pods and ports.
//!
//! Helm is required: it is found at `$HOOKBRIDGE_HELM`, then
//! `${HOOKBRIDGE_CACHE:-~/.cache/hookbridge}/bin/helm` (where `deploy/helm/install-helm.sh` puts
//! it), then on `PATH`. A missing helm fails the tests; they are never skipped.
#![allow(clippy::unwrap_used)]

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

/// The helm binary. Panics (the test fails) when there is none: these checks are part of CI.
fn helm() -> PathBuf {
    if let Some(p) = std::env::var_os("HOOKBRIDGE_HELM").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "HOOKBRIDGE_HELM={} is not a file", p.display());
        return p;
    }
    let cache = std::env::var_os("HOOKBRIDGE_CACHE")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/hookbridge")));
    if let Some(p) = cache.map(|c| c.join("bin/helm")).filter(|p| p.is_file()) {
        return p;
    }
    if let Some(p) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("helm"))
        .find(|p| p.is_file())
    {
        return p;
    }
    panic!(
        "helm is not installed: run `bash deploy/helm/install-helm.sh` (it builds helm into \
         ~/.cache/hookbridge/bin), or point HOOKBRIDGE_HELM at a helm v3 binary"
    );
}

fn run_helm(args: &[&str]) -> std::process::Output {
    Command::new(helm())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run helm: {e}"))
}

/// `helm template` of the chart with `--set` overrides; panics with helm's message on failure.
fn render(sets: &[&str]) -> Manifests {
    let chart = chart();
    let mut args = vec!["template", "hb", chart.to_str().unwrap()];
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = run_helm(&args);
    assert!(
        out.status.success(),
        "helm template {sets:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Manifests::parse(
        &format!("helm template {sets:?}"),
        &String::from_utf8(out.stdout).unwrap(),
    )
}

/// `helm template` that must fail, returning helm's message.
fn render_error(sets: &[&str]) -> String {
    let chart = chart();
    let mut args = vec!["template", "hb", chart.to_str().unwrap()];
    for s in sets {
        args.extend(["--set", s]);
    }
    let out = run_helm(&args);
    assert!(!out.status.success(), "helm template {sets:?} should have failed");
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
    }
    r
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
        for port in list_at(svc, "spec.ports") {
            let target = port.get("targetPort").or_else(|| port.get("port")).unwrap();
            if resolve_port(containers, target).is_none() {
                r.problem(format!(
                    "Service {svc_name}: targetPort {target} is not a port of Deployment {name}"
                ));
            }
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

/// Runs the built `hookbridge check-config` on a config taken from a ConfigMap.
///
/// The config names its signing secrets by their paths inside the pod
/// (`/var/run/secrets/stripe/current`), which do not exist here, and check-config reads every
/// secret. Env overrides cannot help: figment's `HOOKBRIDGE__` keys cannot address an element
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
    if let Some(endpoints) = config.get_mut("endpoints").and_then(Value::as_array_mut) {
        for ep in endpoints {
            if let Some(secrets) = ep.get_mut("secrets").and_then(Value::as_array_mut) {
                for s in secrets {
                    if let Some(file) = s.get_mut("file") {
                        n += 1;
                        let local = dir.path().join(format!("secret-{n}"));
                        std::fs::write(&local, "whsec_deploy_test_placeholder\n").unwrap();
                        *file = json!(local.to_str().unwrap());
                    }
                }
            }
        }
    }
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
    let out = run_helm(&["lint", "--strict", chart().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "helm lint failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn chart_defaults_with_ingress_and_network_policy_are_consistent() {
    let m = render(&["ingress.enabled=true", "networkPolicy.enabled=true"]);
    let kinds: Vec<&str> = m.docs.iter().filter_map(|d| str_at(d, "kind")).collect();
    for kind in [
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "Ingress",
        "NetworkPolicy",
    ] {
        assert!(kinds.contains(&kind), "{}: no {kind} rendered: {kinds:?}", m.origin);
    }
    check(&m).assert_clean(&m, 1);
}

#[test]
fn chart_with_an_existing_secret_mounts_it_and_creates_none() {
    let m = render(&["secrets.existingSecret=stripe-signing"]);
    assert!(m.of_kind("Secret").next().is_none(), "a Secret was rendered");
    let d = m.of_kind("Deployment").next().unwrap();
    let names: Vec<_> = list_at(d, "spec.template.spec.volumes")
        .iter()
        .filter_map(|v| str_at(v, "secret.secretName"))
        .collect();
    assert_eq!(names, ["stripe-signing"]);
    check(&m).assert_clean(&m, 1);
}

#[test]
fn chart_takes_container_ports_from_the_config() {
    let m = render(&[
        "config.listen=0.0.0.0:8443",
        "config.admin_listen=0.0.0.0:9443",
        "ingress.enabled=true",
        "autoscaling.enabled=false",
    ]);
    let d = m.of_kind("Deployment").next().unwrap();
    let c = &list_at(d, "spec.template.spec.containers")[0];
    assert_eq!(named_port(c, "webhook"), Some(8443));
    assert_eq!(named_port(c, "admin"), Some(9443));
    assert_eq!(at(d, "spec.replicas").and_then(u64_of), Some(2));
    check(&m).assert_clean(&m, 1);
}

#[test]
fn chart_refuses_a_loopback_admin_port_and_a_short_grace_period() {
    let e = render_error(&["config.admin_listen=127.0.0.1:9090"]);
    assert!(e.contains("admin_listen"), "{e}");
    let e = render_error(&["terminationGracePeriodSeconds=16"]);
    assert!(e.contains("terminationGracePeriodSeconds"), "{e}");
    let e = render_error(&["secrets.current="]);
    assert!(e.contains("secrets.current"), "{e}");
}

#[test]
fn config_change_rolls_the_pods() {
    let checksum = |m: &Manifests| {
        let d = m.of_kind("Deployment").next().unwrap();
        at(d, "spec.template.metadata.annotations")
            .and_then(|a| a.get("checksum/config"))
            .and_then(Value::as_str)
            .unwrap()
            .to_string()
    };
    let a = checksum(&render(&[]));
    let b = checksum(&render(&["config.ack_timeout=4s"]));
    let c = checksum(&render(&["secrets.current=whsec_other"]));
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
}

#[test]
fn plain_sidecar_manifests_are_consistent() {
    let dir = repo().join("deploy/kubernetes/sidecar");
    check_kustomization(&dir);
    let m = Manifests::read_dir(&dir);
    check(&m).assert_clean(&m, 1);
}

#[test]
fn plain_and_chart_gateways_run_the_same_config() {
    let plain = Manifests::read_dir(&repo().join("deploy/kubernetes/gateway"));
    let chart = render(&[]);
    let config = |m: &Manifests| -> Value {
        let cm = m.of_kind("ConfigMap").next().unwrap();
        let text = at(cm, "data")
            .and_then(|d| d.get("hookbridge.yaml"))
            .and_then(Value::as_str)
            .unwrap();
        Figment::from(Yaml::string(text)).extract().unwrap()
    };
    assert_eq!(
        config(&plain),
        config(&chart),
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
    let base = Manifests::read_dir(&repo().join("deploy/kubernetes/gateway"));
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
            c["env"][0]["name"] = json!("HOOKBRIDGE__SINKS__EVENT__BROKERS");
        }
    })
    .assert_mentions("check-config rejects");
    mutated(&|d| config_text(d, "max_body_bytes: 1048576", "max_body_bytes: 1048576\nno_such_key: 1"))
        .assert_mentions("check-config rejects");
    mutated(&|d| {
        if d["kind"] == "Ingress" {
            d["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"] = json!({"name": "admin"});
        }
    })
    .assert_mentions("not hookbridge's webhook port");
    mutated(&|d| {
        if d["kind"] == "NetworkPolicy" {
            d["spec"]["ingress"][1]["ports"][0]["port"] = json!("metrics");
        }
    })
    .assert_mentions("port \"metrics\" is not a port");
}
