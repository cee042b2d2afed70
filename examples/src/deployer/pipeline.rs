//! A flavour's pipeline: for each repository, the deployability check on
//! every branch and open PR, and for each deploy branch its head built per
//! architecture on that architecture's pool, pushed to staging, joined into
//! the target multi-arch tag, and rolled out to its services, with a GitHub
//! deployment record and a Slack notice per service; unikernels built and
//! deployed through albatross; scheduled pulls and SSH jobs.

use std::collections::{BTreeMap, BTreeSet};

use deployer_albatross::{Albatross, Daemon};
use deployer_core::{with_context, Context, Current, Error, Output, Schedule};
use deployer_docker::{BuildOptions, BuildSource, Deployed, Docker, DockerHost, HostPool, Image, ServiceOptions};
use deployer_git::{CommitId, Git, Trust};
use deployer_github::{CheckStatus, CiRef, DeploymentState, GitHub, Repo};
use deployer_slack::Slack;
use deployer_ssh::{Host, Ssh};

use super::counters::{Counters, Family};
use super::inventory::Inventory;
use super::spec::{Arch, Deployment, DockerSpec, ExtraArg, Flavour, RepoSpec, UnikernelSpec};

/// The name of the check reported on every branch and PR.
pub const CHECK: &str = "deployability";

/// How soon a failed scheduled SSH job (the monthly backup) runs again.
pub const SSH_RETRY: std::time::Duration = std::time::Duration::from_secs(3600);

/// What a flavour's pipeline is built with: the plugins, configured.
pub struct Plan {
    /// The store, jobs and configuration.
    pub ctx: Context,
    /// Heads and reports (an App, a token, or anonymous).
    pub github: GitHub,
    /// Fetches.
    pub git: Git,
    /// Builds, pushes and services.
    pub docker: Docker,
    /// The deployer's own Docker host (unikernel builds, scheduled pulls'
    /// digests, the `default` context).
    pub local: DockerHost,
    /// A pool of build hosts per architecture.
    pub pools: BTreeMap<Arch, HostPool>,
    /// The services' hosts, by Docker context name.
    pub hosts: BTreeMap<String, DockerHost>,
    /// The staging repository per-arch images are pushed to
    /// (`ocurrentbuilder/staging`).
    pub staging: String,
    /// Deploy notices, if configured.
    pub slack: Option<Slack>,
    /// Builds and deploys counted for `/metrics`.
    pub counters: Counters,
    /// Unikernel deploys, if configured.
    pub albatross: Option<(Albatross, Daemon)>,
    /// SSH jobs, if configured.
    pub ssh: Option<Ssh>,
    /// The web UI's public address (links in checks and notices).
    pub web_url: String,
    /// Whether every branch and PR is built and reported (needs an App).
    pub pr_checks: bool,
    /// Only this repository (`owner/name`), if given.
    pub filter: Option<String>,
    /// Where repositories are cloned from instead of GitHub
    /// (`file:///srv/git` → `file:///srv/git/owner/name.git`).
    pub clone_base: Option<String>,
    /// What the services overview shows (fed by the pipeline).
    pub inventory: Inventory,
}

