//! What the deployer reports to GitHub, each a latched publisher with a
//! per-use label: check runs (the "deployability" check), commit statuses,
//! and deployment records (a commit shows "deployed to X").

use async_trait::async_trait;
use deployer_core::cache::Publisher;
use deployer_core::{Error, Job, Level, Output};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api::Api;
use crate::repo::Repo;

/// Where a check or status stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Not started.
    Queued,
    /// Running.
    InProgress,
    /// Done, and it passed.
    Success,
    /// Done, and it failed (with why).
    Failure(String),
}

/// A check run's or status's content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckStatus {
    /// Where it stands.
    pub state: State,
    /// A one-line summary.
    pub summary: String,
    /// Where to look (the job's page in the web UI).
    pub details_url: Option<String>,
    /// The job id, so that GitHub's "re-run" finds the job.
    pub external_id: Option<String>,
}

impl CheckStatus {
    /// The status of a stage's output: running, passed, or failed with its
    /// error.
    pub fn of<T>(output: &Output<T>, details_url: Option<String>) -> CheckStatus {
        let (state, summary) = match output {
            Output::Ok(_) => (State::Success, "Passed".to_owned()),
            Output::Err(e) => (State::Failure(e.message().to_owned()), e.message().to_owned()),
            Output::Active(deployer_core::ActiveState::Ready) => (State::Queued, "Queued".to_owned()),
            Output::Active(_) => (State::InProgress, "Running".to_owned()),
        };
        CheckStatus { state, summary, details_url, external_id: None }
    }
}

/// What a check run or commit status is keyed by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusKey {
    /// The repository.
    pub repo: Repo,
    /// The commit.
    pub hash: String,
    /// The check's name, or the status's context.
    pub name: String,
}

/// `s` for a URL's query.
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The publisher of check runs.
pub(crate) struct CheckRuns {
    pub(crate) api: Api,
}

#[async_trait]
impl Publisher for CheckRuns {
    const ID: &'static str = "github-check-run";
    type Key = StatusKey;
    type Value = CheckStatus;
    type Outcome = ();

    fn describe(&self, key: &StatusKey, s: &CheckStatus) -> Option<String> {
        Some(format!("check run {} on {}@{}: {:?}", key.name, key.repo, &key.hash[..7.min(key.hash.len())], s.state))
    }
    fn level(&self) -> Level {
        Level::Harmless
    }
    fn latched(&self) -> bool {
        true
    }
    fn idempotent(&self) -> bool {
        true
    }
    fn auto_cancel(&self) -> bool {
        true
    }
    async fn publish(&self, job: &Job, key: &StatusKey, s: &CheckStatus) -> Result<(), Error> {
        let (o, r) = (&key.repo.owner, &key.repo.name);
        let mut body = json!({
            "name": key.name,
            "head_sha": key.hash,
            "output": { "title": key.name, "summary": s.summary },
        });
        match &s.state {
            State::Queued => body["status"] = json!("queued"),
            State::InProgress => body["status"] = json!("in_progress"),
            State::Success => {
                body["status"] = json!("completed");
                body["conclusion"] = json!("success");
            }
            State::Failure(_) => {
                body["status"] = json!("completed");
                body["conclusion"] = json!("failure");
            }
        }
        if let Some(url) = &s.details_url {
            body["details_url"] = json!(url);
        }
        if let Some(id) = &s.external_id {
            body["external_id"] = json!(id);
        }
        // One check run per (commit, name): update it if it exists.
        let existing = self
            .api
            .get(
                &key.repo,
                &format!("/repos/{o}/{r}/commits/{}/check-runs?check_name={}", key.hash, query_escape(&key.name)),
            )
            .await?;
        let id = existing.pointer("/check_runs/0/id").and_then(Value::as_u64);
        match id {
            Some(id) => {
                job.log(&format!("Updating check run {id} ({}) on {}", key.name, key.repo));
                self.api.send(&key.repo, "PATCH", &format!("/repos/{o}/{r}/check-runs/{id}"), &body).await?;
            }
            None => {
                job.log(&format!("Creating the check run {} on {}@{}", key.name, key.repo, key.hash));
                self.api.send(&key.repo, "POST", &format!("/repos/{o}/{r}/check-runs"), &body).await?;
            }
        }
        Ok(())
    }
}

