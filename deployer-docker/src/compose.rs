//! A service's first deploy from a compose file, as `docker stack deploy`
//! would create it: the version-3 keys a swarm stack of the seeds uses
//! (`image`, `ports` short and long with `mode: host`, `deploy.mode` and
//! `deploy.replicas`, `volumes` bind and named, `sysctls`, `environment`),
//! the stack's names (`<stack>_<service>`, `<stack>_<volume>`), its
//! `<stack>_default` overlay network with each service reachable by its
//! short name, and its namespace labels. Anything else is an error that
//! names the key: a stack the deployer would create differently from
//! `docker stack deploy` is refused rather than half-read.
//!
//! ```
//! use deployer_docker::Stack;
//!
//! let stack = Stack::parse("infra", r#"
//! version: "3.7"
//! services:
//!   caddy:
//!     image: caddy
//!     deploy:
//!       mode: global
//!     ports:
//!       - target: 443
//!         published: 443
//!         mode: host
//!   www:
//!     image: ocurrent/v3.ocaml.org-server:live
//!     sysctls:
//!       - 'net.ipv4.tcp_keepalive_time=60'
//! "#).unwrap();
//! assert_eq!(stack.service_name("www").unwrap(), "infra_www");
//! let options = stack.options("www").unwrap(); // for Docker::service
//! assert!(options.create.is_some());
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum, EndpointSpec, Mount,
    MountType, MountVolumeOptions, NetworkAttachmentConfig, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated,
    TaskSpec, TaskSpecContainerSpec,
};
use yaml_rust2::Yaml;

use crate::service::ServiceOptions;

/// The label `docker stack deploy` puts on what belongs to a stack.
pub const STACK_LABEL: &str = "com.docker.stack.namespace";

/// A compose file that cannot be deployed as written: where, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComposeError {
    /// The key's path (`services.www.healthcheck`), or empty for the file.
    pub at: String,
    /// What is wrong.
    pub why: String,
}

impl std::fmt::Display for ComposeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.at.is_empty() {
            write!(f, "the compose file: {}", self.why)
        } else {
            write!(f, "the compose file, at {}: {}", self.at, self.why)
        }
    }
}

impl std::error::Error for ComposeError {}

impl From<ComposeError> for deployer_core::Error {
    fn from(e: ComposeError) -> deployer_core::Error {
        deployer_core::Error::msg(e.to_string())
    }
}

fn error(at: &str, why: impl Into<String>) -> ComposeError {
    ComposeError { at: at.to_owned(), why: why.into() }
}

/// How many tasks a service runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// This many (`deploy.replicas`, 1 by default).
    Replicated(u64),
    /// One on every node (`deploy.mode: global`).
    Global,
}

/// A published port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// The port in the container.
    pub target: u16,
    /// The port published, if any.
    pub published: Option<u16>,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Published on the node running the task (`mode: host`), not through
    /// swarm's routing mesh (`ingress`, the default).
    pub host_mode: bool,
}

/// A volume mounted into a service's containers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    /// A host path (bind mount), or a volume named in the file's top-level
    /// `volumes` (created as `<stack>_<name>`).
    pub source: VolumeSource,
    /// The path in the container.
    pub target: String,
    /// Mounted read-only (`:ro`).
    pub read_only: bool,
}

/// Where a [`Volume`] comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumeSource {
    /// A path on the host.
    Bind(String),
    /// A named volume of the stack.
    Named(String),
}

/// One service of a [`Stack`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackService {
    /// Its image as written (the deploy replaces it with the one built).
    pub image: Option<String>,
    /// Published ports.
    pub ports: Vec<Port>,
    /// Replicated or global.
    pub mode: Mode,
    /// Mounts.
    pub volumes: Vec<Volume>,
    /// Kernel parameters (`net.ipv4.tcp_keepalive_time=60`).
    pub sysctls: BTreeMap<String, String>,
    /// Environment variables.
    pub environment: BTreeMap<String, String>,
}

/// A compose file read for the services' first deploys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stack {
    name: String,
    services: BTreeMap<String, StackService>,
    volumes: BTreeSet<String>,
}