/// The flavour's pipeline. Configuration mistakes (a bad table, an unknown
/// Docker context, a missing pool, an unknown filter) are errors here, with
/// the entry that caused them, before anything runs.
pub fn pipeline(flavour: &Flavour, plan: &Plan) -> Result<Current<()>, Error> {
    flavour.check()?;
    let repos: Vec<&RepoSpec> = match &plan.filter {
        None => flavour.repos.iter().collect(),
        Some(f) => vec![flavour.repo(f).ok_or_else(|| {
            Error::msg(format!("{f} is not a repository of the {} flavour (see --list-services)", flavour.name))
        })?],
    };
    let mut stages = Vec::new();
    let envs = environments(flavour);
    if plan.pr_checks {
        // GitHub's "Re-run" on a check: every job of that commit runs again.
        let ctx = plan.ctx.clone();
        plan.github.on_rerequest(move |r| {
            let (ctx, repo, hash) = (ctx.clone(), r.repo.clone(), r.hash.clone());
            tokio::spawn(async move {
                let n = rerun_commit(&ctx, &repo, &hash).await;
                tracing::info!("re-run asked for {repo}@{hash}: {n} jobs run again");
            });
        });
        let watched: Result<Vec<Repo>, _> = repos.iter().map(|r| Repo::parse(&r.full_name())).collect();
        let watched = watched.map_err(|e| Error::msg(e.to_string()))?;
        stages.push(plan.github.repository_access(watched).ignore_value());
    }
    for spec in repos {
        stages.push(repo_pipeline(plan, spec, &envs)?);
    }
    if plan.filter.is_none() {
        for p in &flavour.pulls {
            let host = host(plan, &p.service.host, &format!("the pull of {}", p.tag))?;
            let image =
                plan.docker.pull(host, &p.tag, Schedule::every(p.every)).map_err(|e| Error::msg(e.to_string()))?;
            let deployed = plan.docker.service(host, &p.service.name, &image, ServiceOptions::default());
            stages.push(deployed.ignore_value());
            let (inventory, key) = (plan.inventory.clone(), (p.service.host.clone(), p.service.name.clone()));
            stages.push(deployed.state_hidden().map(move |o: &Output<Deployed>| {
                inventory.note_now(key.clone(), o, |d| (d.image.digest().to_owned(), Some(d.at)))
            }));
        }
        for job in &flavour.ssh_jobs {
            let ssh = plan
                .ssh
                .as_ref()
                .ok_or_else(|| Error::msg(format!("the SSH job {} on {} needs SSH configured", job.key, job.host)))?;
            let on = Host::new(&job.host).map_err(|e| Error::msg(format!("the SSH job {}: {e}", job.key)))?;
            // A failed backup is tried again after an hour, not a month later.
            let schedule = Schedule::every(job.every).retry_failures_after(SSH_RETRY);
            stages.push(ssh.run(&on, &job.key, job.command.clone(), schedule));
        }
    }
    Ok(Current::all(stages).ignore_value())
}

/// One repository's stages, grouped under its name.
fn repo_pipeline(plan: &Plan, spec: &RepoSpec, envs: &Environments) -> Result<Current<()>, Error> {
    let repo = Repo::parse(&spec.full_name()).map_err(|e| Error::msg(e.to_string()))?;
    let group = Current::constant_labelled(&spec.full_name(), ());
    with_context(&group, || {
        let mut parts = Vec::new();
        // Build arguments from other repositories' heads and image digests:
        // one stage per image, for its deploys and its PR builds alike.
        let extras = spec.images.iter().map(|d| extra_args(plan, &d.extra_args)).collect::<Result<Vec<_>, _>>()?;
        if plan.pr_checks {
            parts.push(deployability(plan, spec, &repo, &extras)?);
            // Each deploy branch must require that check, or a failing
            // commit can be merged and deployed.
            for branch in spec.deploy_branches() {
                parts.push(plan.github.requires_check(&repo, &branch, CHECK));
            }
        }
        // One head and one fetch per deploy branch, shared by what it deploys.
        let mut heads: BTreeMap<String, Head> = BTreeMap::new();
        let mut head = |branch: &str| {
            heads
                .entry(branch.to_owned())
                .or_insert_with(|| {
                    let head = plan.github.head_of(&repo, branch);
                    let source = fetch(&plan.git, &plan.clone_base, &head, &format!("fetch {branch}"));
                    Head { head, source }
                })
                .clone()
        };
        for (d, extra) in spec.images.iter().zip(&extras) {
            for x in &d.deployments {
                parts.push(deploy_image(plan, spec, &head(&x.branch), d, extra, x, envs)?);
            }
        }
        for u in &spec.unikernels {
            for (branch, name) in &u.deployments {
                parts.push(deploy_unikernel(plan, spec, &head(branch), u, name)?);
            }
        }
        Ok(Current::all(parts).ignore_value())
    })
}

