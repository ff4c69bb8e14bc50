//! The Kubernetes manifests under `deploy/k8s` keep what production relies on:
//! gRPC probes on the gRPC port, requests and limits, a locked-down security
//! context, secrets only by reference, IRSA, an HPA, PDB, NetworkPolicy and
//! Service that find the pods, and a `config.toml` the gateway accepts.
//!
//! The base is checked as written (plus the policies ConfigMap that
//! `deploy/policies` generates); each overlay as `kubectl kustomize` renders
//! it, when kubectl is installed. The `checks_notice_*` test breaks the base
//! in memory, one property at a time, and makes sure the checks say so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ecr_gateway::server::parts;
use serde::Deserialize as _;
use serde_json::{Value, json};

/// The gateway's gRPC port (`server.listen`, the container port, the Service).
const GRPC_PORT: i64 = 50051;
/// The distroless `nonroot` user.
const NONROOT_UID: i64 = 65532;
/// Where the gateway reads its configuration.
const CONFIG_PATH: &str = "/etc/ecr-gateway/config.toml";
/// The database URL's environment variable (config.rs: `ECR_GATEWAY__` + `DATABASE__URL`).
const DATABASE_URL_ENV: &str = "ECR_GATEWAY__DATABASE__URL";
/// The annotation IRSA reads.
const IRSA_ANNOTATION: &str = "eks.amazonaws.com/role-arn";
/// The overlays, each rendered and checked.
const OVERLAYS: &[&str] = &["dev", "prod"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn k8s_dir() -> PathBuf {
    repo().join("deploy/k8s")
}

fn policies_dir() -> PathBuf {
    repo().join("deploy/policies")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every document of a YAML stream, empty documents left out.
fn yaml_documents(text: &str, origin: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|document| Value::deserialize(document).unwrap_or_else(|e| panic!("{origin}: not YAML: {e}")))
        .filter(|value| !value.is_null())
        .collect()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn kustomization(dir: &Path) -> Value {
    let path = dir.join("kustomization.yaml");
    let mut documents = yaml_documents(&read(&path), &path.display().to_string());
    assert_eq!(documents.len(), 1, "{}: one document expected", path.display());
    documents.remove(0)
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|items| items.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The files a generator lists (`key=path` or `path`), as paths.
fn generator_files(generator: &Value) -> Vec<&str> {
    strings(&generator["files"])
        .into_iter()
        .map(|file| file.split_once('=').map_or(file, |(_, path)| path))
        .collect()
}

/// Every file or directory a kustomization names, with the field naming it.
fn kustomization_references(kustomization: &Value) -> Vec<(String, String)> {
    let mut references = Vec::new();
    for field in ["resources", "components", "patchesStrategicMerge"] {
        references.extend(
            strings(&kustomization[field])
                .into_iter()
                .map(|r| (field.to_owned(), r.to_owned())),
        );
    }
    for patch in kustomization["patches"].as_array().into_iter().flatten() {
        if let Some(path) = patch["path"].as_str() {
            references.push(("patches".into(), path.to_owned()));
        }
    }
    for field in ["configMapGenerator", "secretGenerator"] {
        for generator in kustomization[field].as_array().into_iter().flatten() {
            references.extend(
                generator_files(generator)
                    .into_iter()
                    .map(|f| (field.to_owned(), f.to_owned())),
            );
        }
    }
    references
}

/// The policies ConfigMap as `deploy/policies/kustomization.yaml` generates it
/// (without the content hash kustomize appends to its name).
fn generated_policies_config_map() -> Value {
    let dir = policies_dir();
    let generators = kustomization(&dir)["configMapGenerator"].clone();
    let generator = generators
        .as_array()
        .and_then(|g| g.first())
        .expect("deploy/policies/kustomization.yaml has a configMapGenerator");
    let mut data = serde_json::Map::new();
    for file in generator_files(generator) {
        let path = dir.join(file);
        let key = Path::new(file)
            .file_name()
            .expect("file name")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        data.insert(key, Value::String(text));
    }
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": generator["name"]},
        "data": data,
    })
}

/// The base's objects as written, plus the generated policies ConfigMap.
fn base_objects() -> Vec<Value> {
    let base = k8s_dir().join("base");
    let mut objects = Vec::new();
    for (field, reference) in kustomization_references(&kustomization(&base)) {
        let path = base.join(&reference);
        if field == "resources" && path.is_file() {
            objects.extend(yaml_documents(&read(&path), &path.display().to_string()));
        }
    }
    objects.push(generated_policies_config_map());
    objects
}

/// `kubectl kustomize DIR`; None (with a note) when kubectl is not installed.
fn render(dir: &Path) -> Option<Vec<Value>> {
    let output = match Command::new("kubectl").arg("kustomize").arg(dir).output() {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "note: kubectl is not on PATH; {} is not rendered (install kubectl to check the rendered overlay)",
                dir.display()
            );
            return None;
        }
        Err(error) => panic!("cannot run kubectl: {error}"),
    };
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("kubectl prints UTF-8");
    Some(yaml_documents(
        &text,
        &format!("kubectl kustomize {}", dir.display()),
    ))
}

