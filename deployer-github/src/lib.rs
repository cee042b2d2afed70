//! GitHub for the deployer: branch and pull-request heads, check runs,
//! commit statuses and deployment records, webhooks, and logging in to the
//! web UI with GitHub — with octocrab, as a GitHub App (installation tokens
//! minted from a JWT and refreshed before they expire), with a token, or
//! anonymously.
//!
//! - Heads are monitors ([`GitHub::head_of`], [`GitHub::ci_refs`], every
//!   page), read again when a webhook names the repository and every ten
//!   minutes otherwise. GitHub's rate limit is respected: after a 403/429
//!   that says it is reached, nothing is sent until it resets.
//! - Reports are latched publishers: [`GitHub::check_run`],
//!   [`GitHub::commit_status`], [`GitHub::deployment`].
//! - [`GitHub::branch_protection`] says whether a deploy branch requires
//!   the deployability check.
//! - [`GitHub::repository_access`] is a box that fails, saying how to fix
//!   it, when a configured repository is not visible to the App (the
//!   deployer would never hear about its commits).
//! - With the `web` feature: [`GitHub::webhook_routes`] (HMAC-SHA256 checked
//!   over the raw body before anything is parsed) and [`login::GitHubLogin`]
//!   (OAuth), mounted on deployer-web.
//!
//! ```no_run
//! use deployer_core::{Config, Context, Engine, Secret};
//! use deployer_github::{Auth, GitHub, Repo};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let ctx = Context::open("/var/lib/deployer".as_ref(), Config::default())?;
//! let key = Secret::new(std::fs::read_to_string("/run/secrets/github-app.pem")?);
//! let github = GitHub::new(&ctx, Auth::App { app_id: 42, private_key: key, accounts: vec!["ocurrent".into()] })?;
//! let repo = Repo::parse("ocurrent/ocurrent-deployer")?;
//! let live = github.head_of(&repo, "live");
//! Engine::new(live).run().await;
//! # Ok(()) }
//! ```

mod api;
mod heads;
#[cfg(feature = "web")]
pub mod login;
mod protection;
mod repo;
mod status;
#[cfg(feature = "web")]
mod webhook;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use deployer_core::cache::OutputCache;
use deployer_core::{Context, Current, Error, Monitor};

pub use api::{Auth, Installation, FALLBACK_POLL};
pub use protection::Protection;
pub use repo::{BadRepo, CiRef, Repo};
pub use status::{CheckStatus, DeploymentKey, DeploymentState, State, StatusKey};
#[cfg(feature = "web")]
pub use webhook::{sign, BODY_IDLE, BODY_TIME, MAX_BODY, PATH as WEBHOOK_PATH, READ_BUDGET, WAIT_FOR_MEMORY};

/// The public API.
pub const API: &str = "https://api.github.com";

/// A check run or check suite whose "re-run" was asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rerequest {
    /// The repository.
    pub repo: Repo,
    /// The commit.
    pub hash: String,
    /// The job id the check named, if any.
    pub external_id: Option<String>,
    /// The App installation the delivery came through (`installation.id`).
    pub installation: Option<u64>,
}

/// What the App can see, compared with what the pipeline uses.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct AccessReport {
    /// Repositories the App can see that no pipeline uses.
    pub unused: Vec<String>,
}

type RerequestHook = Box<dyn Fn(&Rerequest) + Send + Sync>;

/// A repository-access monitor (an error string is the box's failure).
type AccessMonitor = Monitor<AccessReport>;

/// GitHub for a deployer. Cloning gives another handle on the same one.
#[derive(Clone)]
pub struct GitHub {
    ctx: Context,
    api: api::Api,
    heads: heads::Heads,
    every: Duration,
    checks: OutputCache<status::CheckRuns>,
    statuses: OutputCache<status::CommitStatuses>,
    deployments: OutputCache<status::Deployments>,
    hooks: Arc<Mutex<Vec<RerequestHook>>>,
    access: Arc<Mutex<Vec<AccessMonitor>>>,
}

impl GitHub {
    /// GitHub at api.github.com, authenticated with `auth`.
    pub fn new(ctx: &Context, auth: Auth) -> Result<GitHub, Error> {
        GitHub::with_api(ctx, API, auth)
    }

    /// GitHub whose API is at `base` (GitHub Enterprise's `…/api/v3`).
    pub fn with_api(ctx: &Context, base: &str, auth: Auth) -> Result<GitHub, Error> {
        match &auth {
            Auth::App { private_key, .. } => ctx.jobs.register_secret(private_key.expose()),
            Auth::Token(token) => ctx.jobs.register_secret(token.expose()),
            Auth::Anonymous => {}
        }
        let api = api::Api::new(base, auth)?;
        Ok(GitHub {
            ctx: ctx.clone(),
            heads: heads::Heads::default(),
            every: FALLBACK_POLL,
            checks: OutputCache::new(ctx, status::CheckRuns { api: api.clone() }),
            statuses: OutputCache::new(ctx, status::CommitStatuses { api: api.clone() }),
            deployments: OutputCache::new(ctx, status::Deployments { api: api.clone() }),
            hooks: Arc::default(),
            access: Arc::default(),
            api,
        })
    }