impl Stack {
    /// Reads `text` as the stack `name` (what `docker stack deploy` is given
    /// as its last argument).
    pub fn parse(name: &str, text: &str) -> Result<Stack, ComposeError> {
        check_name(name).map_err(|why| error("", format!("the stack name {name:?} {why}")))?;
        let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| error("", format!("not YAML: {e}")))?;
        let [doc] = docs.as_slice() else { return Err(error("", "expected one YAML document")) };
        let top = mapping(doc, "")?;
        let mut services = BTreeMap::new();
        let mut volumes = BTreeSet::new();
        for (key, value) in &top {
            match key.as_str() {
                "version" => {
                    let v = scalar(value, "version")?;
                    if !v.starts_with('3') {
                        return Err(error("version", format!("{v:?}: only version 3 files are stacks")));
                    }
                }
                "volumes" => {
                    for (volume, options) in mapping(value, "volumes")? {
                        let at = format!("volumes.{volume}");
                        check_name(&volume).map_err(|why| error(&at, format!("the name {why}")))?;
                        if !matches!(options, Yaml::Null) && !mapping(options, &at)?.is_empty() {
                            return Err(error(&at, "volume options are not supported (a local volume is created)"));
                        }
                        volumes.insert(volume);
                    }
                }
                "services" => {
                    for (service, spec) in mapping(value, "services")? {
                        let at = format!("services.{service}");
                        check_name(&service).map_err(|why| error(&at, format!("the name {why}")))?;
                        services.insert(service.clone(), read_service(spec, &at)?);
                    }
                }
                other => return Err(unknown(other, "", &["version", "services", "volumes"])),
            }
        }
        for (service, s) in &services {
            for v in &s.volumes {
                if let VolumeSource::Named(volume) = &v.source {
                    if !volumes.contains(volume) {
                        return Err(error(
                            &format!("services.{service}.volumes"),
                            format!("the volume {volume:?} is not declared in the top-level volumes"),
                        ));
                    }
                }
            }
        }
        if services.is_empty() {
            return Err(error("services", "no services"));
        }
        Ok(Stack { name: name.to_owned(), services, volumes })
    }

    /// Reads the compose file at `path` as the stack `name`.
    pub fn read(name: &str, path: &std::path::Path) -> Result<Stack, ComposeError> {
        let text = std::fs::read_to_string(path).map_err(|e| error("", format!("{}: {e}", path.display())))?;
        Stack::parse(name, &text)
    }

    /// The stack's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its services, by their names in the file.
    pub fn services(&self) -> &BTreeMap<String, StackService> {
        &self.services
    }

    fn service(&self, service: &str) -> Result<&StackService, ComposeError> {
        self.services.get(service).ok_or_else(|| {
            let names: Vec<&str> = self.services.keys().map(String::as_str).collect();
            error("services", format!("no service {service:?} (the file has {})", names.join(", ")))
        })
    }

    /// The swarm service's name: `<stack>_<service>` (`infra_www`).
    pub fn service_name(&self, service: &str) -> Result<String, ComposeError> {
        self.service(service)?;
        Ok(format!("{}_{service}", self.name))
    }

    /// The stack's overlay network, `<stack>_default`.
    pub fn network(&self) -> String {
        format!("{}_default", self.name)
    }

    /// Options for [`Docker::service`](crate::Docker::service) that create
    /// `service` as the stack would if it does not exist yet (its first
    /// deploy); later deploys change only its image, as always.
    pub fn options(&self, service: &str) -> Result<ServiceOptions, ComposeError> {
        Ok(ServiceOptions { create: Some(self.spec(service)?), ..ServiceOptions::default() })
    }

    /// The swarm spec `docker stack deploy` would give `service`.
    fn spec(&self, service: &str) -> Result<ServiceSpec, ComposeError> {
        let s = self.service(service)?;
        let labels = HashMap::from([(STACK_LABEL.to_owned(), self.name.clone())]);
        let mounts = s
            .volumes
            .iter()
            .map(|v| match &v.source {
                VolumeSource::Bind(path) => Mount {
                    typ: Some(MountType::BIND),
                    source: Some(path.clone()),
                    target: Some(v.target.clone()),
                    read_only: Some(v.read_only),
                    ..Mount::default()
                },
                VolumeSource::Named(volume) => Mount {
                    typ: Some(MountType::VOLUME),
                    source: Some(format!("{}_{volume}", self.name)),
                    target: Some(v.target.clone()),
                    read_only: Some(v.read_only),
                    volume_options: Some(MountVolumeOptions {
                        labels: Some(labels.clone()),
                        ..MountVolumeOptions::default()
                    }),
                    ..Mount::default()
                },
            })
            .collect();
        let container = TaskSpecContainerSpec {
            image: s.image.clone(),
            labels: Some(labels.clone()),
            env: (!s.environment.is_empty()).then(|| s.environment.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            mounts: Some(mounts),
            sysctls: (!s.sysctls.is_empty()).then(|| s.sysctls.clone().into_iter().collect()),
            ..TaskSpecContainerSpec::default()
        };
        let ports = s
            .ports
            .iter()
            .map(|p| EndpointPortConfig {
                protocol: Some(if p.protocol == "udp" {
                    EndpointPortConfigProtocolEnum::UDP
                } else {
                    EndpointPortConfigProtocolEnum::TCP
                }),
                target_port: Some(i64::from(p.target)),
                published_port: p.published.map(i64::from),
                publish_mode: Some(if p.host_mode {
                    EndpointPortConfigPublishModeEnum::HOST
                } else {
                    EndpointPortConfigPublishModeEnum::INGRESS
                }),
                ..EndpointPortConfig::default()
            })
            .collect();
        let mode = match s.mode {
            Mode::Global => ServiceSpecMode { global: Some(HashMap::new()), ..ServiceSpecMode::default() },
            Mode::Replicated(n) => ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(n as i64) }),
                ..ServiceSpecMode::default()
            },
        };
        Ok(ServiceSpec {
            name: Some(format!("{}_{service}", self.name)),
            labels: Some(labels),
            task_template: Some(TaskSpec {
                container_spec: Some(container),
                networks: Some(vec![NetworkAttachmentConfig {
                    target: Some(self.network()),
                    aliases: Some(vec![service.to_owned()]),
                    ..NetworkAttachmentConfig::default()
                }]),
                ..TaskSpec::default()
            }),
            mode: Some(mode),
            endpoint_spec: Some(EndpointSpec { ports: Some(ports), ..EndpointSpec::default() }),
            ..ServiceSpec::default()
        })
    }
}