/// A deploy branch's head and its fetched commit.
#[derive(Clone)]
struct Head {
    head: Current<CiRef>,
    source: Current<BuildSource>,
}

/// Every branch and open PR built (each image, each architecture, each
/// unikernel), and the result set as the `deployability` check.
fn deployability(
    plan: &Plan,
    spec: &RepoSpec,
    repo: &Repo,
    extras: &[Current<BTreeMap<String, String>>],
) -> Result<Current<()>, Error> {
    for d in &spec.images {
        for arch in &d.archs {
            pool(plan, *arch, spec)?;
        }
    }
    if !spec.unikernels.is_empty() {
        pool(plan, Arch::X86_64, spec)?; // where upstream builds them
    }
    // The same build arguments as the deploy builds (another repository's
    // head, an image digest), so a PR is checked as it would deploy.
    let extras = extras.to_vec();
    let (docker, git, github) = (plan.docker.clone(), plan.git.clone(), plan.github.clone());
    let (pools, spec, counters) = (plan.pools.clone(), spec.clone(), plan.counters.clone());
    let counted_repo = spec.full_name();
    let full_name = spec.full_name();
    let (clone_base, url) = (plan.clone_base.clone(), format!("{}/?repo={full_name}-builds", plan.web_url));
    let refs = github.ci_refs(repo);
    let checked = refs.list_map_by(
        |r: &CiRef| r.gref.clone(),
        move |r| {
            // Refs that are not deploy branches hold code from outside
            // (pull requests, forks): their submodules are limited, and
            // their builds get no registry credentials unless the table
            // says so for this repository.
            let deploy_refs: Vec<String> =
                spec.deploy_branches().into_iter().map(|b| format!("refs/heads/{b}")).collect();
            let is_deploy_ref = r.map(move |r: &CiRef| deploy_refs.contains(&r.gref));
            let trusted = spec.untrusted_credentials;
            let trust = is_deploy_ref.map(move |deploy| trusted || *deploy);
            let code = is_deploy_ref.map(|deploy| if *deploy { Trust::Operator } else { Trust::Untrusted });
            let base = clone_base.clone();
            let id = r.try_map(move |r: &CiRef| commit_id(&base, r));
            let source = git.fetch_with_trust("fetch", &id, &code).map(|c| BuildSource::Commit(c.clone()));
            let mut builds = Vec::new();
            for (d, extra) in spec.images.iter().zip(&extras) {
                for arch in &d.archs {
                    let d2 = d.clone();
                    let options = trust.pair(extra).map(move |(t, extra)| trust_options(options(&d2, extra), *t));
                    let label = format!("build {} {}", d.dockerfile, arch.docker());
                    let build = docker.build_on_pool(&label, &pools[arch], &source, options);
                    let (counters, repo) = (counters.clone(), counted_repo.clone());
                    builds.push(build.ignore_value());
                    builds.push(build.state_hidden().map(move |o: &Output<Image>| {
                        if let Output::Ok(image) = o {
                            // Each image once, whichever refs build it.
                            counters.saw(Family::Builds, "docker", &repo, &format!("image {image}"), "");
                        }
                    }));
                }
            }
            for u in &spec.unikernels {
                let label = format!("build {} unikernel", u.target);
                let u2 = u.clone();
                let options = trust.map(move |t| trust_options(unikernel_options(&u2), *t));
                builds.push(docker.build_on_pool(&label, &pools[&Arch::X86_64], &source, options).ignore_value());
            }
            let url = url.clone();
            let status = Current::all(builds).state_hidden().map(move |o| CheckStatus::of(o, Some(url.clone())));
            github.check_run(CHECK, &r, CHECK, &status)
        },
    );
    // Drawn as one box (every PR's builds would swamp the diagram), opened
    // by the check's details link (`?repo=<owner/name>-builds`), as OCurrent does.
    Ok(checked.ignore_value().collapse("repo", &format!("{full_name}-builds"), &refs))
}

