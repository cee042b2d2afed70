//! Test-only: a local HTTP server that plays GitHub's REST API (the parts
//! the deployer uses) with its documented payload shapes: App JWTs checked
//! (RS256, issuer, expiry) before installation tokens are minted, lists
//! paged with `Link` headers, rate-limit headers, check runs, statuses,
//! deployments, and the OAuth endpoints. It records every request.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// The App's id.
pub const APP_ID: u64 = 42;

/// A request as received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: String,
    pub body: Value,
}

/// What the fake knows and has seen.
#[derive(Default)]
pub struct World {
    /// Branch heads, by `owner/name` then branch.
    pub branches: HashMap<String, HashMap<String, String>>,
    /// Open pull requests by `owner/name`: (number, head sha, title).
    pub pulls: HashMap<String, Vec<(u64, String, String)>>,
    /// Installations: (id, account, repositories).
    pub installations: Vec<(u64, String, Vec<String>)>,
    /// Check runs: id → body.
    pub check_runs: HashMap<u64, Value>,
    /// Requests, in order.
    pub seen: Vec<Seen>,
    /// Requests per path.
    pub counts: HashMap<String, u64>,
    /// Only count requests (a benchmark's memory is then the deployer's).
    pub count_only: bool,
    /// Tokens minted.
    pub minted: u64,
    /// Answer everything with a rate-limit 403 until this Unix time.
    pub limited_until: u64,
    /// Required status checks by `owner/name/branch` (lower-case); a branch
    /// not here is unprotected (404), `None` is refused (403).
    pub protection: HashMap<String, Option<Vec<String>>>,
    /// The App's public key (PEM), to check JWTs.
    pub public_key: String,
    /// Installation tokens revoked one by one (401 "Bad credentials").
    pub revoked: Vec<String>,
    /// Answers to break: this many branch reads send headers, then reset
    /// the connection mid-body (a transport error, not a refusal).
    pub break_bodies: u32,
    next_id: u64,
}

pub type Shared = Arc<Mutex<World>>;

/// A running fake.
pub struct FakeGitHub {
    /// Its base URL.
    pub url: String,
    pub world: Shared,
    /// The App's private key (PEM).
    pub private_key: String,
}

