//! The registry HTTP API (distribution v2 / OCI), for what the Engine API
//! cannot do: reading a tag's digest without pulling, and pushing a
//! multi-architecture manifest list. Token (`Bearer`) and `Basic`
//! authentication; plain HTTP only for loopback registries, as Docker does.

use std::sync::Arc;

use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::auth::Credentials;
use crate::error::DockerError;

/// An OCI image index.
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// A Docker manifest list.
pub(crate) const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A platform, as manifests name one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// `amd64`, `arm64`, …
    pub architecture: String,
    /// `linux`, …
    pub os: String,
    /// `v8` for arm64, …
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub variant: Option<String>,
}

/// A manifest, as an index refers to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// Its media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// `sha256:…` of its bytes.
    pub digest: String,
    /// Its length in bytes.
    pub size: u64,
    /// The platform it is for.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub platform: Option<Platform>,
}

#[derive(Deserialize)]
struct ImageManifest {
    config: ConfigRef,
    #[serde(default)]
    layers: Vec<ConfigRef>,
}

#[derive(Deserialize)]
struct ConfigRef {
    digest: String,
}

#[derive(Deserialize)]
struct ImageConfig {
    architecture: String,
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
struct IndexBody {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// A client for one registry.
pub(crate) struct Registry {
    http: reqwest::Client,
    registry: String,
    base: String,
    credentials: Option<Credentials>,
    /// The `Authorization` that worked last.
    authorization: tokio::sync::Mutex<Option<String>>,
}

/// Whether `authority` (`host`, `host:port`, `[v6]:port`) is on this
/// machine, by its parsed address: `localhost`, `127.0.0.0/8` or `::1`.
/// A name such as `127.example.com` is not (plain HTTP and plain TCP are
/// allowed only on loopback).
pub(crate) fn is_loopback(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, after)) if after.is_empty() || after.starts_with(':') => ip,
            _ => return false,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
            Some(_) => return false,
            None => authority,
        }
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A TLS client with the system's roots and aws-lc-rs.
pub(crate) fn http_client() -> Result<reqwest::Client, DockerError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DockerError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(std::time::Duration::from_secs(120))
        .build()
        .map_err(|e| DockerError::Config(format!("an HTTP client: {e}")))
}

/// A manifest response's media type (without parameters); Docker's
/// image manifest when the registry does not say.
fn media_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
        .unwrap_or_else(|| DOCKER_MANIFEST.to_owned())
}

/// `sha256:…` of `bytes`.
fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// One `key="value"` parameter of a `WWW-Authenticate` challenge.
fn challenge_param(challenge: &str, key: &str) -> Option<String> {
    let start = challenge.find(&format!("{key}=\""))? + key.len() + 2;
    let end = challenge[start..].find('"')? + start;
    Some(challenge[start..end].to_owned())
}

impl Registry {
    pub(crate) fn new(http: reqwest::Client, registry: &str, credentials: Option<Credentials>) -> Registry {
        let host = if registry == crate::image::DOCKER_HUB { "registry-1.docker.io" } else { registry };
        let scheme = if is_loopback(registry) { "http" } else { "https" };
        Registry {
            http,
            registry: registry.to_owned(),
            base: format!("{scheme}://{host}/v2"),
            credentials,
            authorization: tokio::sync::Mutex::new(None),
        }
    }

    fn error(&self, why: impl Into<String>) -> DockerError {
        DockerError::Registry { registry: self.registry.clone(), why: why.into() }
    }