// ---------------------------------------------------------------------------
// The checks: each returns what is wrong, in words that name the object and
// the field.

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or("")
}

fn labels(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|map| {
            map.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `match_labels` is non-empty and every pair is among `pod_labels`.
fn selects(match_labels: &Value, pod_labels: &BTreeMap<String, String>) -> bool {
    let wanted = labels(match_labels);
    !wanted.is_empty() && wanted.iter().all(|(k, v)| pod_labels.get(k) == Some(v))
}

/// What the checks need to know about the one Deployment.
struct Pod<'a> {
    deployment: &'a Value,
    spec: &'a Value,
    container: &'a Value,
    labels: BTreeMap<String, String>,
    grpc_port: Option<i64>,
}

impl<'a> Pod<'a> {
    fn find(objects: &'a [Value], problems: &mut Vec<String>) -> Option<Pod<'a>> {
        let deployments = of_kind(objects, "Deployment");
        let [deployment] = deployments.as_slice() else {
            problems.push(format!(
                "exactly one Deployment expected, found {}",
                deployments.len()
            ));
            return None;
        };
        let deployment: &Value = deployment;
        let spec = &deployment["spec"]["template"]["spec"];
        let containers = spec["containers"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let Some(container) = containers.iter().find(|c| c["name"] == "ecr-gateway") else {
            problems.push("Deployment: no container named ecr-gateway".into());
            return None;
        };
        let grpc_port = container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "grpc")
            .and_then(|p| p["containerPort"].as_i64());
        Some(Pod {
            deployment,
            spec,
            container,
            labels: labels(&deployment["spec"]["template"]["metadata"]["labels"]),
            grpc_port,
        })
    }
}

fn check_ports_and_probes(pod: &Pod, problems: &mut Vec<String>) {
    if pod.grpc_port != Some(GRPC_PORT) {
        problems.push(format!(
            "Deployment: the container's port named grpc must be {GRPC_PORT}, found {:?}",
            pod.grpc_port
        ));
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        let spec = &pod.container[probe];
        if spec.is_null() {
            problems.push(format!("Deployment: {probe} is missing"));
            continue;
        }
        if spec["grpc"]["port"].as_i64() != Some(GRPC_PORT) {
            problems.push(format!(
                "Deployment: {probe} must be a grpc probe on port {GRPC_PORT}, found {spec}"
            ));
        }
        let service = spec["grpc"]["service"].as_str().unwrap_or_default();
        let wanted = if probe == "livenessProbe" { "liveness" } else { "" };
        if service != wanted {
            problems.push(format!(
                "Deployment: {probe} must check the health service {wanted:?} (\"liveness\" never follows Postgres), found {service:?}"
            ));
        }
        for other in ["httpGet", "tcpSocket", "exec"] {
            if !spec[other].is_null() {
                problems.push(format!(
                    "Deployment: {probe} uses {other}; use the grpc health check"
                ));
            }
        }
    }
}

fn check_resources(pod: &Pod, problems: &mut Vec<String>) {
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            let value = &pod.container["resources"][kind][resource];
            if !(value.is_string() || value.is_number()) {
                problems.push(format!("Deployment: resources.{kind}.{resource} is not set"));
            }
        }
    }
}

fn check_security_context(pod: &Pod, problems: &mut Vec<String>) {
    let container = &pod.container["securityContext"];
    let pod_level = &pod.spec["securityContext"];
    // A container's setting wins over the pod's.
    let effective = |key: &str| {
        if container[key].is_null() {
            pod_level[key].clone()
        } else {
            container[key].clone()
        }
    };
    let expectations = [
        ("runAsNonRoot", effective("runAsNonRoot"), json!(true)),
        ("runAsUser", effective("runAsUser"), json!(NONROOT_UID)),
        (
            "seccompProfile.type",
            effective("seccompProfile")["type"].clone(),
            json!("RuntimeDefault"),
        ),
        (
            "readOnlyRootFilesystem",
            container["readOnlyRootFilesystem"].clone(),
            json!(true),
        ),
        (
            "allowPrivilegeEscalation",
            container["allowPrivilegeEscalation"].clone(),
            json!(false),
        ),
    ];
    for (key, found, wanted) in expectations {
        if found != wanted {
            problems.push(format!(
                "Deployment: securityContext.{key} must be {wanted}, found {found}"
            ));
        }
    }
    if !strings(&container["capabilities"]["drop"]).contains(&"ALL") {
        problems.push("Deployment: securityContext.capabilities.drop must contain ALL".into());
    }
    if !strings(&container["capabilities"]["add"]).is_empty() {
        problems.push("Deployment: securityContext.capabilities.add must be empty".into());
    }
    if container["privileged"] == true {
        problems.push("Deployment: securityContext.privileged must not be true".into());
    }
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        if pod.spec[host] == true {
            problems.push(format!("Deployment: {host} must not be true"));
        }
    }
    // IRSA projects a web-identity token into the pod.
    if pod.spec["automountServiceAccountToken"] == false {
        problems.push("Deployment: automountServiceAccountToken must stay true for IRSA".into());
    }
}