/// A deploy branch's head: built and pushed per architecture, joined into
/// the target tag, rolled out to each service.
fn deploy_image(
    plan: &Plan,
    spec: &RepoSpec,
    at: &Head,
    d: &DockerSpec,
    extra: &Current<BTreeMap<String, String>>,
    x: &Deployment,
    envs: &Environments,
) -> Result<Current<()>, Error> {
    let (head, source) = (&at.head, &at.source);
    let mut images = Vec::new();
    let mut builds_seen = Vec::new();
    let repo_name = spec.full_name();
    for arch in &d.archs {
        let pool = pool(plan, *arch, spec)?.clone();
        let tag = staging_tag(&plan.staging, spec, d, &x.branch, *arch);
        let label = format!("build {} {}", d.dockerfile, arch.docker());
        let spec = d.clone();
        let opts = extra.map(move |args| options(&spec, args));
        let pushed = plan
            .docker
            .build_and_push_on_pool(&label, &pool, source, opts, &tag)
            .map_err(|e| Error::msg(format!("the staging tag: {e}")))?;
        let (counters, repo, stage) =
            (plan.counters.clone(), repo_name.clone(), format!("{} {label} {}", x.branch, x.target));
        builds_seen.push(pushed.state_hidden().map(move |o: &Output<Image>| {
            if let Output::Ok(image) = o {
                counters.saw(Family::Builds, "docker", &repo, &stage, image.as_str());
            }
        }));
        images.push(pushed);
    }
    let manifest =
        plan.docker.push_manifest(&x.target, &Current::all(images)).map_err(|e| Error::msg(e.to_string()))?;
    // The index: which commit each target image was built from.
    let noted = {
        let (inventory, repo, branch) = (plan.inventory.clone(), spec.full_name(), x.branch.clone());
        head.pair(&manifest).map(move |(r, m): &(CiRef, Image)| inventory.note_built(m, &repo, &branch, &r.hash))
    };
    let mut parts = vec![manifest.ignore_value(), noted];
    parts.extend(builds_seen);
    let target_repository = deployer_docker::ImageRef::parse(&x.target)
        .map(|r| r.repository().to_owned())
        .unwrap_or_else(|_| x.target.clone());
    for s in &x.services {
        let on = host(plan, &s.host, &format!("{} branch {}", spec.full_name(), x.branch))?;
        // The target, unless an admin pinned an earlier version since it
        // was pushed ("deploy this version again").
        let key = (s.host.clone(), s.name.clone());
        let image = {
            let (key, inventory) = (key.clone(), plan.inventory.clone());
            manifest.pair(&plan.inventory.pins()).map(move |(m, pins)| {
                inventory.note_target(key.clone(), m);
                Inventory::choose(&key, m, pins)
            })
        };
        let deployed = plan.docker.service(on, &s.name, &image, ServiceOptions::default());
        parts.push(deployed.ignore_value());
        let inventory = plan.inventory.clone();
        let (counters, counted, stage) =
            (plan.counters.clone(), target_repository.clone(), format!("{}/{}", s.host, s.name));
        parts.push(deployed.state_hidden().map(move |o: &Output<Deployed>| {
            if let Output::Ok(d) = o {
                counters.saw(Family::Deployments, "docker", &counted, &stage, d.image.as_str());
            }
            inventory.note_now(key.clone(), o, |d| (d.image.digest().to_owned(), Some(d.at)))
        }));
        let environment = envs
            .get(&(s.host.clone(), s.name.clone()))
            .cloned()
            .unwrap_or_else(|| s.uri.clone().unwrap_or_else(|| s.name.clone()));
        let state = deployed.catch_hidden().map(move |r: &Result<Deployed, Error>| match r {
            Ok(d) => DeploymentState {
                ok: true,
                description: format!("{} runs {}", d.name, d.image.short()),
                log_url: None,
                environment_url: None,
            },
            Err(e) => {
                DeploymentState { ok: false, description: e.message().to_owned(), log_url: None, environment_url: None }
            }
        });
        if plan.pr_checks {
            let label = format!("record deploy to {environment}");
            parts.push(plan.github.deployment(&label, head, &environment, &state).ignore_value());
        }
        if let Some(slack) = &plan.slack {
            parts.push(notice(slack, &plan.web_url, head, &s.host, &s.name, &deployed));
        }
    }
    Ok(Current::all(parts).ignore_value())
}