/// A stack, service or volume name: what docker accepts in a stack.
fn check_name(name: &str) -> Result<(), &'static str> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err("is not a name (letters, digits, '-', '_' and '.', at most 63)")
    }
}

fn unknown(key: &str, at: &str, known: &[&str]) -> ComposeError {
    let path = if at.is_empty() { key.to_owned() } else { format!("{at}.{key}") };
    error(&path, format!("{key:?} is not a key the deployer reads here (it reads {})", known.join(", ")))
}

/// A mapping's entries, keys as text, in file order.
fn mapping<'a>(value: &'a Yaml, at: &str) -> Result<Vec<(String, &'a Yaml)>, ComposeError> {
    match value {
        Yaml::Hash(h) => h.iter().map(|(k, v)| Ok((scalar(k, at)?, v))).collect(),
        Yaml::Null => Ok(Vec::new()),
        _ => Err(error(at, "expected a mapping")),
    }
}

/// A scalar as text (YAML reads `60` and `true` as numbers and booleans).
fn scalar(value: &Yaml, at: &str) -> Result<String, ComposeError> {
    match value {
        Yaml::String(s) | Yaml::Real(s) => Ok(s.clone()),
        Yaml::Integer(i) => Ok(i.to_string()),
        Yaml::Boolean(b) => Ok(b.to_string()),
        _ => Err(error(at, "expected a single value")),
    }
}

fn list<'a>(value: &'a Yaml, at: &str) -> Result<&'a [Yaml], ComposeError> {
    match value {
        Yaml::Array(a) => Ok(a),
        _ => Err(error(at, "expected a list")),
    }
}

