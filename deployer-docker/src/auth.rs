//! Registry credentials: given as secrets, or read from a docker
//! `config.json` (`auths`, `credsStore`, `credHelpers`) the way the docker
//! CLI reads them. Every password found is registered with the job
//! registry, so that no log shows it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use deployer_core::Secret;
use serde::Deserialize;

use crate::error::DockerError;
use crate::image::DOCKER_HUB;

/// A user name and password (or token) for a registry.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or access token.
    pub password: Secret<String>,
}

impl Credentials {
    /// For bollard's requests to the daemon.
    pub(crate) fn for_daemon(&self, registry: &str) -> bollard::auth::DockerCredentials {
        bollard::auth::DockerCredentials {
            username: Some(self.username.clone()),
            password: Some(self.password.expose().clone()),
            serveraddress: Some(server_address(registry)),
            ..Default::default()
        }
    }
}

/// How a registry is named in `config.json` and to credential helpers.
fn server_address(registry: &str) -> String {
    if registry == DOCKER_HUB {
        "https://index.docker.io/v1/".to_owned()
    } else {
        registry.to_owned()
    }
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(rename = "credsStore", default)]
    creds_store: Option<String>,
    #[serde(rename = "credHelpers", default)]
    cred_helpers: HashMap<String, String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(rename = "identitytoken", default)]
    identity_token: Option<String>,
}

#[derive(Deserialize)]
struct HelperAnswer {
    #[serde(rename = "Username")]
    username: String,
    #[serde(rename = "Secret")]
    secret: String,
}

/// The registry credentials a [`Docker`](crate::Docker) uses.
#[derive(Clone)]
pub(crate) struct Auth {
    given: Arc<RwLock<HashMap<String, Credentials>>>,
    /// (registry, repository path prefix, credentials).
    repositories: Arc<RwLock<Vec<(String, String, Credentials)>>>,
    config: Arc<RwLock<Option<PathBuf>>>,
}

/// The keys under which `config.json` may list `registry`.
fn config_keys(registry: &str) -> Vec<String> {
    if registry == DOCKER_HUB {
        vec!["https://index.docker.io/v1/".into(), "index.docker.io".into(), "docker.io".into()]
    } else {
        vec![registry.to_owned(), format!("https://{registry}"), format!("http://{registry}")]
    }
}

/// Registers `c`'s password as a secret in every form it travels in: as
/// it is, inside `user:password` (a `Basic` header's base64), and
/// JSON-escaped (an `X-Registry-Auth` or `X-Registry-Config` header is the
/// base64 of JSON holding it); the register derives the base64 forms.
fn register(c: &Credentials) {
    let password = c.password.expose();
    deployer_core::register_secret(password);
    deployer_core::register_secret(&format!("{}:{password}", c.username));
    if let Ok(json) = serde_json::to_string(password) {
        deployer_core::register_secret(&json);
    }
}

impl Auth {
    pub(crate) fn new() -> Auth {
        Auth { given: Arc::default(), repositories: Arc::default(), config: Arc::default() }
    }

    /// Uses `credentials` for the repositories `registry/prefix…`
    /// (`docker.io`, `ocurrentbuilder/staging`), before any for the whole
    /// registry; the longest prefix wins.
    pub(crate) fn set_for_repository(&self, registry: &str, prefix: &str, credentials: Credentials) {
        register(&credentials);
        let mut given = self.repositories.write().unwrap_or_else(|e| e.into_inner());
        given.retain(|(r, p, _)| !(r == registry && p == prefix));
        given.push((registry.to_owned(), prefix.to_owned(), credentials));
    }

    /// The credentials for `repository` in `registry`: given for that
    /// repository (or a path prefix of it), else for the registry.
    pub(crate) async fn lookup_repository(
        &self,
        registry: &str,
        repository: &str,
    ) -> Result<Option<Credentials>, DockerError> {
        let found = {
            let given = self.repositories.read().unwrap_or_else(|e| e.into_inner());
            given
                .iter()
                .filter(|(r, p, _)| {
                    r == registry
                        && (repository == p
                            || repository.strip_prefix(p.as_str()).is_some_and(|rest| rest.starts_with('/')))
                })
                .max_by_key(|(_, p, _)| p.len())
                .map(|(_, _, c)| c.clone())
        };
        match found {
            Some(c) => Ok(Some(c)),
            None => self.lookup(registry).await,
        }
    }