/// The publisher of commit statuses.
pub(crate) struct CommitStatuses {
    pub(crate) api: Api,
}

#[async_trait]
impl Publisher for CommitStatuses {
    const ID: &'static str = "github-status";
    type Key = StatusKey;
    type Value = CheckStatus;
    type Outcome = ();

    fn describe(&self, key: &StatusKey, s: &CheckStatus) -> Option<String> {
        Some(format!("status {} on {}@{}: {:?}", key.name, key.repo, &key.hash[..7.min(key.hash.len())], s.state))
    }
    fn level(&self) -> Level {
        Level::Harmless
    }
    fn latched(&self) -> bool {
        true
    }
    fn idempotent(&self) -> bool {
        true
    }
    fn auto_cancel(&self) -> bool {
        true
    }
    async fn publish(&self, job: &Job, key: &StatusKey, s: &CheckStatus) -> Result<(), Error> {
        let state = match &s.state {
            State::Queued | State::InProgress => "pending",
            State::Success => "success",
            State::Failure(_) => "failure",
        };
        let mut body = json!({ "state": state, "context": key.name, "description": s.summary.chars().take(140).collect::<String>() });
        if let Some(url) = &s.details_url {
            body["target_url"] = json!(url);
        }
        job.log(&format!("Setting the status {} of {}@{} to {state}", key.name, key.repo, key.hash));
        let path = format!("/repos/{}/{}/statuses/{}", key.repo.owner, key.repo.name, key.hash);
        self.api.send(&key.repo, "POST", &path, &body).await?;
        Ok(())
    }
}

/// What a deployment record is keyed by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentKey {
    /// The repository.
    pub repo: Repo,
    /// The deployed commit.
    pub hash: String,
    /// Where it went (`ocaml.org`, a service's name).
    pub environment: String,
}

/// How a deploy of a commit went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentState {
    /// Whether it succeeded.
    pub ok: bool,
    /// What happened, in a line.
    pub description: String,
    /// The deploy job's page.
    pub log_url: Option<String>,
    /// Where the deployed thing answers.
    pub environment_url: Option<String>,
}

/// The publisher of deployment records.
pub(crate) struct Deployments {
    pub(crate) api: Api,
}

#[async_trait]
impl Publisher for Deployments {
    const ID: &'static str = "github-deployment";
    type Key = DeploymentKey;
    type Value = DeploymentState;
    type Outcome = u64;

    fn describe(&self, key: &DeploymentKey, s: &DeploymentState) -> Option<String> {
        let how = if s.ok { "deployed" } else { "failed to deploy" };
        Some(format!(
            "GitHub deployment: {}@{} {how} to {}",
            key.repo,
            &key.hash[..7.min(key.hash.len())],
            key.environment
        ))
    }
    fn level(&self) -> Level {
        Level::Harmless
    }
    fn idempotent(&self) -> bool {
        true
    }
    async fn publish(&self, job: &Job, key: &DeploymentKey, s: &DeploymentState) -> Result<u64, Error> {
        let (o, r) = (&key.repo.owner, &key.repo.name);
        let body = json!({
            "ref": key.hash,
            "environment": key.environment,
            "auto_merge": false,
            "required_contexts": [],
            "description": s.description.chars().take(140).collect::<String>(),
        });
        let created = self.api.send(&key.repo, "POST", &format!("/repos/{o}/{r}/deployments"), &body).await?;
        let id = created
            .get("id")
            .and_then(Value::as_u64)
            .ok_or_else(|| Error::msg("GitHub created a deployment without an id"))?;
        let mut status = json!({
            "state": if s.ok { "success" } else { "failure" },
            "description": s.description.chars().take(140).collect::<String>(),
            "environment": key.environment,
        });
        if let Some(url) = &s.log_url {
            status["log_url"] = json!(url);
        }
        if let Some(url) = &s.environment_url {
            status["environment_url"] = json!(url);
        }
        self.api.send(&key.repo, "POST", &format!("/repos/{o}/{r}/deployments/{id}/statuses"), &status).await?;
        job.log(&format!("Recorded deployment {id} of {}@{} to {}", key.repo, key.hash, key.environment));
        Ok(id)
    }
}