/// A fresh RSA key pair (private PEM, public PEM), made with openssl.
fn rsa_keys(dir: &Path) -> (String, String) {
    std::fs::create_dir_all(dir).unwrap();
    let key = dir.join("app.pem");
    let public = dir.join("app.pub.pem");
    let ok = Command::new("openssl").args(["genrsa", "-out"]).arg(&key).arg("2048").output().expect("openssl runs");
    assert!(ok.status.success(), "openssl genrsa: {}", String::from_utf8_lossy(&ok.stderr));
    let ok =
        Command::new("openssl").args(["rsa", "-in"]).arg(&key).args(["-pubout", "-out"]).arg(&public).output().unwrap();
    assert!(ok.status.success(), "openssl rsa: {}", String::from_utf8_lossy(&ok.stderr));
    (std::fs::read_to_string(key).unwrap(), std::fs::read_to_string(public).unwrap())
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn record(world: &Shared, method: &str, path: &str, headers: &HeaderMap, body: Value) {
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let mut w = world.lock().unwrap();
    *w.counts.entry(path.to_owned()).or_default() += 1;
    if !w.count_only {
        w.seen.push(Seen { method: method.into(), path: path.into(), authorization, body });
    }
}

/// 403 with rate-limit headers, if the fake is limiting.
fn limited(world: &Shared) -> Option<Response> {
    let until = world.lock().unwrap().limited_until;
    (until > now()).then(|| {
        (
            StatusCode::FORBIDDEN,
            [("x-ratelimit-remaining", "0".to_owned()), ("x-ratelimit-reset", until.to_string())],
            Json(json!({"message": "API rate limit exceeded for installation ID 1."})),
        )
            .into_response()
    })
}

/// A page of `items` (30 per page unless `per_page`), with a `Link` header
/// to the next one.
fn paged(url: &str, path: &str, items: Vec<Value>, q: &HashMap<String, String>, wrap: Option<&str>) -> Response {
    let per = q.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(30usize).min(100);
    let page = q.get("page").and_then(|p| p.parse().ok()).unwrap_or(1usize);
    let chunk: Vec<Value> = items.iter().skip((page - 1) * per).take(per).cloned().collect();
    let mut headers = vec![("x-ratelimit-remaining".to_owned(), "4999".to_owned())];
    if page * per < items.len() {
        let mut query: Vec<String> = q.iter().filter(|(k, _)| *k != "page").map(|(k, v)| format!("{k}={v}")).collect();
        query.sort();
        query.push(format!("page={}", page + 1));
        headers.push(("link".into(), format!("<{url}{path}?{}>; rel=\"next\"", query.join("&"))));
    }
    let body = match wrap {
        Some(field) => json!({ "total_count": items.len(), field: chunk }),
        None => Value::Array(chunk),
    };
    let mut response = Json(body).into_response();
    for (k, v) in headers {
        response.headers_mut().insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    response
}

#[derive(Clone)]
struct Ctx {
    world: Shared,
    url: String,
}

/// Checks the App's JWT: RS256, issued by the App, not expired.
fn jwt_ok(world: &Shared, headers: &HeaderMap) -> bool {
    use octocrab::jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
    let Some(token) =
        headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    let public = world.lock().unwrap().public_key.clone();
    let Ok(key) = DecodingKey::from_rsa_pem(public.as_bytes()) else { return false };
    let mut validation = Validation::new(Algorithm::RS256);
    // (jsonwebtoken only knows string issuers; GitHub's is the App's id as a
    // number: checked below.)
    validation.set_required_spec_claims(&["exp", "iat"]);
    let Ok(data) = decode::<Value>(token, &key, &validation) else { return false };
    // The issuer is the App's id (GitHub accepts a number or a string).
    let iss = &data.claims["iss"];
    iss == &json!(APP_ID) || iss == &json!(APP_ID.to_string())
}

/// Whether the request carries an installation token minted here.
/// 401 for an installation token of an installation that is gone (GitHub
/// refuses a removed installation's tokens at once).
fn revoked_token(world: &Shared, headers: &HeaderMap) -> Option<Response> {
    let token = headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ghs_fake")?;
    let id: u64 = token.split('x').next()?.parse().ok()?;
    let w = world.lock().unwrap();
    let known = w.installations.iter().any(|(i, _, _)| *i == id) && !w.revoked.iter().any(|t| t == token);
    drop(w);
    (!known).then(|| (StatusCode::UNAUTHORIZED, Json(json!({"message": "Bad credentials"}))).into_response())
}

fn installation_token(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("Bearer ghs_fake"))
}

impl FakeGitHub {
    pub async fn start(dir: &Path) -> FakeGitHub {
        let (private_key, public_key) = rsa_keys(dir);
        let world: Shared = Arc::new(Mutex::new(World { public_key, ..World::default() }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let ctx = Ctx { world: world.clone(), url: url.clone() };
        let app = Router::new()
            .route("/app/installations", get(installations))
            .route("/app/installations/{id}/access_tokens", post(mint))
            .route("/installation/repositories", get(installation_repos))
            .route("/repos/{o}/{r}/branches", get(branches))
            .route("/repos/{o}/{r}/branches/{b}", get(branch))
            .route("/repos/{o}/{r}/branches/{b}/protection/required_status_checks", get(protection))
            .route("/repos/{o}/{r}/pulls", get(pulls))
            .route("/repos/{o}/{r}/commits/{sha}/check-runs", get(list_checks))
            .route("/repos/{o}/{r}/check-runs", post(create_check))
            .route("/repos/{o}/{r}/check-runs/{id}", patch(update_check))
            .route("/repos/{o}/{r}/statuses/{sha}", post(status))
            .route("/repos/{o}/{r}/deployments", post(deployment))
            .route("/repos/{o}/{r}/deployments/{id}/statuses", post(deployment_status))
            .route("/login/oauth/access_token", post(oauth_token))
            .route("/user", get(user))
            .with_state(ctx);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeGitHub { url, world, private_key }
    }

    /// Sets `repo`'s branch `name` to `sha`.
    pub fn set_branch(&self, repo: &str, name: &str, sha: &str) {
        self.world
            .lock()
            .unwrap()
            .branches
            .entry(repo.to_ascii_lowercase())
            .or_default()
            .insert(name.into(), sha.into());
    }

    /// Requests seen whose path starts with `prefix`.
    pub fn seen(&self, prefix: &str) -> Vec<Seen> {
        self.world.lock().unwrap().seen.iter().filter(|s| s.path.starts_with(prefix)).cloned().collect()
    }
}

async fn installations(State(c): State<Ctx>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    record(&c.world, "GET", "/app/installations", &headers, Value::Null);
    if !jwt_ok(&c.world, &headers) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"message": "A JSON web token could not be decoded"})))
            .into_response();
    }
    let items: Vec<Value> = c
        .world
        .lock()
        .unwrap()
        .installations
        .iter()
        .map(|(id, account, _)| json!({"id": id, "account": {"login": account}, "repository_selection": "selected"}))
        .collect();
    paged(&c.url, "/app/installations", items, &q, None)
}