/// Names that hold secrets, and URLs that carry a password.
fn looks_secret(name: &str, value: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    let secret_name = [
        "PASSWORD",
        "SECRET",
        "TOKEN",
        "CREDENTIAL",
        "ACCESS_KEY",
        "DATABASE__URL",
    ]
    .iter()
    .any(|word| upper.contains(word));
    let password_in_url = value
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    secret_name || password_in_url
}

fn check_secrets(objects: &[Value], pod: &Pod, problems: &mut Vec<String>) {
    let env = pod.container["env"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for variable in env {
        let name = variable["name"].as_str().unwrap_or("");
        if let Some(value) = variable["value"].as_str()
            && looks_secret(name, value)
        {
            problems.push(format!(
                "Deployment: env {name} has a literal value; take it from a Secret (valueFrom.secretKeyRef)"
            ));
        }
    }
    let database = env.iter().find(|v| v["name"] == DATABASE_URL_ENV);
    let reference = database.map(|v| &v["valueFrom"]["secretKeyRef"]);
    if !reference.is_some_and(|r| r["name"].is_string() && r["key"].is_string()) {
        problems.push(format!(
            "Deployment: env {DATABASE_URL_ENV} must come from a Secret (valueFrom.secretKeyRef with name and key)"
        ));
    }
    for secret in of_kind(objects, "Secret") {
        if !secret["data"].is_null() || !secret["stringData"].is_null() {
            problems.push(format!(
                "Secret {}: secret values do not belong in the manifests; create the Secret out of band",
                name(secret)
            ));
        }
    }
}

fn check_service_account(objects: &[Value], pod: &Pod, problems: &mut Vec<String>) {
    let wanted = pod.spec["serviceAccountName"].as_str().unwrap_or("default");
    let Some(account) = of_kind(objects, "ServiceAccount")
        .into_iter()
        .find(|a| name(a) == wanted)
    else {
        problems.push(format!(
            "ServiceAccount {wanted} (the Deployment's serviceAccountName) is missing"
        ));
        return;
    };
    let arn = account["metadata"]["annotations"][IRSA_ANNOTATION]
        .as_str()
        .unwrap_or("");
    let role_arn = regex::Regex::new(r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[\w+=,.@/-]+$").expect("regex");
    if !role_arn.is_match(arn) {
        problems.push(format!(
            "ServiceAccount {wanted}: annotation {IRSA_ANNOTATION} must be an IAM role ARN, found {arn:?}"
        ));
    }
}

fn check_scaling_and_disruption(objects: &[Value], pod: &Pod, problems: &mut Vec<String>) {
    let deployment_name = name(pod.deployment);
    if !selects(&pod.deployment["spec"]["selector"]["matchLabels"], &pod.labels) {
        problems.push("Deployment: spec.selector.matchLabels must select the pod template's labels".into());
    }
    let hpas = of_kind(objects, "HorizontalPodAutoscaler");
    let [hpa] = hpas.as_slice() else {
        problems.push(format!(
            "exactly one HorizontalPodAutoscaler expected, found {}",
            hpas.len()
        ));
        return;
    };
    let target = &hpa["spec"]["scaleTargetRef"];
    if hpa["apiVersion"] != "autoscaling/v2"
        || target["apiVersion"] != "apps/v1"
        || target["kind"] != "Deployment"
        || target["name"] != deployment_name
    {
        problems.push(format!(
            "HorizontalPodAutoscaler {}: must be autoscaling/v2 and scale the Deployment {deployment_name}, found {target}",
            name(hpa)
        ));
    }
    let min = hpa["spec"]["minReplicas"].as_i64().unwrap_or(1);
    let max = hpa["spec"]["maxReplicas"].as_i64().unwrap_or(0);
    if !(1..=max).contains(&min) {
        problems.push(format!(
            "HorizontalPodAutoscaler {}: minReplicas {min} and maxReplicas {max}",
            name(hpa)
        ));
    }
    let pdbs = of_kind(objects, "PodDisruptionBudget");
    let [pdb] = pdbs.as_slice() else {
        problems.push(format!(
            "exactly one PodDisruptionBudget expected, found {}",
            pdbs.len()
        ));
        return;
    };
    if pdb["apiVersion"] != "policy/v1" || !selects(&pdb["spec"]["selector"]["matchLabels"], &pod.labels) {
        problems.push(format!(
            "PodDisruptionBudget {}: must be policy/v1 and select the Deployment's pods ({:?})",
            name(pdb),
            pod.labels
        ));
    }
    if pdb["spec"]["minAvailable"]
        .as_i64()
        .is_some_and(|available| available >= min)
    {
        problems.push(format!(
            "PodDisruptionBudget {}: minAvailable leaves no pod to evict at {min} replicas",
            name(pdb)
        ));
    }
}

fn check_placement(pod: &Pod, problems: &mut Vec<String>) {
    let spread = pod.spec["topologySpreadConstraints"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let anti = pod.spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let spread_selects = spread
        .iter()
        .any(|c| selects(&c["labelSelector"]["matchLabels"], &pod.labels));
    let anti_selects = anti
        .iter()
        .any(|t| selects(&t["podAffinityTerm"]["labelSelector"]["matchLabels"], &pod.labels));
    if !spread_selects && !anti_selects {
        problems.push(
            "Deployment: spread the replicas (topologySpreadConstraints or podAntiAffinity selecting the pods)".into(),
        );
    }
}

fn check_network(objects: &[Value], pod: &Pod, problems: &mut Vec<String>) {
    let services = of_kind(objects, "Service");
    if services.is_empty() {
        problems.push("no Service".into());
    }
    for service in services {
        if !selects(&service["spec"]["selector"], &pod.labels) {
            problems.push(format!(
                "Service {}: selector must select the Deployment's pods",
                name(service)
            ));
        }
        for port in service["spec"]["ports"].as_array().into_iter().flatten() {
            let target = &port["targetPort"];
            let reaches = *target == json!("grpc") || target.as_i64() == pod.grpc_port;
            if port["port"].as_i64() != Some(GRPC_PORT) || !reaches {
                problems.push(format!(
                    "Service {}: port must be {GRPC_PORT} with targetPort grpc (the container's port), found {port}",
                    name(service)
                ));
            }
        }
    }
    let policies = of_kind(objects, "NetworkPolicy");
    let [policy] = policies.as_slice() else {
        problems.push(format!(
            "exactly one NetworkPolicy expected, found {}",
            policies.len()
        ));
        return;
    };
    if !selects(&policy["spec"]["podSelector"]["matchLabels"], &pod.labels) {
        problems.push(format!(
            "NetworkPolicy {}: podSelector must select the Deployment's pods",
            name(policy)
        ));
    }
    let admits_grpc = policy["spec"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|rule| {
            let ports = rule["ports"].as_array().map(Vec::as_slice).unwrap_or_default();
            ports.is_empty()
                || ports
                    .iter()
                    .any(|p| p["port"].as_i64() == Some(GRPC_PORT) || p["port"] == "grpc")
        });
    if !admits_grpc {
        problems.push(format!(
            "NetworkPolicy {}: no ingress rule admits port {GRPC_PORT}",
            name(policy)
        ));
    }
}

/// The ConfigMap behind the volume mounted at `mount_path`, and the key mounted.
fn mounted_config_map<'a>(
    objects: &'a [Value],
    pod: &Pod,
    mount_path: &str,
) -> Option<(&'a Value, Option<String>)> {
    let mount = pod.container["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["mountPath"] == mount_path)?;
    let volume = pod.spec["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == mount["name"])?;
    let map_name = volume["configMap"]["name"].as_str()?;
    let map = of_kind(objects, "ConfigMap")
        .into_iter()
        .find(|m| name(m) == map_name)?;
    Some((map, mount["subPath"].as_str().map(str::to_owned)))
}

fn check_config(objects: &[Value], pod: &Pod, problems: &mut Vec<String>) {
    let args = strings(&pod.container["args"]);
    if !(args.first() == Some(&"serve") && args.windows(2).any(|w| w == ["--config", CONFIG_PATH])) {
        problems.push(format!(
            "Deployment: args must be serve --config {CONFIG_PATH}, found {args:?}"
        ));
    }
    let Some((map, key)) = mounted_config_map(objects, pod, CONFIG_PATH) else {
        problems.push(format!("Deployment: no ConfigMap is mounted at {CONFIG_PATH}"));
        return;
    };
    let key = key.unwrap_or_else(|| "config.toml".into());
    let Some(text) = map["data"][&key].as_str() else {
        problems.push(format!("ConfigMap {}: no key {key}", name(map)));
        return;
    };
    problems.extend(config_problems(text, &format!("ConfigMap {} {key}", name(map))));
    let Ok(raw) = toml::from_str::<toml::Table>(text) else {
        return;
    };
    check_listen_and_grace(&raw, pod, problems);
    check_policies_mount(objects, pod, &raw, problems);
    check_signing_key_mount(pod, problems);
}

/// What is wrong with a production `config.toml`.
fn config_problems(text: &str, origin: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(error) = parts::from_toml(text) {
        problems.push(format!("{origin}: the gateway refuses it: {error}"));
    }
    let raw = match toml::from_str::<toml::Table>(text) {
        Ok(raw) => raw,
        Err(error) => {
            problems.push(format!("{origin}: not TOML: {error}"));
            return problems;
        }
    };
    let auth = raw.get("auth").and_then(toml::Value::as_table);
    let modes = auth.and_then(|a| a.get("modes")).and_then(toml::Value::as_array);
    if modes.is_none_or(|modes| modes.iter().map(toml::Value::as_str).collect::<Vec<_>>() != [Some("oidc")]) {
        problems.push(format!("{origin}: auth.modes must be [\"oidc\"] in a cluster"));
    }
    if auth.and_then(|a| a.get("mode")).is_some()
        || auth
            .and_then(|a| a.get("allow_insecure_dev_on_non_loopback"))
            .is_some()
    {
        problems.push(format!(
            "{origin}: insecure-dev settings have no place in a cluster's [auth]"
        ));
    }
    let oidc = auth.and_then(|a| a.get("oidc")).and_then(toml::Value::as_table);
    for key in [
        "issuer",
        "audiences",
        "jwks_url",
        "principal_claim",
        "groups_claim",
    ] {
        if oidc.is_none_or(|o| !o.contains_key(key)) {
            problems.push(format!("{origin}: auth.oidc.{key} is not set"));
        }
    }
    if raw.get("database").and_then(|d| d.get("url")).is_some() {
        problems.push(format!(
            "{origin}: database.url belongs in the Secret (ECR_GATEWAY__DATABASE__URL), not in the ConfigMap"
        ));
    }
    problems
}

fn check_listen_and_grace(raw: &toml::Table, pod: &Pod, problems: &mut Vec<String>) {
    let server = raw.get("server");
    let listen = server
        .and_then(|s| s.get("listen"))
        .and_then(toml::Value::as_str)
        .unwrap_or("");
    if listen != format!("0.0.0.0:{GRPC_PORT}") {
        problems.push(format!(
            "config.toml: server.listen must be 0.0.0.0:{GRPC_PORT} (the container port), found {listen:?}"
        ));
    }
    let grace = server
        .and_then(|s| s.get("shutdown_grace_seconds"))
        .and_then(toml::Value::as_integer)
        .unwrap_or(20);
    let pre_stop = pod.container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_i64()
        .unwrap_or(0);
    // server.rs: the drain, then the cleanup worker's hand-back, then the
    // audit writer's flush, each up to the grace.
    let needed = pre_stop + 3 * grace;
    let termination = pod.spec["terminationGracePeriodSeconds"].as_i64().unwrap_or(30);
    if termination <= needed {
        problems.push(format!(
            "Deployment: terminationGracePeriodSeconds {termination} must exceed the preStop pause ({pre_stop}) \
             plus three shutdown_grace_seconds ({grace}) = {needed}"
        ));
    }
}

fn check_policies_mount(objects: &[Value], pod: &Pod, raw: &toml::Table, problems: &mut Vec<String>) {
    let authz = raw.get("authz");
    let directory = authz
        .and_then(|a| a.get("policies"))
        .and_then(toml::Value::as_str)
        .unwrap_or("");
    let entities = authz
        .and_then(|a| a.get("entities"))
        .and_then(toml::Value::as_str)
        .unwrap_or("");
    let Some((map, _)) = mounted_config_map(objects, pod, directory) else {
        problems.push(format!(
            "Deployment: authz.policies {directory:?} is not a mounted ConfigMap"
        ));
        return;
    };
    let keys: Vec<&String> = map["data"]
        .as_object()
        .map(|d| d.keys().collect())
        .unwrap_or_default();
    if !keys.iter().any(|k| k.ends_with(".cedar")) {
        problems.push(format!("ConfigMap {}: holds no .cedar policy", name(map)));
    }
    let entities_key = entities
        .strip_prefix(directory)
        .map(|k| k.trim_start_matches('/'));
    if !entities_key.is_some_and(|k| keys.iter().any(|key| key.as_str() == k)) {
        problems.push(format!(
            "config.toml: authz.entities {entities:?} is not a file of the policies ConfigMap {}",
            name(map)
        ));
    }
}

fn check_signing_key_mount(pod: &Pod, problems: &mut Vec<String>) {
    let env = pod.container["env"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let Some(file) = env
        .iter()
        .find(|v| v["name"] == "ECR_GATEWAY__AUDIT__SIGNING_KEY_FILE")
        .and_then(|v| v["value"].as_str())
    else {
        return;
    };
    let directory = Path::new(file).parent().and_then(Path::to_str).unwrap_or("");
    let mount = pod.container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"] == directory);
    let secret_volume = mount.and_then(|m| {
        pod.spec["volumes"]
            .as_array()?
            .iter()
            .find(|v| v["name"] == m["name"] && v["secret"]["secretName"].is_string())
    });
    if secret_volume.is_none() {
        problems.push(format!(
            "Deployment: the audit signing key {file} must come from a mounted Secret at {directory}"
        ));
    }
}

/// Everything wrong with one set of objects (the base, or a rendered overlay).
fn problems(objects: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(pod) = Pod::find(objects, &mut problems) else {
        return problems;
    };
    check_ports_and_probes(&pod, &mut problems);
    check_resources(&pod, &mut problems);
    check_security_context(&pod, &mut problems);
    check_secrets(objects, &pod, &mut problems);
    check_service_account(objects, &pod, &mut problems);
    check_scaling_and_disruption(objects, &pod, &mut problems);
    check_placement(&pod, &mut problems);
    check_network(objects, &pod, &mut problems);
    check_config(objects, &pod, &mut problems);
    problems
}

fn assert_no_problems(problems: &[String], what: &str) {
    assert!(problems.is_empty(), "{what}:\n  - {}", problems.join("\n  - "));
}

// ---------------------------------------------------------------------------
// The tests.

#[test]
fn every_yaml_file_under_deploy_k8s_parses_as_kubernetes_objects() {
    let files = yaml_files(&k8s_dir());
    assert!(
        files.len() >= 10,
        "expected the base and two overlays, found {files:?}"
    );
    for file in files {
        for document in yaml_documents(&read(&file), &file.display().to_string()) {
            for field in ["apiVersion", "kind"] {
                assert!(
                    document[field].is_string(),
                    "{}: a document without {field}",
                    file.display()
                );
            }
            let is_kustomization = document["kind"] == "Kustomization";
            assert!(
                is_kustomization || document["metadata"]["name"].is_string(),
                "{}: a {} without metadata.name",
                file.display(),
                document["kind"]
            );
        }
    }
}

#[test]
fn every_kustomization_references_existing_files() {
    let mut directories = vec![k8s_dir().join("base"), policies_dir()];
    directories.extend(OVERLAYS.iter().map(|o| k8s_dir().join("overlays").join(o)));
    let mut missing = Vec::new();
    for dir in &directories {
        for (field, reference) in kustomization_references(&kustomization(dir)) {
            let path = dir.join(&reference);
            let exists = path.is_file() || path.join("kustomization.yaml").is_file();
            if !exists {
                missing.push(format!(
                    "{}: {field} names {reference}, which does not exist",
                    dir.display()
                ));
            }
        }
    }
    assert_no_problems(&missing, "kustomizations name missing files");
}

#[test]
fn every_policy_file_is_in_the_policies_config_map() {
    let map = generated_policies_config_map();
    let listed: Vec<&String> = map["data"].as_object().expect("data").keys().collect();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(policies_dir()).expect("deploy/policies") {
        let file = entry.expect("entry").file_name().to_string_lossy().into_owned();
        if (file.ends_with(".cedar") || file == "entities.json") && !listed.contains(&&file) {
            missing.push(format!(
                "deploy/policies/{file} is not in deploy/policies/kustomization.yaml"
            ));
        }
    }
    assert!(
        listed.iter().any(|k| k.ends_with(".cedar")),
        "no .cedar file is listed: {listed:?}"
    );
    assert!(
        listed.iter().any(|k| *k == "entities.json"),
        "entities.json is not listed: {listed:?}"
    );
    assert_no_problems(&missing, "policy files left out of the ConfigMap");
}

#[test]
fn base_keeps_every_production_property() {
    assert_no_problems(&problems(&base_objects()), "deploy/k8s/base");
}

#[test]
fn each_overlay_renders_and_keeps_every_production_property() {
    let mut found = Vec::new();
    for overlay in OVERLAYS {
        let dir = k8s_dir().join("overlays").join(overlay);
        let origin = format!("overlays/{overlay}");
        let Some(objects) = render(&dir) else {
            // Without kubectl, at least the overlay's own configuration.
            let config = dir.join("config.toml");
            found.extend(config_problems(&read(&config), &format!("{origin}/config.toml")));
            continue;
        };
        found.extend(problems(&objects).into_iter().map(|p| format!("{origin}: {p}")));
        if !objects.iter().all(|o| o["metadata"]["namespace"].is_string()) {
            found.push(format!(
                "{origin}: every object must carry the overlay's namespace"
            ));
        }
        let mut ignored = Vec::new();
        let image = Pod::find(&objects, &mut ignored).and_then(|pod| pod.container["image"].as_str());
        if image.is_none_or(|i| !i.contains(':') || i.ends_with(":latest")) {
            found.push(format!(
                "{origin}: the image must be pinned to a tag or digest other than latest, found {image:?}"
            ));
        }
    }
    assert_no_problems(&found, "kubectl kustomize deploy/k8s/overlays/*");
}

/// Applies `change` to the object of `kind` in a copy of `objects`.
fn broken(objects: &[Value], kind: &str, change: impl Fn(&mut Value)) -> Vec<Value> {
    let mut copy = objects.to_vec();
    let object = copy
        .iter_mut()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} to break"));
    change(object);
    copy
}

fn container(deployment: &mut Value) -> &mut Value {
    &mut deployment["spec"]["template"]["spec"]["containers"][0]
}

fn pod_spec(deployment: &mut Value) -> &mut Value {
    &mut deployment["spec"]["template"]["spec"]
}

/// Replaces `from` by `to` in a ConfigMap's config.toml.
fn edit_config(map: &mut Value, from: &str, to: &str) {
    let text = map["data"]["config.toml"].as_str().unwrap_or("").to_owned();
    assert!(text.contains(from), "config.toml has no {from:?} to replace");
    map["data"]["config.toml"] = json!(text.replacen(from, to, 1));
}

#[test]
fn checks_notice_each_broken_property() {
    type Breakage = (&'static str, &'static str, fn(&mut Value), &'static str);
    #[rustfmt::skip]
    let breakages: &[Breakage] = &[
        ("liveness over HTTP", "Deployment", |d| container(d)["livenessProbe"] = json!({"httpGet": {"port": 8080}}), "livenessProbe"),
        ("liveness following Postgres", "Deployment", |d| container(d)["livenessProbe"]["grpc"]["service"] = Value::Null, "livenessProbe must check the health service \"liveness\""),
        ("readiness on another port", "Deployment", |d| container(d)["readinessProbe"]["grpc"]["port"] = json!(9090), "readinessProbe"),
        ("no startup probe", "Deployment", |d| container(d)["startupProbe"] = Value::Null, "startupProbe is missing"),
        ("container port moved", "Deployment", |d| container(d)["ports"][0]["containerPort"] = json!(8080), "port named grpc"),
        ("no memory limit", "Deployment", |d| container(d)["resources"]["limits"]["memory"] = Value::Null, "limits.memory"),
        ("no cpu request", "Deployment", |d| container(d)["resources"]["requests"]["cpu"] = Value::Null, "requests.cpu"),
        ("writable root", "Deployment", |d| container(d)["securityContext"]["readOnlyRootFilesystem"] = json!(false), "readOnlyRootFilesystem"),
        ("privilege escalation", "Deployment", |d| container(d)["securityContext"]["allowPrivilegeEscalation"] = json!(true), "allowPrivilegeEscalation"),
        ("capabilities kept", "Deployment", |d| container(d)["securityContext"]["capabilities"]["drop"] = json!([]), "capabilities.drop"),
        ("root user", "Deployment", |d| container(d)["securityContext"]["runAsUser"] = json!(0), "runAsUser"),
        ("root allowed", "Deployment", |d| container(d)["securityContext"]["runAsNonRoot"] = json!(false), "runAsNonRoot"),
        ("unconfined seccomp", "Deployment", |d| container(d)["securityContext"]["seccompProfile"]["type"] = json!("Unconfined"), "seccompProfile"),
        ("no token for IRSA", "Deployment", |d| pod_spec(d)["automountServiceAccountToken"] = json!(false), "automountServiceAccountToken"),
        ("literal database URL", "Deployment", |d| container(d)["env"][0] = json!({"name": DATABASE_URL_ENV, "value": "postgres://app:hunter2@db/ecr"}), DATABASE_URL_ENV),
        ("password in a URL", "Deployment", |d| container(d)["env"][2] = json!({"name": "NATS", "value": "nats://u:p@nats:4222"}), "literal value"),
        ("short termination grace", "Deployment", |d| pod_spec(d)["terminationGracePeriodSeconds"] = json!(30), "terminationGracePeriodSeconds"),
        ("no spreading", "Deployment", |d| { pod_spec(d)["topologySpreadConstraints"] = Value::Null; pod_spec(d)["affinity"] = Value::Null; }, "spread the replicas"),
        ("config not mounted", "Deployment", |d| container(d)["volumeMounts"][0]["mountPath"] = json!("/config.toml"), "no ConfigMap is mounted"),
        ("policies not mounted", "Deployment", |d| container(d)["volumeMounts"][1]["mountPath"] = json!("/policies"), "authz.policies"),
        ("no IRSA role", "ServiceAccount", |a| a["metadata"]["annotations"] = json!({}), IRSA_ANNOTATION),
        ("HPA scales another Deployment", "HorizontalPodAutoscaler", |h| h["spec"]["scaleTargetRef"]["name"] = json!("other"), "HorizontalPodAutoscaler"),
        ("PDB selects other pods", "PodDisruptionBudget", |p| p["spec"]["selector"]["matchLabels"] = json!({"app": "other"}), "PodDisruptionBudget"),
        ("NetworkPolicy selects other pods", "NetworkPolicy", |n| n["spec"]["podSelector"]["matchLabels"] = json!({"app": "other"}), "NetworkPolicy"),
        ("NetworkPolicy closes the port", "NetworkPolicy", |n| n["spec"]["ingress"][0]["ports"] = json!([{"port": 8080}]), "admits port"),
        ("Service targets another port", "Service", |s| s["spec"]["ports"][0]["targetPort"] = json!(8080), "targetPort"),
        ("Service selects other pods", "Service", |s| s["spec"]["selector"] = json!({"app": "other"}), "selector"),
        ("config the gateway refuses", "ConfigMap", |m| edit_config(m, "jsonl = \"-\"\n", "jsonl = \"-\"\nsigning_key = \"inline\"\n"), "refuses it"),
        ("listening on loopback", "ConfigMap", |m| edit_config(m, "0.0.0.0:50051", "127.0.0.1:50051"), "server.listen"),
        ("insecure-dev in a cluster", "ConfigMap", |m| edit_config(m, "modes = [\"oidc\"]", "mode = \"insecure-dev\""), "auth.modes"),
        ("database URL in the ConfigMap", "ConfigMap", |m| edit_config(m, "[database]\n", "[database]\nurl = \"postgres://app:pw@db/ecr\"\n"), "database.url"),
    ];
    let objects = base_objects();
    let before = problems(&objects);
    let mut unnoticed = Vec::new();
    for (what, kind, change, expected) in breakages {
        let after = problems(&broken(&objects, kind, change));
        let noticed = after.iter().any(|p| p.contains(expected) && !before.contains(p));
        if !noticed {
            unnoticed.push(format!(
                "{what}: no new problem mentioning {expected:?}; problems: {after:?}"
            ));
        }
    }
    let with_secret = [objects.clone(), vec![json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"}, "stringData": {"url": "x"}})]].concat();
    if !problems(&with_secret).iter().any(|p| p.starts_with("Secret db")) {
        unnoticed.push("a Secret with values in the manifests went unnoticed".into());
    }
    assert_no_problems(&unnoticed, "checks that did not fire");
}

#[test]
fn compose_publishes_only_on_loopback_and_its_configuration_is_accepted() {
    let path = repo().join("docker-compose.yml");
    let compose = yaml_documents(&read(&path), "docker-compose.yml").remove(0);
    let gateway = &compose["services"]["gateway"];
    assert_eq!(
        gateway["build"]["dockerfile"], "deploy/Dockerfile",
        "the gateway is built from deploy/Dockerfile"
    );
    // deploy/compose.toml allows insecure-dev on 0.0.0.0 because nothing
    // outside the host's loopback reaches the container.
    let services = compose["services"].as_object().expect("services");
    for (service, definition) in services {
        for port in strings(&definition["ports"]) {
            assert!(
                port.starts_with("127.0.0.1:"),
                "service {service} publishes {port} beyond the host's loopback"
            );
        }
    }
    let config = repo().join("deploy/compose.toml");
    if let Err(error) = parts::from_toml(&read(&config)) {
        panic!("deploy/compose.toml: the gateway refuses it: {error}");
    }
}

/// What can be checked of deploy/Dockerfile without a Docker daemon: two
/// stages, an offline sqlx build, a numeric non-root user on a distroless
/// base, and every path it copies present in the repository and not hidden
/// from the build context by .dockerignore.
#[test]
fn the_dockerfile_builds_offline_in_two_stages_and_runs_as_non_root() {
    let dockerfile = read(&repo().join("deploy/Dockerfile"));
    let instructions: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    let stages = instructions
        .iter()
        .filter(|line| line.starts_with("FROM "))
        .count();
    assert_eq!(stages, 2, "a build stage and a runtime stage");
    assert!(
        dockerfile.contains("SQLX_OFFLINE=true"),
        "the build needs no database"
    );
    assert!(
        dockerfile.contains("gcr.io/distroless/cc-debian12:nonroot"),
        "a minimal runtime base"
    );
    let user = instructions
        .iter()
        .rev()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("a USER instruction");
    let uid: u32 = user
        .split(':')
        .next()
        .and_then(|uid| uid.parse().ok())
        .unwrap_or_else(|| panic!("USER {user} is not a numeric uid (Kubernetes' runAsNonRoot needs one)"));
    assert_ne!(uid, 0, "the image runs as root");
    let ignored = read(&repo().join(".dockerignore"));
    let ignored: Vec<&str> = ignored
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect();
    for line in instructions
        .iter()
        .filter(|line| line.starts_with("COPY ") && !line.contains("--from="))
    {
        let words: Vec<&str> = line.split_whitespace().skip(1).collect();
        for source in &words[..words.len() - 1] {
            let path = source.trim_end_matches('/');
            assert!(
                repo().join(path).exists(),
                "the Dockerfile copies {path}, which does not exist"
            );
            assert!(
                !ignored
                    .iter()
                    .any(|pattern| pattern.trim_end_matches('/') == path),
                ".dockerignore hides {path}, which the Dockerfile copies"
            );
        }
    }
}