/// The GitHub deployment environment of each service, by (host, service):
/// its URI (or name), and where two services share that, the URI with the
/// service and its host (`ocaml.org (infra_www1 on ocaml-www1)`), so that
/// no two services record deployments under one key.
pub type Environments = BTreeMap<(String, String), String>;

/// See [`Environments`].
pub fn environments(flavour: &Flavour) -> Environments {
    let services: Vec<&super::spec::Service> = flavour
        .repos
        .iter()
        .flat_map(|r| r.images.iter())
        .flat_map(|d| d.deployments.iter())
        .flat_map(|x| x.services.iter())
        .collect();
    let plain = |s: &super::spec::Service| s.uri.clone().unwrap_or_else(|| s.name.clone());
    let mut count: BTreeMap<String, BTreeSet<(String, String)>> = BTreeMap::new();
    for s in &services {
        count.entry(plain(s)).or_default().insert((s.host.clone(), s.name.clone()));
    }
    services
        .iter()
        .map(|s| {
            let env = plain(s);
            let shared = count.get(&env).is_some_and(|c| c.len() > 1);
            let env = if shared { format!("{env} ({} on {})", s.name, s.host) } else { env };
            ((s.host.clone(), s.name.clone()), env)
        })
        .collect()
}

/// The Slack message key of the service (or unikernel) `name` on `host`:
/// one per (host, name), as two hosts may run services of one name.
pub fn notice_key(host: &str, name: &str) -> String {
    format!("deploy-{host}-{name}")
}

/// "Deploy <commit> as NAME: state", posted when it changes.
fn notice<T: deployer_core::Value>(
    slack: &Slack,
    web_url: &str,
    head: &Current<CiRef>,
    host: &str,
    name: &str,
    deployed: &Current<T>,
) -> Current<()> {
    let (name_, web) = (name.to_owned(), web_url.to_owned());
    let message = head.pair(&deployed.state_hidden()).map(move |(r, o): &(CiRef, Output<T>)| {
        let short = &r.hash[..8.min(r.hash.len())];
        let commit = deployer_slack::link(
            &format!("https://github.com/{}/{}/commit/{}", r.repo.owner, r.repo.name, r.hash),
            &format!("{} {short}", r.repo),
        );
        let state = match o {
            Output::Ok(_) => "ok".to_owned(),
            Output::Err(e) => format!("failed: {}", e.message()),
            Output::Active(deployer_core::ActiveState::Ready) => "queued".to_owned(),
            Output::Active(deployer_core::ActiveState::Running) => "running".to_owned(),
            Output::Active(deployer_core::ActiveState::WaitingForConfirmation) => "waiting for confirmation".to_owned(),
        };
        format!("Deploy {commit} as {}: {}", deployer_slack::escape(&name_), deployer_slack::link(&web, &state))
    });
    slack.post(&format!("notify {name} on {host}"), &notice_key(host, name), &message)
}