async fn mint(State(c): State<Ctx>, headers: HeaderMap, UrlPath(id): UrlPath<u64>) -> Response {
    record(&c.world, "POST", &format!("/app/installations/{id}/access_tokens"), &headers, Value::Null);
    if !jwt_ok(&c.world, &headers) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"message": "bad JWT"}))).into_response();
    }
    let mut w = c.world.lock().unwrap();
    if !w.installations.iter().any(|(i, _, _)| *i == id) {
        // A removed (revoked) installation.
        return (StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"}))).into_response();
    }
    w.minted += 1;
    let expires = chrono_like(now() + 3600);
    (StatusCode::CREATED, Json(json!({"token": format!("ghs_fake{id}x{}", w.minted), "expires_at": expires, "permissions": {"checks": "write", "contents": "read", "deployments": "write", "metadata": "read", "statuses": "write"}, "repository_selection": "selected"}))).into_response()
}

/// An RFC 3339 UTC time.
fn chrono_like(secs: u64) -> String {
    let days = secs / 86_400;
    let rest = secs % 86_400;
    // Civil date from days since 1970-01-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rest / 3600, rest / 60 % 60, rest % 60)
}

async fn installation_repos(
    State(c): State<Ctx>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    record(&c.world, "GET", "/installation/repositories", &headers, Value::Null);
    if !installation_token(&headers) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Bad credentials"}))).into_response();
    }
    let token = headers.get("authorization").unwrap().to_str().unwrap().to_owned();
    let id: u64 = token.trim_start_matches("Bearer ghs_fake").split('x').next().unwrap().parse().unwrap();
    let items: Vec<Value> = c
        .world
        .lock()
        .unwrap()
        .installations
        .iter()
        .filter(|(i, _, _)| *i == id)
        .flat_map(|(_, _, repos)| repos.iter().map(|r| json!({"full_name": r, "archived": false})))
        .collect();
    paged(&c.url, "/installation/repositories", items, &q, Some("repositories"))
}

async fn branches(
    State(c): State<Ctx>,
    headers: HeaderMap,
    UrlPath((o, r)): UrlPath<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let path = format!("/repos/{o}/{r}/branches");
    record(&c.world, "GET", &path, &headers, Value::Null);
    if let Some(r) = revoked_token(&c.world, &headers) {
        return r;
    }
    if let Some(l) = limited(&c.world) {
        return l;
    }
    let mut list: Vec<(String, String)> = c
        .world
        .lock()
        .unwrap()
        .branches
        .get(&format!("{o}/{r}").to_ascii_lowercase())
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    list.sort();
    let items = list
        .into_iter()
        .map(|(name, sha)| json!({"name": name, "commit": {"sha": sha, "url": ""}, "protected": false}))
        .collect();
    paged(&c.url, &path, items, &q, None)
}