    /// Sends a request, answering an authentication challenge once.
    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Option<Vec<u8>>,
        scope: &str,
    ) -> Result<reqwest::Response, DockerError> {
        for attempt in 0..2 {
            let mut request = self.http.request(method.clone(), url).headers(headers.clone());
            if let Some(auth) = self.authorization.lock().await.clone() {
                request = request.header(AUTHORIZATION, auth);
            }
            if let Some(body) = &body {
                request = request.body(body.clone());
            }
            let response = request.send().await.map_err(|e| DockerError::Unanswered {
                whom: format!("registry {}", self.registry),
                what: format!("{method} {url}"),
                why: e.to_string(),
            })?;
            if response.status() != StatusCode::UNAUTHORIZED || attempt == 1 {
                return Ok(response);
            }
            let challenge =
                response.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let authorization = self.answer(&challenge, scope).await?;
            *self.authorization.lock().await = Some(authorization);
        }
        unreachable!("the loop returns")
    }

    /// The `Authorization` header answering `challenge`.
    async fn answer(&self, challenge: &str, scope: &str) -> Result<String, DockerError> {
        let basic = |c: &Credentials| {
            use base64::Engine as _;
            let pair = format!("{}:{}", c.username, c.password.expose());
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
        };
        if challenge.to_ascii_lowercase().starts_with("basic") {
            let c = self.credentials.as_ref().ok_or_else(|| self.error("it asks for credentials, and none are set"))?;
            return Ok(basic(c));
        }
        let realm = challenge_param(challenge, "realm")
            .ok_or_else(|| self.error(format!("unexpected authentication challenge {challenge:?}")))?;
        let mut url = reqwest::Url::parse(&realm).map_err(|e| self.error(format!("bad token realm {realm:?}: {e}")))?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = challenge_param(challenge, "service") {
                query.append_pair("service", &service);
            }
            for scope in scope.split(' ') {
                query.append_pair("scope", scope);
            }
        }
        let mut request = self.http.get(url);
        if let Some(c) = &self.credentials {
            request = request.header(AUTHORIZATION, basic(c));
        }
        let response = request.send().await.map_err(|e| self.error(format!("asking for a token: {e}")))?;
        if !response.status().is_success() {
            return Err(self.error(format!("the token service refused ({}): wrong credentials?", response.status())));
        }
        let answer: TokenAnswer = response.json().await.map_err(|e| self.error(format!("a token answer: {e}")))?;
        let token = answer.token.or(answer.access_token).ok_or_else(|| self.error("the token answer has no token"))?;
        Ok(format!("Bearer {token}"))
    }

    /// The descriptor of `reference` (a tag or digest) in `repository`, with
    /// its platform when it is an image manifest.
    pub(crate) async fn descriptor(&self, repository: &str, reference: &str) -> Result<Descriptor, DockerError> {
        let url = format!("{}/{repository}/manifests/{reference}", self.base);
        let mut headers = HeaderMap::new();
        let accept = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST].join(", ");
        headers.insert(ACCEPT, HeaderValue::from_str(&accept).expect("ASCII"));
        let scope = format!("repository:{repository}:pull");
        let response = self.send(Method::GET, &url, headers, None, &scope).await?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(self.error(format!("no manifest {repository}:{reference} ({status}): {}", body.trim())));
        }
        let media_type = media_type(&response);
        let bytes = response.bytes().await.map_err(|e| self.error(format!("reading {url}: {e}")))?;
        let digest = sha256(&bytes);
        if reference.starts_with("sha256:") && digest != reference {
            return Err(self.error(format!("the manifest {reference} has the digest {digest}")));
        }
        let platform = if media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST {
            let manifest: ImageManifest =
                serde_json::from_slice(&bytes).map_err(|e| self.error(format!("manifest {reference}: {e}")))?;
            Some(self.platform(repository, &manifest.config.digest).await?)
        } else {
            None
        };
        Ok(Descriptor { media_type, digest, size: bytes.len() as u64, platform })
    }

    /// The platform in an image's config blob.
    async fn platform(&self, repository: &str, config: &str) -> Result<Platform, DockerError> {
        let url = format!("{}/{repository}/blobs/{config}", self.base);
        let scope = format!("repository:{repository}:pull");
        let response = self.send(Method::GET, &url, HeaderMap::new(), None, &scope).await?;
        if !response.status().is_success() {
            return Err(self.error(format!("no config blob {config} ({})", response.status())));
        }
        let config: ImageConfig = response.json().await.map_err(|e| self.error(format!("config {config}: {e}")))?;
        Ok(Platform { architecture: config.architecture, os: config.os, variant: config.variant })
    }

    /// The manifests listed by the index or list at `reference`.
    pub(crate) async fn index(&self, repository: &str, reference: &str) -> Result<Vec<Descriptor>, DockerError> {
        let url = format!("{}/{repository}/manifests/{reference}", self.base);
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_str(&format!("{OCI_INDEX}, {DOCKER_LIST}")).expect("ASCII"));
        let response = self.send(Method::GET, &url, headers, None, &format!("repository:{repository}:pull")).await?;
        if !response.status().is_success() {
            return Err(self.error(format!("no index {repository}:{reference} ({})", response.status())));
        }
        let body: IndexBody = response.json().await.map_err(|e| self.error(format!("index {reference}: {e}")))?;
        Ok(body.manifests)
    }

    /// Copies the image manifest `digest` from the repository `from` into
    /// `to` (on this registry): its blobs are mounted across repositories
    /// (copied when the registry will not mount them), then the manifest is
    /// put by digest. What `docker manifest create` does for images pushed
    /// elsewhere, so per-architecture images can be pushed to a staging
    /// repository.
    pub(crate) async fn copy_manifest(&self, from: &str, to: &str, digest: &str) -> Result<(), DockerError> {
        let scope = format!("repository:{to}:pull,push repository:{from}:pull");
        let url = format!("{}/{from}/manifests/{digest}", self.base);
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_str(&format!("{OCI_MANIFEST}, {DOCKER_MANIFEST}")).expect("ASCII"));
        let response = self.send(Method::GET, &url, headers, None, &scope).await?;
        if !response.status().is_success() {
            return Err(self.error(format!("no manifest {from}@{digest} ({})", response.status())));
        }
        let media_type = media_type(&response);
        let bytes = response.bytes().await.map_err(|e| self.error(format!("reading {url}: {e}")))?.to_vec();
        if sha256(&bytes) != digest {
            return Err(self.error(format!("the manifest {from}@{digest} has another digest")));
        }
        let manifest: ImageManifest =
            serde_json::from_slice(&bytes).map_err(|e| self.error(format!("manifest {from}@{digest}: {e}")))?;
        for blob in std::iter::once(&manifest.config).chain(&manifest.layers) {
            self.copy_blob(from, to, &blob.digest, &scope).await?;
        }
        let url = format!("{}/{to}/manifests/{digest}", self.base);
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_str(&media_type).map_err(|e| self.error(e.to_string()))?);
        let response = self.send(Method::PUT, &url, headers, Some(bytes), &scope).await?;
        if !response.status().is_success() {
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            return Err(self.error(format!("putting {to}@{digest} ({status}): {}", text.trim())));
        }
        Ok(())
    }

    /// Makes the blob `digest` of `from` present in `to`.
    async fn copy_blob(&self, from: &str, to: &str, digest: &str, scope: &str) -> Result<(), DockerError> {
        let there = format!("{}/{to}/blobs/{digest}", self.base);
        if self.send(Method::HEAD, &there, HeaderMap::new(), None, scope).await?.status().is_success() {
            return Ok(());
        }
        let mount = format!("{}/{to}/blobs/uploads/?mount={digest}&from={from}", self.base);
        let response = self.send(Method::POST, &mount, HeaderMap::new(), Some(Vec::new()), scope).await?;
        match response.status() {
            StatusCode::CREATED => return Ok(()),
            StatusCode::ACCEPTED => {}
            other => return Err(self.error(format!("mounting {digest} from {from} into {to} ({other})"))),
        }
        // No mount: an upload was started instead; copy the bytes.
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.error("an upload without a Location"))?
            .to_owned();
        let origin = self.base.trim_end_matches("/v2");
        let location = if location.starts_with('/') { format!("{origin}{location}") } else { location };
        let source = format!("{}/{from}/blobs/{digest}", self.base);
        let response = self.send(Method::GET, &source, HeaderMap::new(), None, scope).await?;
        if !response.status().is_success() {
            return Err(self.error(format!("no blob {from}@{digest} ({})", response.status())));
        }
        let body = response.bytes().await.map_err(|e| self.error(format!("reading {source}: {e}")))?.to_vec();
        let sep = if location.contains('?') { '&' } else { '?' };
        let put = format!("{location}{sep}digest={digest}");
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        let response = self.send(Method::PUT, &put, headers, Some(body), scope).await?;
        if !response.status().is_success() {
            return Err(self.error(format!("copying {digest} into {to} ({})", response.status())));
        }
        Ok(())
    }

    /// Pushes an index of `manifests` as `repository:tag`; returns its
    /// digest.
    pub(crate) async fn put_index(
        &self,
        repository: &str,
        tag: &str,
        manifests: &[Descriptor],
    ) -> Result<String, DockerError> {
        // A Docker manifest list when every entry is a Docker manifest (what
        // Docker's own tools make), else an OCI index.
        let media_type =
            if manifests.iter().all(|m| m.media_type == DOCKER_MANIFEST) { DOCKER_LIST } else { OCI_INDEX };
        let body = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": manifests,
        }))
        .map_err(|e| self.error(format!("encoding the index: {e}")))?;
        let digest = sha256(&body);
        let url = format!("{}/{repository}/manifests/{tag}", self.base);
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(media_type));
        let scope = format!("repository:{repository}:pull,push");
        let response = self.send(Method::PUT, &url, headers, Some(body), &scope).await?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(self.error(format!("pushing {repository}:{tag} ({status}): {}", text.trim())));
        }
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_and_loopback() {
        let c = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:x:pull""#;
        assert_eq!(challenge_param(c, "realm").as_deref(), Some("https://auth.docker.io/token"));
        assert_eq!(challenge_param(c, "service").as_deref(), Some("registry.docker.io"));
        assert!(is_loopback("127.0.0.1:5000") && is_loopback("localhost:5000") && !is_loopback("ghcr.io"));
        // By parsed address, not by prefix (security issue 17).
        for yes in ["127.0.0.1", "127.1.2.3:5000", "[::1]:5000", "[::1]", "LOCALHOST:80"] {
            assert!(is_loopback(yes), "{yes}");
        }
        for no in [
            "127.example.com:5000",
            "127.0.0.1.nip.io:5000",
            "localhost.evil.example",
            "[::2]:5000",
            "10.0.0.1:5000",
            "[::1]x:5000",
            "::1",
        ] {
            assert!(!is_loopback(no), "{no}");
        }
        assert_eq!(sha256(b""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }
}