    /// Reads heads every `every` when no webhook says anything (ten minutes
    /// by default).
    pub fn poll_every(mut self, every: Duration) -> GitHub {
        self.every = every;
        self
    }

    /// The head of `branch` in `repo`.
    pub fn head_of(&self, repo: &Repo, branch: &str) -> Current<CiRef> {
        self.heads.head(&self.api, repo, branch, self.every).current()
    }

    /// Every branch (but `gh-pages`) and open pull request of `repo`, all
    /// pages of them.
    pub fn ci_refs(&self, repo: &Repo) -> Current<Vec<CiRef>> {
        self.heads.refs(&self.api, repo, self.every).current()
    }

    /// The stage `label`: the check run `name` on each `commit`, set to each
    /// `status`.
    pub fn check_run(
        &self,
        label: &str,
        commit: &Current<CiRef>,
        name: &str,
        status: &Current<CheckStatus>,
    ) -> Current<()> {
        let name = name.to_owned();
        let key = commit.map(move |c| StatusKey { repo: c.repo.clone(), hash: c.hash.clone(), name: name.clone() });
        self.checks.set(label, key, status.clone())
    }

    /// The stage `label`: the commit status `context` on each `commit`.
    pub fn commit_status(
        &self,
        label: &str,
        commit: &Current<CiRef>,
        context: &str,
        status: &Current<CheckStatus>,
    ) -> Current<()> {
        let context = context.to_owned();
        let key = commit.map(move |c| StatusKey { repo: c.repo.clone(), hash: c.hash.clone(), name: context.clone() });
        self.statuses.set(label, key, status.clone())
    }

    /// The stage `label`: a deployment record of each `commit` to
    /// `environment`, with how it went. The value is the deployment's id.
    pub fn deployment(
        &self,
        label: &str,
        commit: &Current<CiRef>,
        environment: &str,
        state: &Current<DeploymentState>,
    ) -> Current<u64> {
        let environment = environment.to_owned();
        let key = commit.map(move |c| DeploymentKey {
            repo: c.repo.clone(),
            hash: c.hash.clone(),
            environment: environment.clone(),
        });
        self.deployments.set(label, key, state.clone())
    }

    /// A box that fails when a repository of `repos` cannot be seen by the
    /// GitHub App (its commits would never arrive), saying how to fix it;
    /// its value lists the repositories the App sees that `repos` does not
    /// name. Read at start-up and on installation webhooks.
    pub fn repository_access(&self, repos: Vec<Repo>) -> Current<AccessReport> {
        let api = self.api.clone();
        let monitor = Monitor::poll("GitHub App repository access", self.every, move || {
            let (api, repos) = (api.clone(), repos.clone());
            async move { check_access(&api, &repos).await.map_err(Error::msg) }
        });
        self.access.lock().unwrap_or_else(|e| e.into_inner()).push(monitor.clone());
        // The monitor's own box fails when the access could not be read or
        // is wrong: it is green only for a reading that found every
        // repository.
        monitor.current()
    }

    /// Whether `branch`'s protection in `repo` requires the check `check`
    /// (the deployability check a deploy branch should require), read at
    /// start-up and every poll interval. Without permission to read branch
    /// protection, the value is [`Protection::Unknown`], saying so.
    pub fn branch_protection(&self, repo: &Repo, branch: &str, check: &str) -> Current<Protection> {
        let api = self.api.clone();
        let (repo, branch, check) = (repo.clone(), branch.to_owned(), check.to_owned());
        let name = format!("protection of {repo} {branch}");
        Monitor::poll(&name, self.every, move || {
            let (api, repo, branch, check) = (api.clone(), repo.clone(), branch.clone(), check.clone());
            async move { protection::read(&api, &repo, &branch, &check).await }
        })
        .current()
    }