async fn branch(
    State(c): State<Ctx>,
    headers: HeaderMap,
    UrlPath((o, r, b)): UrlPath<(String, String, String)>,
) -> Response {
    record(&c.world, "GET", &format!("/repos/{o}/{r}/branches/{b}"), &headers, Value::Null);
    if let Some(r) = revoked_token(&c.world, &headers) {
        return r;
    }
    if let Some(l) = limited(&c.world) {
        return l;
    }
    let broken = {
        let mut w = c.world.lock().unwrap();
        let n = w.break_bodies;
        w.break_bodies = n.saturating_sub(1);
        n > 0
    };
    if broken {
        let broken = futures_util::stream::once(async {
            Err::<axum::body::Bytes, _>(std::io::Error::other("the fake breaks this answer"))
        });
        return Response::builder()
            .header("content-type", "application/json")
            .header("content-length", "1000")
            .body(axum::body::Body::from_stream(broken))
            .unwrap();
    }
    let sha =
        c.world.lock().unwrap().branches.get(&format!("{o}/{r}").to_ascii_lowercase()).and_then(|m| m.get(&b).cloned());
    match sha {
        Some(sha) => Json(json!({"name": b, "commit": {"sha": sha}, "protected": false})).into_response(),
        None => (StatusCode::NOT_FOUND, Json(json!({"message": "Branch not found"}))).into_response(),
    }
}

async fn protection(
    State(c): State<Ctx>,
    headers: HeaderMap,
    UrlPath((o, r, b)): UrlPath<(String, String, String)>,
) -> Response {
    record(
        &c.world,
        "GET",
        &format!("/repos/{o}/{r}/branches/{b}/protection/required_status_checks"),
        &headers,
        Value::Null,
    );
    if !installation_token(&headers) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Bad credentials"}))).into_response();
    }
    let key = format!("{o}/{r}/{b}").to_ascii_lowercase();
    match c.world.lock().unwrap().protection.get(&key) {
        None => (StatusCode::NOT_FOUND, Json(json!({"message": "Branch not protected"}))).into_response(),
        Some(None) => {
            (StatusCode::FORBIDDEN, Json(json!({"message": "Resource not accessible by integration"}))).into_response()
        }
        Some(Some(checks)) => {
            // GitHub's shape: the legacy `contexts` and the newer `checks`.
            let list: Vec<Value> = checks.iter().map(|c| json!({"context": c, "app_id": 1})).collect();
            Json(json!({"url": "", "strict": true, "contexts": checks, "checks": list})).into_response()
        }
    }
}

async fn pulls(
    State(c): State<Ctx>,
    headers: HeaderMap,
    UrlPath((o, r)): UrlPath<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let path = format!("/repos/{o}/{r}/pulls");
    record(&c.world, "GET", &path, &headers, Value::Null);
    if let Some(r) = revoked_token(&c.world, &headers) {
        return r;
    }
    if let Some(l) = limited(&c.world) {
        return l;
    }
    let items = c
        .world
        .lock()
        .unwrap()
        .pulls
        .get(&format!("{o}/{r}").to_ascii_lowercase())
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|(n, sha, title)| json!({"number": n, "title": title, "state": "open", "head": {"sha": sha, "ref": format!("pr-{n}")}, "base": {"ref": "main"}}))
        .collect();
    paged(&c.url, &path, items, &q, None)
}

async fn list_checks(
    State(c): State<Ctx>,
    headers: HeaderMap,
    UrlPath((o, r, sha)): UrlPath<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    record(&c.world, "GET", &format!("/repos/{o}/{r}/commits/{sha}/check-runs"), &headers, Value::Null);
    let name = q.get("check_name").cloned().unwrap_or_default();
    let runs: Vec<Value> = c
        .world
        .lock()
        .unwrap()
        .check_runs
        .iter()
        .filter(|(_, b)| b["head_sha"] == json!(sha) && b["name"] == json!(name))
        .map(|(id, b)| json!({"id": id, "name": b["name"], "head_sha": b["head_sha"], "status": b["status"]}))
        .collect();
    Json(json!({"total_count": runs.len(), "check_runs": runs})).into_response()
}

