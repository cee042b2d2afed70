//! Docker contexts, resolved exactly as the docker CLI resolves them, so
//! that a config folder made with `docker --config DIR context create`
//! works unchanged.
//!
//! Which context: an explicit name; else `DOCKER_HOST` (the default
//! context); else `DOCKER_CONTEXT`; else `currentContext` in
//! `config.json`; else `default`. A named context is
//! `contexts/meta/<sha256 of its name>/meta.json` in the config directory
//! (`DOCKER_CONFIG`, or `~/.docker`), its TLS material in
//! `contexts/tls/<sha256 of its name>/docker/{ca,cert,key}.pem`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::DockerError;

/// The default daemon socket.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// TLS material for a TCP endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA that signed the daemon's certificate.
    pub ca: PathBuf,
    /// The client certificate.
    pub cert: PathBuf,
    /// The client key.
    pub key: PathBuf,
}

/// Where a Docker daemon is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket on this machine.
    Unix(PathBuf),
    /// `tcp://host:port`, with TLS material (client certificates) or none.
    Tcp {
        /// `host:port`.
        address: String,
        /// The TLS material, if TLS is used.
        tls: Option<TlsFiles>,
    },
    /// `ssh://[user@]host[:port]`: the daemon's socket on that host, through
    /// an SSH tunnel.
    Ssh {
        /// `[user@]host[:port]`.
        destination: String,
        /// The daemon's socket there.
        socket: String,
    },
}

impl Endpoint {
    /// Reads a `DOCKER_HOST`-style address.
    pub fn parse(address: &str, tls: Option<TlsFiles>) -> Result<Endpoint, DockerError> {
        let bad = |why: &str| DockerError::Config(format!("the Docker host {address:?}: {why}"));
        if let Some(path) = address.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(bad("a unix:// socket needs an absolute path"));
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = address.strip_prefix("tcp://").or_else(|| address.strip_prefix("https://")) {
            let hostport = rest.trim_end_matches('/');
            if hostport.is_empty() || hostport.contains('/') {
                return Err(bad("expected tcp://host:port"));
            }
            let hostport = if hostport.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
                hostport.to_owned()
            } else {
                format!("{hostport}:{}", if tls.is_some() { 2376 } else { 2375 })
            };
            return Ok(Endpoint::Tcp { address: hostport, tls });
        }
        if let Some(rest) = address.strip_prefix("ssh://") {
            let destination = rest.trim_end_matches('/');
            if destination.is_empty() || destination.contains('/') {
                return Err(bad("expected ssh://[user@]host[:port]"));
            }
            return Ok(Endpoint::Ssh { destination: destination.to_owned(), socket: DEFAULT_SOCKET.to_owned() });
        }
        Err(bad("expected unix://, tcp:// or ssh://"))
    }
}

/// The docker CLI's configuration directory: `DOCKER_CONFIG`, or
/// `~/.docker`.
pub fn config_dir() -> PathBuf {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default().join(".docker"),
    }
}

#[derive(Deserialize)]
struct ConfigFile {
    #[serde(rename = "currentContext", default)]
    current_context: Option<String>,
}

#[derive(Deserialize)]
struct Meta {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Endpoints", default)]
    endpoints: std::collections::HashMap<String, MetaEndpoint>,
}