    /// A box that is green only while `branch`'s protection in `repo`
    /// requires the check `check` (so nothing that fails it can be merged
    /// and deployed), and fails saying what to change otherwise — or that
    /// the protection could not be read. Upstream's README asks operators
    /// to keep this right by hand; this reads it, at start-up and every
    /// poll interval.
    pub fn requires_check(&self, repo: &Repo, branch: &str, check: &str) -> Current<()> {
        let api = self.api.clone();
        let (repo, branch, check) = (repo.clone(), branch.to_owned(), check.to_owned());
        let name = format!("{branch} requires {check}");
        Monitor::poll(&name, self.every, move || {
            let (api, repo, branch, check) = (api.clone(), repo.clone(), branch.clone(), check.clone());
            async move {
                let protection = protection::read(&api, &repo, &branch, &check).await?;
                let fix = format!(
                    "require the {check:?} check in {repo}'s branch protection for {branch}, so that \
                     nothing failing it is merged and deployed"
                );
                match protection {
                    Protection::Required => Ok(()),
                    Protection::NotRequired { required } => Err(Error::msg(format!(
                        "{branch} of {repo} requires {} but not {check:?}: {fix}",
                        required.join(", ")
                    ))),
                    Protection::Unprotected => Err(Error::msg(format!("{branch} of {repo} requires no checks: {fix}"))),
                    Protection::Unknown(why) => {
                        Err(Error::msg(format!("the protection of {branch} of {repo} could not be read: {why}")))
                    }
                }
            }
        })
        .current()
    }

    /// Calls `f` when a check's re-run is asked for and the check names no
    /// job this deployer knows (its own jobs are rebuilt directly).
    pub fn on_rerequest(&self, f: impl Fn(&Rerequest) + Send + Sync + 'static) {
        self.hooks.lock().unwrap_or_else(|e| e.into_inner()).push(Box::new(f));
    }

    /// A webhook said `full_name` (`owner/name`) changed: its heads are read
    /// again. Returns how many monitors that was.
    pub fn repository_changed(&self, full_name: &str) -> usize {
        self.heads.changed(&full_name.to_ascii_lowercase())
    }

    /// A webhook said the App's installations changed: they are listed
    /// again, then every head is read again (a removed installation's
    /// repositories then fail, saying the App cannot see them; the others
    /// carry on) and the access check runs again.
    pub fn installations_changed(&self) {
        let (api, heads) = (self.api.clone(), self.heads.clone());
        let access: Vec<AccessMonitor> = self.access.lock().unwrap_or_else(|e| e.into_inner()).clone();
        tokio::spawn(async move {
            if let Err(e) = api.refresh_installations().await {
                tracing::warn!("refreshing the GitHub App's installations: {}", e.message());
            }
            heads.changed_all();
            for m in &access {
                m.refresh();
            }
        });
    }

    /// A check's re-run was asked for: the job it names is rebuilt, else
    /// the hooks are called.
    ///
    /// As a GitHub App, a request is acted on only if it came through the
    /// installation that serves its repository: another account's
    /// repository of the same name, where the App is also installed, does
    /// not re-run this one's jobs.
    pub fn rerequested(&self, r: &Rerequest) {
        if self.api.is_app() {
            let serving = self.api.installation_of(&r.repo);
            if serving.is_none() || serving != r.installation {
                tracing::warn!(
                    "ignored a re-run request for {} from installation {:?}: {} is served by {:?}",
                    r.repo,
                    r.installation,
                    r.repo,
                    serving
                );
                return;
            }
        }
        if let Some(id) = &r.external_id {
            if let Some(actions) = self.ctx.jobs.actions(id) {
                match actions.rebuild() {
                    Ok(()) => tracing::info!("re-running job {id} for {}@{}", r.repo, r.hash),
                    Err(e) => tracing::warn!("re-running job {id}: {}", e.message()),
                }
                return;
            }
        }
        for hook in self.hooks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            hook(r);
        }
    }

    /// The API client (installations, rate limit).
    pub fn installations(&self) -> Vec<Installation> {
        self.api.installations()
    }
}

/// Compares `repos` with what the App's installations see.
async fn check_access(api: &api::Api, repos: &[Repo]) -> Result<AccessReport, String> {
    let installations = match api.refresh_installations().await {
        Ok(i) => i,
        Err(e) => return Err(e.message().to_owned()),
    };
    if installations.is_empty() {
        return Ok(AccessReport::default()); // not an App: nothing to compare
    }
    let visible: std::collections::BTreeSet<String> =
        installations.iter().flat_map(|i| i.repositories.iter().cloned()).collect();
    let wanted: std::collections::BTreeSet<String> = repos.iter().map(Repo::key).collect();
    let missing: Vec<&String> = wanted.difference(&visible).collect();
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|s| s.to_string()).collect();
        return Err(format!(
            "the GitHub App cannot see {}: nothing will be deployed from {}. Add {} in the App's \
             installation settings, under Repository access (or install the App on the owner)",
            names.join(", "),
            if names.len() == 1 { "it" } else { "them" },
            if names.len() == 1 { "it" } else { "them" }
        ));
    }
    let unused: Vec<String> = visible.difference(&wanted).cloned().collect();
    if !unused.is_empty() {
        tracing::warn!("the GitHub App can see repositories no pipeline uses: {}", unused.join(", "));
    }
    Ok(AccessReport { unused })
}