fn read_service(spec: &Yaml, at: &str) -> Result<StackService, ComposeError> {
    let mut s = StackService {
        image: None,
        ports: Vec::new(),
        mode: Mode::Replicated(1),
        volumes: Vec::new(),
        sysctls: BTreeMap::new(),
        environment: BTreeMap::new(),
    };
    let known = ["image", "ports", "deploy", "volumes", "sysctls", "environment"];
    let (mut mode, mut replicas) = (None, None);
    for (key, value) in mapping(spec, at)? {
        let here = format!("{at}.{key}");
        match key.as_str() {
            "image" => s.image = Some(scalar(value, &here)?),
            "ports" => {
                for (i, p) in list(value, &here)?.iter().enumerate() {
                    s.ports.push(read_port(p, &format!("{here}[{i}]"))?);
                }
            }
            "deploy" => {
                for (key, value) in mapping(value, &here)? {
                    let there = format!("{here}.{key}");
                    match key.as_str() {
                        "mode" => mode = Some(scalar(value, &there)?),
                        "replicas" => {
                            let n = scalar(value, &there)?;
                            replicas =
                                Some(n.parse::<u64>().map_err(|_| error(&there, format!("{n:?} is not a count")))?);
                        }
                        other => return Err(unknown(other, &here, &["mode", "replicas"])),
                    }
                }
            }
            "volumes" => {
                for (i, v) in list(value, &here)?.iter().enumerate() {
                    s.volumes.push(read_volume(v, &format!("{here}[{i}]"))?);
                }
            }
            "sysctls" => s.sysctls = assignments(value, &here)?,
            "environment" => s.environment = assignments(value, &here)?,
            other => return Err(unknown(other, at, &known)),
        }
    }
    s.mode = match (mode.as_deref(), replicas) {
        (None | Some("replicated"), n) => Mode::Replicated(n.unwrap_or(1)),
        (Some("global"), None) => Mode::Global,
        (Some("global"), Some(_)) => return Err(error(&format!("{at}.deploy"), "a global service has no replicas")),
        (Some(other), _) => {
            return Err(error(&format!("{at}.deploy.mode"), format!("{other:?} is not replicated or global")))
        }
    };
    Ok(s)
}

/// `["k=v", …]` or `{k: v, …}`.
fn assignments(value: &Yaml, at: &str) -> Result<BTreeMap<String, String>, ComposeError> {
    let mut out = BTreeMap::new();
    match value {
        Yaml::Array(items) => {
            for item in items {
                let text = scalar(item, at)?;
                let Some((k, v)) = text.split_once('=') else {
                    return Err(error(
                        at,
                        format!("{text:?} has no value (the deployer does not take values from its own environment)"),
                    ));
                };
                out.insert(k.to_owned(), v.to_owned());
            }
        }
        _ => {
            for (k, v) in mapping(value, at)? {
                if matches!(v, Yaml::Null) {
                    return Err(error(
                        &format!("{at}.{k}"),
                        "no value (the deployer does not take values from its own environment)",
                    ));
                }
                out.insert(k.clone(), scalar(v, &format!("{at}.{k}"))?);
            }
        }
    }
    Ok(out)
}

fn port_number(text: &str, at: &str) -> Result<u16, ComposeError> {
    text.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| error(at, format!("{text:?} is not a port")))
}