    /// Uses `credentials` for `registry`.
    pub(crate) fn set(&self, registry: &str, credentials: Credentials) {
        register(&credentials);
        self.given.write().unwrap_or_else(|e| e.into_inner()).insert(registry.to_owned(), credentials);
    }

    /// The registries with credentials given as secrets.
    pub(crate) fn given_registries(&self) -> Vec<String> {
        self.given.read().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    /// Reads credentials from the docker `config.json` in `dir` too.
    pub(crate) fn use_config_dir(&self, dir: &Path) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = Some(dir.to_owned());
    }

    /// The credentials for `registry`, if any.
    pub(crate) async fn lookup(&self, registry: &str) -> Result<Option<Credentials>, DockerError> {
        if let Some(c) = self.given.read().unwrap_or_else(|e| e.into_inner()).get(registry) {
            return Ok(Some(c.clone()));
        }
        let dir = self.config.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(dir) = dir else { return Ok(None) };
        let path = dir.join("config.json");
        let config: ConfigFile = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map_err(|e| DockerError::Config(format!("{} is not valid JSON: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(DockerError::Config(format!("cannot read {}: {e}", path.display()))),
        };
        let helper = config_keys(registry)
            .iter()
            .find_map(|k| config.cred_helpers.get(k))
            .cloned()
            .or(config.creds_store.clone());
        if let Some(helper) = helper {
            if let Some(found) = self.ask_helper(&helper, registry).await? {
                return Ok(Some(found));
            }
        }
        let Some(entry) = config_keys(registry).iter().find_map(|k| config.auths.get(k)) else { return Ok(None) };
        let found = if let Some(token) = &entry.identity_token {
            Credentials { username: "<token>".into(), password: Secret::new(token.clone()) }
        } else if let Some(auth) = &entry.auth {
            let decoded = base64::engine::general_purpose::STANDARD.decode(auth.trim()).map_err(|_| {
                DockerError::Config(format!("the auth of {registry} in {} is not base64", path.display()))
            })?;
            let text = String::from_utf8(decoded).map_err(|_| {
                DockerError::Config(format!("the auth of {registry} in {} is not text", path.display()))
            })?;
            let (user, pass) = text.split_once(':').ok_or_else(|| {
                DockerError::Config(format!("the auth of {registry} in {} is not user:password", path.display()))
            })?;
            Credentials { username: user.to_owned(), password: Secret::new(pass.to_owned()) }
        } else if let (Some(user), Some(pass)) = (&entry.username, &entry.password) {
            Credentials { username: user.clone(), password: Secret::new(pass.clone()) }
        } else {
            return Ok(None);
        };
        register(&found);
        Ok(Some(found))
    }

    /// Asks `docker-credential-<helper>` for `registry`'s credentials.
    async fn ask_helper(&self, helper: &str, registry: &str) -> Result<Option<Credentials>, DockerError> {
        use tokio::io::AsyncWriteExt;
        if helper.is_empty() || !helper.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(DockerError::Config(format!("the credential helper {helper:?} is not a helper name")));
        }
        let program = format!("docker-credential-{helper}");
        let mut child = tokio::process::Command::new(&program)
            .arg("get")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| DockerError::Config(format!("cannot run {program} (for {registry}): {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(server_address(registry).as_bytes()).await;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| DockerError::Config(format!("{program} (for {registry}): {e}")))?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
            if said.contains("credentials not found") {
                return Ok(None);
            }
            return Err(DockerError::Config(format!("{program} failed for {registry}: {}", said.trim())));
        }
        let answer: HelperAnswer = serde_json::from_slice(&out.stdout)
            .map_err(|e| DockerError::Config(format!("{program} gave no credentials for {registry}: {e}")))?;
        let found = Credentials { username: answer.username, password: Secret::new(answer.secret) };
        register(&found);
        Ok(Some(found))
    }
}