/// A unikernel deploy: built on the deployer's Docker, copied out of the
/// image, deployed through albatross.
fn deploy_unikernel(
    plan: &Plan,
    spec: &RepoSpec,
    at: &Head,
    u: &UnikernelSpec,
    name: &str,
) -> Result<Current<()>, Error> {
    let (albatross, daemon) = plan.albatross.as_ref().ok_or_else(|| {
        Error::msg(format!(
            "{} deploys the unikernel {name}: configure albatross (--albatross-socket, or the --albatross-… TLS flags)",
            spec.full_name()
        ))
    })?;
    let image =
        plan.docker.build(&format!("build {name} ({})", u.target), &plan.local, &at.source, unikernel_options(u));
    let file =
        plan.docker.extract(&format!("extract {name}"), &plan.local, &image, &format!("/unikernel.{}", u.target));
    let loaded = albatross.image_file(&format!("read {name}"), &file);
    let running = albatross
        .deploy(daemon, name, &loaded, u.run.clone())
        .map_err(|e| Error::msg(format!("{}: {e}", spec.full_name())))?;
    let mut parts = vec![running.ignore_value()];
    let (inventory, key) = (plan.inventory.clone(), (daemon.name().to_owned(), name.to_owned()));
    parts.push(running.state_hidden().map(move |o: &Output<deployer_albatross::Running>| {
        inventory.note_now(key.clone(), o, |r| (r.digest.clone(), None))
    }));
    if let Some(slack) = &plan.slack {
        parts.push(notice(slack, &plan.web_url, &at.head, daemon.name(), name, &running));
    }
    Ok(Current::all(parts).ignore_value())
}

/// Runs again every job of commit `hash` (all 40 hex digits) of `repo`
/// that is still in the pipeline (its fetch, each image and architecture's
/// build — not only the last one, as ocurrent-deployer's index did): the
/// jobs whose key ([`JobActions::key_json`](deployer_core::job::JobActions::key_json))
/// names that commit of a remote whose path ends in `owner/name` (`.git`
/// or not), found from the last thousand history rows. Another
/// owner's same-named repository, or a commit sharing a prefix, matches
/// nothing. Returns how many were asked to run again.
pub async fn rerun_commit(ctx: &Context, repo: &Repo, hash: &str) -> usize {
    if hash.len() != 40 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        tracing::warn!("a re-run request for {repo} names no full commit hash: ignored");
        return 0;
    }
    let query = deployer_core::store::HistoryQuery { limit: 1000, ..Default::default() };
    let rows = ctx.store.history(query).await.map(|p| p.rows).unwrap_or_default();
    let mut done = std::collections::BTreeSet::new();
    let mut n = 0;
    // Newest first: the latest job of each (operation, key).
    for row in rows {
        if !done.insert((row.op.clone(), row.key.clone())) {
            continue;
        }
        let Some(actions) = ctx.jobs.actions(&row.job_id) else { continue };
        if actions.key_json().is_some_and(|key| key_names_commit(&key, repo, hash)) {
            match actions.rebuild() {
                Ok(()) => n += 1,
                Err(e) => tracing::warn!("re-running {}: {}", row.job_id, e.message()),
            }
        }
    }
    n
}

/// Whether a key (as JSON) holds a commit (`{"repo": URL, "hash": …}`,
/// as `deployer_git::CommitId` is stored) of `repo` with this `hash`.
fn key_names_commit(key: &serde_json::Value, repo: &Repo, hash: &str) -> bool {
    fn walk(v: &serde_json::Value, tail: &str, hash: &str) -> bool {
        match v {
            serde_json::Value::Object(map) => {
                let url = map.get("repo").and_then(|u| u.as_str());
                let h = map.get("hash").and_then(|h| h.as_str());
                if let (Some(url), Some(h)) = (url, h) {
                    let path = url.trim_end_matches('/').to_ascii_lowercase();
                    let path = path.strip_suffix(".git").unwrap_or(&path);
                    let named = path.ends_with(tail) && path[..path.len() - tail.len()].ends_with(['/', ':']);
                    if named && h.eq_ignore_ascii_case(hash) {
                        return true;
                    }
                }
                map.values().any(|v| walk(v, tail, hash))
            }
            serde_json::Value::Array(items) => items.iter().any(|v| walk(v, tail, hash)),
            _ => false,
        }
    }
    let tail = format!("{}/{}", repo.owner, repo.name).to_ascii_lowercase();
    walk(key, &tail, hash)
}

/// The commit of each `head`, fetched; as a build source.
fn fetch(git: &Git, clone_base: &Option<String>, head: &Current<CiRef>, label: &str) -> Current<BuildSource> {
    let base = clone_base.clone();
    let id = head.try_map(move |r: &CiRef| commit_id(&base, r));
    git.fetch(label, &id).map(|c| BuildSource::Commit(c.clone()))
}