/// `"80"`, `"80:8080"`, `"80:8080/udp"`, or the long form (`target`,
/// `published`, `protocol`, `mode`).
fn read_port(value: &Yaml, at: &str) -> Result<Port, ComposeError> {
    if let Yaml::Hash(_) = value {
        let mut port = Port { target: 0, published: None, protocol: "tcp".into(), host_mode: false };
        for (key, value) in mapping(value, at)? {
            let here = format!("{at}.{key}");
            let text = scalar(value, &here)?;
            match key.as_str() {
                "target" => port.target = port_number(&text, &here)?,
                "published" => port.published = Some(port_number(&text, &here)?),
                "protocol" => port.protocol = text,
                "mode" => {
                    port.host_mode = match text.as_str() {
                        "host" => true,
                        "ingress" => false,
                        _ => return Err(error(&here, format!("{text:?} is not host or ingress"))),
                    }
                }
                other => return Err(unknown(other, at, &["target", "published", "protocol", "mode"])),
            }
        }
        if port.target == 0 {
            return Err(error(at, "no target port"));
        }
        if port.protocol != "tcp" && port.protocol != "udp" {
            return Err(error(&format!("{at}.protocol"), format!("{:?} is not tcp or udp", port.protocol)));
        }
        return Ok(port);
    }
    let text = scalar(value, at)?;
    let (ports, protocol) = match text.split_once('/') {
        Some((p, proto @ ("tcp" | "udp"))) => (p, proto),
        Some((_, proto)) => return Err(error(at, format!("{proto:?} is not tcp or udp"))),
        None => (text.as_str(), "tcp"),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let (published, target) = match parts.as_slice() {
        [target] => (None, port_number(target, at)?),
        [published, target] => (Some(port_number(published, at)?), port_number(target, at)?),
        _ => {
            return Err(error(
                at,
                format!("{text:?}: a host address or port range cannot be published by a swarm service"),
            ))
        }
    };
    Ok(Port { target, published, protocol: protocol.into(), host_mode: false })
}

/// `"/host:/path[:ro]"` (a bind) or `"name:/path[:ro]"` (a named volume).
fn read_volume(value: &Yaml, at: &str) -> Result<Volume, ComposeError> {
    let text = scalar(value, at).map_err(|_| error(at, "expected SOURCE:TARGET[:ro] (the long form is not read)"))?;
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [source, target] => (*source, *target, false),
        [source, target, "ro"] => (*source, *target, true),
        [source, target, "rw"] => (*source, *target, false),
        _ => return Err(error(at, format!("{text:?} is not SOURCE:TARGET[:ro|rw]"))),
    };
    if !target.starts_with('/') {
        return Err(error(at, format!("the target {target:?} is not an absolute path")));
    }
    let source = if source.starts_with('/') {
        VolumeSource::Bind(source.to_owned())
    } else if source.starts_with('.') || source.starts_with('~') {
        return Err(error(
            at,
            format!("{source:?}: a relative path means nothing on a swarm node; give an absolute one"),
        ));
    } else {
        VolumeSource::Named(source.to_owned())
    };
    Ok(Volume { source, target: target.to_owned(), read_only })
}