async fn create_check(
    State(c): State<Ctx>,
    headers: HeaderMap,
    UrlPath((o, r)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap();
    record(&c.world, "POST", &format!("/repos/{o}/{r}/check-runs"), &headers, body.clone());
    let mut w = c.world.lock().unwrap();
    w.next_id += 1;
    let id = w.next_id;
    w.check_runs.insert(id, body);
    (StatusCode::CREATED, Json(json!({"id": id}))).into_response()
}

async fn update_check(
    State(c): State<Ctx>,
    headers: HeaderMap,
    UrlPath((o, r, id)): UrlPath<(String, String, u64)>,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap();
    record(&c.world, "PATCH", &format!("/repos/{o}/{r}/check-runs/{id}"), &headers, body.clone());
    c.world.lock().unwrap().check_runs.insert(id, body);
    Json(json!({"id": id})).into_response()
}

async fn status(
    State(c): State<Ctx>,
    headers: HeaderMap,
    UrlPath((o, r, sha)): UrlPath<(String, String, String)>,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap();
    record(&c.world, "POST", &format!("/repos/{o}/{r}/statuses/{sha}"), &headers, body);
    (StatusCode::CREATED, Json(json!({"id": 1}))).into_response()
}

async fn deployment(
    State(c): State<Ctx>,
    headers: HeaderMap,
    UrlPath((o, r)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap();
    record(&c.world, "POST", &format!("/repos/{o}/{r}/deployments"), &headers, body);
    let mut w = c.world.lock().unwrap();
    w.next_id += 1;
    (StatusCode::CREATED, Json(json!({"id": w.next_id}))).into_response()
}

async fn deployment_status(
    State(c): State<Ctx>,
    headers: HeaderMap,
    UrlPath((o, r, id)): UrlPath<(String, String, u64)>,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap();
    record(&c.world, "POST", &format!("/repos/{o}/{r}/deployments/{id}/statuses"), &headers, body);
    (StatusCode::CREATED, Json(json!({"id": 1}))).into_response()
}

async fn oauth_token(State(c): State<Ctx>, headers: HeaderMap, body: Bytes) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    record(&c.world, "POST", "/login/oauth/access_token", &headers, body.clone());
    let code = body["code"].as_str().unwrap_or("");
    if code == "good-code" && body["client_secret"] == json!("oauth-secret") {
        Json(json!({"access_token": "gho_fakeuser", "token_type": "bearer", "scope": "read:user"})).into_response()
    } else if let (Some(user), true) = (code.strip_prefix("code-"), body["client_secret"] == json!("oauth-secret")) {
        // `code-<login>-<id>`: that user (a test logs in as several).
        Json(json!({"access_token": format!("gho_u-{user}"), "token_type": "bearer"})).into_response()
    } else {
        Json(json!({"error": "bad_verification_code"})).into_response()
    }
}

async fn user(State(c): State<Ctx>, headers: HeaderMap) -> Response {
    record(&c.world, "GET", "/user", &headers, Value::Null);
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or("");
    if auth.ends_with("gho_fakeuser") {
        Json(json!({"login": "Alice", "id": 1})).into_response()
    } else if let Some((login, id)) = auth.split("gho_u-").nth(1).and_then(|u| u.rsplit_once('-')) {
        Json(json!({"login": login, "id": id.parse::<u64>().unwrap()})).into_response()
    } else {
        (StatusCode::UNAUTHORIZED, Json(json!({"message": "Bad credentials"}))).into_response()
    }
}

/// The real webhook payload `name` from the project's shared reference
/// (`../shared/github-payloads` beside the workspace, where CI lays it;
/// `DEPLOYER_SHARED` names another place). Missing is a loud failure.
pub fn payload(name: &str) -> Vec<u8> {
    let path = payloads_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Where the shared webhook payloads are.
pub fn payloads_dir() -> std::path::PathBuf {
    let shared = std::env::var_os("DEPLOYER_SHARED")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    let dir = shared.join("github-payloads");
    assert!(dir.is_dir(), "{} is missing: the shared reference must be beside the checkout", dir.display());
    dir
}