/// Where `r`'s commit is fetched from.
fn commit_id(clone_base: &Option<String>, r: &CiRef) -> Result<CommitId, Error> {
    let id = match clone_base {
        None => r.commit_id(),
        Some(base) => CommitId::new(
            &format!("{}/{}/{}.git", base.trim_end_matches('/'), r.repo.owner, r.repo.name),
            &r.gref,
            &r.hash,
        ),
    };
    id.map_err(|e| Error::msg(e.to_string()))
}

/// The build arguments taken from other repositories' heads and images'
/// digests, as one stage (empty when there are none).
fn extra_args(plan: &Plan, extra: &[ExtraArg]) -> Result<Current<BTreeMap<String, String>>, Error> {
    let mut parts: Vec<Current<(String, String)>> = Vec::new();
    for x in extra {
        match x {
            ExtraArg::Head { name, repo, branch } => {
                let r = Repo::parse(repo).map_err(|e| Error::msg(format!("build argument {name}: {e}")))?;
                let name = name.clone();
                parts.push(plan.github.head_of(&r, branch).map(move |c: &CiRef| (name.clone(), c.hash.clone())));
            }
            ExtraArg::ImageDigest { name, tag, host: on, every } => {
                let on = host(plan, on, &format!("build argument {name}"))?;
                let image = plan
                    .docker
                    .pull(on, tag, Schedule::every(*every))
                    .map_err(|e| Error::msg(format!("build argument {name}: {e}")))?;
                let name = name.clone();
                parts.push(image.map(move |i: &Image| (name.clone(), i.digest().to_owned())));
            }
        }
    }
    Ok(Current::all(parts).map(|v: &Vec<(String, String)>| v.iter().cloned().collect()))
}

/// A Docker spec's build options, with `extra` build arguments (the pool
/// says the platform).
fn options(d: &DockerSpec, extra: &BTreeMap<String, String>) -> BuildOptions {
    let mut build_args = d.build_args.clone();
    build_args.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    BuildOptions {
        dockerfile: d.dockerfile.clone(),
        build_args,
        buildkit: d.buildkit,
        include_git: d.include_git,
        ..BuildOptions::default()
    }
}

/// `options`, as they are for code the operator trusts (`trusted`) or not.
fn trust_options(options: BuildOptions, trusted: bool) -> BuildOptions {
    if trusted {
        options
    } else {
        options.untrusted()
    }
}

/// A unikernel's build options: `TARGET` and `EXTRA_FLAGS`.
fn unikernel_options(u: &UnikernelSpec) -> BuildOptions {
    let mut o = BuildOptions::dockerfile(&u.dockerfile);
    o.build_args.insert("TARGET".into(), u.target.clone());
    if !u.args.is_empty() {
        o.build_args.insert("EXTRA_FLAGS".into(), u.args.join(" "));
    }
    o
}

/// `<staging>:live-<owner>-<name>-<dockerfile>-<branch>-<arch>`, with what a
/// tag may not hold replaced by `-`.
pub fn staging_tag(staging: &str, spec: &RepoSpec, d: &DockerSpec, branch: &str, arch: Arch) -> String {
    let raw = format!("live-{}-{}-{}-{branch}-{}", spec.owner, spec.name, d.dockerfile, arch.name());
    let mut tag: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' { c } else { '-' })
        .collect();
    tag.truncate(128);
    format!("{staging}:{tag}")
}

fn pool<'a>(plan: &'a Plan, arch: Arch, spec: &RepoSpec) -> Result<&'a HostPool, Error> {
    plan.pools.get(&arch).ok_or_else(|| {
        Error::msg(format!("{} builds for {}: no build hosts for that architecture", spec.full_name(), arch.docker()))
    })
}

fn host<'a>(plan: &'a Plan, name: &str, what: &str) -> Result<&'a DockerHost, Error> {
    plan.hosts.get(name).ok_or_else(|| Error::msg(format!("{what}: no Docker context named {name:?}")))
}