/// Creates the overlay networks `spec` attaches to that do not exist yet
/// (a stack's `<stack>_default`), labelled as the stack's, as `docker
/// stack deploy` does before it creates the services.
pub(crate) async fn ensure_networks(
    docker: &bollard::Docker,
    spec: &ServiceSpec,
) -> Result<Vec<String>, bollard::errors::Error> {
    let mut created = Vec::new();
    let networks = spec.task_template.as_ref().and_then(|t| t.networks.clone()).unwrap_or_default();
    for target in networks.into_iter().filter_map(|n| n.target) {
        match docker.inspect_network(&target, None::<bollard::query_parameters::InspectNetworkOptions>).await {
            Ok(_) => continue,
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(e) => return Err(e),
        }
        let labels = spec.labels.clone().unwrap_or_default().into_iter().filter(|(k, _)| k == STACK_LABEL).collect();
        let request = bollard::models::NetworkCreateRequest {
            name: target.clone(),
            driver: Some("overlay".into()),
            labels: Some(labels),
            ..Default::default()
        };
        match docker.create_network(request).await {
            Ok(_) => created.push(target),
            // Another service of the stack, created at the same time, made it.
            Err(e) => {
                if docker
                    .inspect_network(&target, None::<bollard::query_parameters::InspectNetworkOptions>)
                    .await
                    .is_err()
                {
                    return Err(e);
                }
            }
        }
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ocaml.org seed's infrastructure stack, as its Ansible playbook
    /// gives it to `docker_stack`.
    const SEED: &str = r#"
version: "3.7"
services:
  caddy:
    deploy:
      mode: global
    ports:
      - target: 80
        published: 80
        protocol: tcp
        mode: host
      - target: 443
        published: 443
        protocol: tcp
        mode: host
    image: caddy
    volumes:
      - /etc/caddy:/etc/caddy:ro
      - caddy_data:/data
      - caddy_config:/config
  www:
    image: ocurrent/v3.ocaml.org-server:live
    sysctls:
      - 'net.ipv4.tcp_keepalive_time=60'
volumes:
  caddy_data:
  caddy_config:
"#;

    #[test]
    fn the_seeds_stack_is_read_as_docker_stack_deploy_reads_it() {
        let stack = Stack::parse("infra", SEED).unwrap();
        let caddy = &stack.services()["caddy"];
        assert_eq!(caddy.mode, Mode::Global);
        assert_eq!(
            caddy.ports,
            [80, 443].map(|p| Port { target: p, published: Some(p), protocol: "tcp".into(), host_mode: true })
        );
        assert_eq!(
            caddy.volumes[0],
            Volume { source: VolumeSource::Bind("/etc/caddy".into()), target: "/etc/caddy".into(), read_only: true }
        );
        assert_eq!(caddy.volumes[1].source, VolumeSource::Named("caddy_data".into()));
        let www = &stack.services()["www"];
        assert_eq!(www.mode, Mode::Replicated(1));
        assert_eq!(www.sysctls, BTreeMap::from([("net.ipv4.tcp_keepalive_time".into(), "60".into())]));

        let spec = stack.options("caddy").unwrap().create.unwrap();
        assert_eq!(spec.name.as_deref(), Some("infra_caddy"));
        assert!(spec.mode.as_ref().unwrap().global.is_some());
        let mounts = spec.task_template.as_ref().unwrap().container_spec.as_ref().unwrap().mounts.clone().unwrap();
        assert_eq!(mounts[1].source.as_deref(), Some("infra_caddy_data"));
        assert_eq!(mounts[1].typ, Some(MountType::VOLUME));
        let ports = spec.endpoint_spec.unwrap().ports.unwrap();
        assert_eq!(ports[0].publish_mode, Some(EndpointPortConfigPublishModeEnum::HOST));
        let network = &spec.task_template.unwrap().networks.unwrap()[0];
        assert_eq!(
            (network.target.as_deref(), network.aliases.clone()),
            (Some("infra_default"), Some(vec!["caddy".into()]))
        );
        // The seed's docker-compose.yml form: short ports (routing mesh).
        let short = Stack::parse("web", "version: '3'\nservices:\n  www:\n    image: x\n    ports: ['8080:80', '53/udp']\n    environment: {A: 1, B: 'two words'}\n    deploy: {replicas: 2}\n").unwrap();
        let www = &short.services()["www"];
        assert_eq!(www.ports[0], Port { target: 80, published: Some(8080), protocol: "tcp".into(), host_mode: false });
        assert_eq!(www.ports[1], Port { target: 53, published: None, protocol: "udp".into(), host_mode: false });
        assert_eq!(www.environment["A"], "1");
        assert_eq!(www.mode, Mode::Replicated(2));
    }

    #[test]
    fn what_the_deployer_would_not_create_as_docker_does_is_refused_by_name() {
        let cases = [
            ("services:\n  www:\n    image: x\n    healthcheck: {test: true}\n", "services.www.healthcheck"),
            ("services:\n  www:\n    image: x\n    deploy: {mode: global, replicas: 2}\n", "services.www.deploy"),
            ("services:\n  www:\n    image: x\n    deploy: {resources: {}}\n", "services.www.deploy.resources"),
            ("services:\n  www:\n    image: x\n    volumes: ['data:/data']\n", "services.www.volumes"),
            ("services:\n  www:\n    image: x\n    volumes: ['./conf:/conf']\n", "services.www.volumes[0]"),
            ("services:\n  www:\n    image: x\n    ports: ['127.0.0.1:80:80']\n", "services.www.ports[0]"),
            (
                "services:\n  www:\n    image: x\n    ports: [{target: 80, mode: bridge}]\n",
                "services.www.ports[0].mode",
            ),
            ("services:\n  www:\n    image: x\n    environment: [TOKEN]\n", "services.www.environment"),
            ("networks: {}\nservices:\n  www: {image: x}\n", "networks"),
            ("version: '2.4'\nservices:\n  www: {image: x}\n", "version"),
            ("services:\n  'bad name': {image: x}\n", "services.bad name"),
            ("volumes:\n  data: {external: true}\nservices:\n  www: {image: x}\n", "volumes.data"),
        ];
        for (text, at) in cases {
            let e = Stack::parse("s", text).unwrap_err();
            assert_eq!(e.at, at, "{text}: {e}");
            assert!(e.to_string().contains(at), "{e}");
        }
        assert!(Stack::parse("s", "services: [").is_err());
        let stack = Stack::parse("s", "services:\n  www: {image: x}\n").unwrap();
        let e = stack.options("caddy").unwrap_err().to_string();
        assert!(e.contains("no service \"caddy\"") && e.contains("www"), "{e}");
    }
}