#[derive(Deserialize)]
struct MetaEndpoint {
    #[serde(rename = "Host", default)]
    host: Option<String>,
    #[serde(rename = "SkipTLSVerify", default)]
    skip_tls_verify: bool,
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The name of the context the docker CLI would use, given an explicit
/// one (its `--context`) or none, and the environment.
pub fn context_name(explicit: Option<&str>, dir: &Path) -> Result<String, DockerError> {
    let env = |var| std::env::var(var).ok().filter(|v: &String| !v.is_empty());
    choose_context(explicit, env("DOCKER_HOST").is_some(), env("DOCKER_CONTEXT"), dir)
}

/// The CLI's order: `--context`, then `DOCKER_HOST` (the default context),
/// then `DOCKER_CONTEXT`, then `currentContext`, then `default`.
fn choose_context(
    explicit: Option<&str>,
    docker_host_set: bool,
    docker_context: Option<String>,
    dir: &Path,
) -> Result<String, DockerError> {
    if let Some(name) = explicit {
        return Ok(name.to_owned());
    }
    if docker_host_set {
        return Ok("default".to_owned());
    }
    if let Some(name) = docker_context {
        return Ok(name);
    }
    let path = dir.join("config.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let config: ConfigFile = serde_json::from_str(&text)
                .map_err(|e| DockerError::Config(format!("{} is not valid JSON: {e}", path.display())))?;
            Ok(config.current_context.filter(|c| !c.is_empty()).unwrap_or_else(|| "default".to_owned()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok("default".to_owned()),
        Err(e) => Err(DockerError::Config(format!("cannot read {}: {e}", path.display()))),
    }
}

/// The default context: `DOCKER_HOST` (with `DOCKER_TLS_VERIFY` and
/// `DOCKER_CERT_PATH`), or the default socket.
fn default_endpoint(dir: &Path) -> Result<Endpoint, DockerError> {
    let Some(host) = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()) else {
        return Ok(Endpoint::Unix(PathBuf::from(DEFAULT_SOCKET)));
    };
    let tls = match std::env::var("DOCKER_TLS_VERIFY").ok().filter(|v| !v.is_empty()) {
        Some(_) => {
            let certs = std::env::var_os("DOCKER_CERT_PATH").map(PathBuf::from).unwrap_or_else(|| dir.to_owned());
            Some(TlsFiles { ca: certs.join("ca.pem"), cert: certs.join("cert.pem"), key: certs.join("key.pem") })
        }
        None => None,
    };
    Endpoint::parse(&host, tls)
}

/// The endpoint of the context `name` in the config directory `dir`.
pub fn resolve(name: &str, dir: &Path) -> Result<Endpoint, DockerError> {
    if name == "default" {
        return default_endpoint(dir);
    }
    let id = sha256_hex(name);
    let meta_path = dir.join("contexts").join("meta").join(&id).join("meta.json");
    let text = std::fs::read_to_string(&meta_path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DockerError::Config(format!(
                "unknown Docker context {name:?} (no {}; create it with `docker --config {} context create {name} …`)",
                meta_path.display(),
                dir.display()
            ))
        } else {
            DockerError::Config(format!("cannot read {}: {e}", meta_path.display()))
        }
    })?;
    let meta: Meta = serde_json::from_str(&text)
        .map_err(|e| DockerError::Config(format!("{} is not a Docker context: {e}", meta_path.display())))?;
    if meta.name != name {
        return Err(DockerError::Config(format!(
            "{} names the context {:?}, not {name:?}",
            meta_path.display(),
            meta.name
        )));
    }
    let docker = meta.endpoints.get("docker").ok_or_else(|| {
        DockerError::Config(format!("the Docker context {name:?} has no docker endpoint ({})", meta_path.display()))
    })?;
    let host = docker.host.clone().filter(|h| !h.is_empty()).ok_or_else(|| {
        DockerError::Config(format!("the Docker context {name:?} has no host ({})", meta_path.display()))
    })?;
    let tls_dir = dir.join("contexts").join("tls").join(&id).join("docker");
    let files = TlsFiles { ca: tls_dir.join("ca.pem"), cert: tls_dir.join("cert.pem"), key: tls_dir.join("key.pem") };
    let present = [&files.ca, &files.cert, &files.key].iter().filter(|f| f.exists()).count();
    let tls = match present {
        0 => None,
        3 => Some(files),
        _ => {
            return Err(DockerError::Config(format!(
                "the Docker context {name:?} has only part of its TLS material in {} (ca.pem, cert.pem and key.pem \
                 are all needed: client certificates)",
                tls_dir.display()
            )))
        }
    };
    if docker.skip_tls_verify {
        return Err(DockerError::Config(format!(
            "the Docker context {name:?} skips TLS verification, which is refused: give it the daemon's CA"
        )));
    }
    Endpoint::parse(&host, tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("unix:///run/docker.sock", None).unwrap(),
            Endpoint::Unix("/run/docker.sock".into())
        );
        assert_eq!(
            Endpoint::parse("tcp://10.0.0.2", None).unwrap(),
            Endpoint::Tcp { address: "10.0.0.2:2375".into(), tls: None }
        );
        assert_eq!(
            Endpoint::parse("ssh://root@watch.ocaml.org", None).unwrap(),
            Endpoint::Ssh { destination: "root@watch.ocaml.org".into(), socket: DEFAULT_SOCKET.into() }
        );
        for bad in ["unix://relative", "ftp://x", "tcp://", "ssh://h/path", "/var/run/docker.sock"] {
            assert!(Endpoint::parse(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_context_folder_is_read_by_the_hash_of_the_name() {
        let dir = std::env::temp_dir().join(format!("deployer-docker-ctx-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let id = sha256_hex("awesome.ocaml.org");
        let meta = dir.join("contexts/meta").join(&id);
        std::fs::create_dir_all(&meta).unwrap();
        std::fs::write(
            meta.join("meta.json"),
            r#"{"Name":"awesome.ocaml.org","Metadata":{"Description":"awesome"},"Endpoints":{"docker":{"Host":"ssh://awesome.ocaml.org","SkipTLSVerify":false}}}"#,
        )
        .unwrap();
        assert_eq!(
            resolve("awesome.ocaml.org", &dir).unwrap(),
            Endpoint::Ssh { destination: "awesome.ocaml.org".into(), socket: DEFAULT_SOCKET.into() }
        );
        let e = resolve("nope", &dir).unwrap_err().to_string();
        assert!(e.contains("unknown Docker context \"nope\"") && e.contains(&sha256_hex("nope")), "{e}");
        assert_eq!(choose_context(None, false, None, &dir).unwrap(), "default", "no config.json");
        std::fs::write(dir.join("config.json"), r#"{"currentContext":"awesome.ocaml.org"}"#).unwrap();
        assert_eq!(choose_context(None, false, None, &dir).unwrap(), "awesome.ocaml.org");
        assert_eq!(choose_context(None, false, Some("other".into()), &dir).unwrap(), "other");
        assert_eq!(choose_context(None, true, Some("other".into()), &dir).unwrap(), "default", "DOCKER_HOST wins");
        assert_eq!(choose_context(Some("x"), true, None, &dir).unwrap(), "x", "--context wins over all");
        // Half the TLS material is an error, not a silent plain connection.
        let tls = dir.join("contexts/tls").join(&id).join("docker");
        std::fs::create_dir_all(&tls).unwrap();
        std::fs::write(tls.join("ca.pem"), "x").unwrap();
        let e = resolve("awesome.ocaml.org", &dir).unwrap_err().to_string();
        assert!(e.contains("only part of its TLS material"), "{e}");
    }
}
