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
    /// Reads a `DOCKER_HOST`-style address as the docker CLI does: empty is
    /// the default socket; no scheme is `tcp://`; `unix://` alone is the
    /// default socket; `tcp://` alone is `localhost`; a missing host is
    /// `localhost` and a missing port 2375 (2376 with TLS); a port that is
    /// not a number is refused. Unlike the CLI, an address with a path
    /// (`tcp://h:2375/base`, or a bare `/var/run/docker.sock`, which the CLI
    /// would read as `tcp://localhost:2375/var/run/docker.sock`) is refused
    /// with the reason, not used.
    pub fn parse(address: &str, tls: Option<TlsFiles>) -> Result<Endpoint, DockerError> {
        let bad = |why: &str| DockerError::Config(format!("the Docker host {address:?}: {why}"));
        let trimmed = address.trim();
        if trimmed.is_empty() {
            return Ok(Endpoint::Unix(PathBuf::from(DEFAULT_SOCKET)));
        }
        let (scheme, rest) = trimmed.split_once("://").unwrap_or(("tcp", trimmed));
        match scheme {
            "unix" => {
                if rest.is_empty() {
                    return Ok(Endpoint::Unix(PathBuf::from(DEFAULT_SOCKET)));
                }
                if !rest.starts_with('/') || rest.contains("://") {
                    return Err(bad("a unix:// socket needs an absolute path"));
                }
                Ok(Endpoint::Unix(PathBuf::from(rest)))
            }
            "tcp" | "https" => {
                let default_port = if tls.is_some() { 2376 } else { 2375 };
                let hostport = rest.strip_suffix('/').unwrap_or(rest);
                if hostport.contains('/') {
                    return Err(bad("expected tcp://host:port (a path after it, or a bare path, is not used here: \
                                    a socket is unix:///path)"));
                }
                let (host, port) = split_host_port(hostport).ok_or_else(|| bad("expected tcp://host:port"))?;
                let host = if host.is_empty() { "localhost" } else { host };
                if !host_ok(host) {
                    return Err(bad(&format!(
                        "{host:?} is not a host name or an IP address (an IPv6 address goes in brackets)"
                    )));
                }
                let port = match port {
                    None | Some("") => default_port,
                    Some(p) => p.parse::<u16>().map_err(|_| bad(&format!("{p:?} is not a port")))?,
                };
                let host =
                    if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_owned() };
                Ok(Endpoint::Tcp { address: format!("{host}:{port}"), tls })
            }
            "ssh" => {
                let destination = rest.trim_end_matches('/');
                if destination.is_empty() || destination.contains('/') {
                    return Err(bad("expected ssh://[user@]host[:port]"));
                }
                Ok(Endpoint::Ssh { destination: destination.to_owned(), socket: DEFAULT_SOCKET.to_owned() })
            }
            _ => Err(bad("expected unix://, tcp:// or ssh://")),
        }
    }
}

/// A host as a URL may have it: a name of letters, digits, `-`, `.` and
/// `_`, or an IPv6 address in brackets (no zone: a deployer dials no
/// link-local daemon), as Go's `url.Parse` refuses anything else.
fn host_ok(host: &str) -> bool {
    match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)),
    }
}

/// `host[:port]` or `[v6][:port]`: the host (brackets kept) and the port
/// text after a `:`, if any. `None` for an unclosed bracket or a bare IPv6
/// address (ambiguous: where would its port be?).
fn split_host_port(hostport: &str) -> Option<(&str, Option<&str>)> {
    if hostport.starts_with('[') {
        let close = hostport.find(']')?;
        let (host, after) = hostport.split_at(close + 1);
        return match after {
            "" => Some((host, None)),
            a => Some((host, Some(a.strip_prefix(':')?))),
        };
    }
    match hostport.matches(':').count() {
        0 => Some((hostport, None)),
        1 => hostport.split_once(':').map(|(h, p)| (h, Some(p))),
        _ => None,
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
        for bad in ["unix://relative", "ftp://x", "ssh://h/path", "/var/run/docker.sock"] {
            assert!(Endpoint::parse(bad, None).is_err(), "{bad}");
        }
    }

    /// `DOCKER_HOST` values this parser used to read otherwise than the
    /// docker CLI (moby's `opts/hosts.go`, `ParseTCPAddr` and
    /// `parseSimpleProtoAddr`) does.
    #[test]
    fn docker_host_values_as_the_cli_reads_them() {
        let tcp = |address: &str| Endpoint::Tcp { address: address.into(), tls: None };
        let cases = [
            ("tcp://host:", tcp("host:2375")),
            ("tcp://:2375", tcp("localhost:2375")),
            ("tcp://", tcp("localhost:2375")),
            ("10.0.0.2:2376", tcp("10.0.0.2:2376")),
            ("builder", tcp("builder:2375")),
            ("tcp://[::1]:2375", tcp("[::1]:2375")),
            ("tcp://[::1]", tcp("[::1]:2375")),
            ("tcp://[::1]:", tcp("[::1]:2375")),
            ("unix://", Endpoint::Unix(DEFAULT_SOCKET.into())),
            ("", Endpoint::Unix(DEFAULT_SOCKET.into())),
        ];
        for (text, want) in cases {
            assert_eq!(Endpoint::parse(text, None).unwrap_or_else(|e| panic!("{text}: {e}")), want, "{text}");
        }
        for bad in ["tcp://host:notaport", "tcp://host:99999", "tcp://[::1", "tcp://::1:2375", "tcp://h:1/base"] {
            assert!(Endpoint::parse(bad, None).is_err(), "{bad} was accepted");
        }
        let e = Endpoint::parse("tcp://host:notaport", None).unwrap_err().to_string();
        assert!(e.contains("\"notaport\" is not a port"), "{e}");
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
