//! The services overview, the first page an operator wants (OCurrent has
//! none): every service and unikernel of the flavour, where it runs, what
//! runs now (commit, image digest, since when), whether it is converged or
//! drifting, and its last deploy job. A service's page lists the versions
//! deployed to it, each with "deploy this version again" for admins: the
//! version is pinned until the branch's target moves on, and deployed by
//! the pipeline's own deploy stage (a job, with its confirmation level and
//! history row), so rolling back needs no `git revert`.
//!
//! Pages are added to the deployer's [`Site`] with [`Site::page`] and
//! [`Site::action`], so they get the site's layout and its checks.

use std::sync::Arc;

use deployer_core::store::{HistoryQuery, JobRecord};
use deployer_core::Context;
use deployer_docker::Image;
use deployer_web::html::{escape, time_text};
use deployer_web::{ActionRequest, Page, PageRequest, Refused, Role, Site};

use super::inventory::{Inventory, Key};
use super::spec::Flavour;

/// What kind of thing an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A Swarm service deployed from a branch.
    Service,
    /// A Swarm service updated from a tag pulled on a schedule.
    Pulled,
    /// An albatross unikernel.
    Unikernel,
}

/// One row of the overview.
#[derive(Clone, Debug)]
struct Entry {
    kind: Kind,
    host: String,
    name: String,
    uri: Option<String>,
    /// `owner/name` branch, or the pulled tag.
    source: String,
}

/// The overview's data: the table, the inventory and the store.
#[derive(Clone)]
pub struct Overview {
    entries: Arc<Vec<Entry>>,
    inventory: Inventory,
    ctx: Context,
}

impl Overview {
    /// The overview of `flavour`; unikernels are on the albatross daemon
    /// named `daemon`.
    pub fn new(flavour: &Flavour, inventory: Inventory, ctx: Context, daemon: Option<&str>) -> Overview {
        let mut entries = Vec::new();
        for r in &flavour.repos {
            for d in &r.images {
                for x in &d.deployments {
                    for s in &x.services {
                        entries.push(Entry {
                            kind: Kind::Service,
                            host: s.host.clone(),
                            name: s.name.clone(),
                            uri: s.uri.clone(),
                            source: format!("{} {}", r.full_name(), x.branch),
                        });
                    }
                }
            }
            for u in &r.unikernels {
                for (branch, name) in &u.deployments {
                    entries.push(Entry {
                        kind: Kind::Unikernel,
                        host: daemon.unwrap_or("albatross").to_owned(),
                        name: name.clone(),
                        uri: None,
                        source: format!("{} {branch} ({})", r.full_name(), u.target),
                    });
                }
            }
        }
        for p in &flavour.pulls {
            entries.push(Entry {
                kind: Kind::Pulled,
                host: p.service.host.clone(),
                name: p.service.name.clone(),
                uri: p.service.uri.clone(),
                source: format!("pull {}", p.tag),
            });
        }
        Overview { entries: Arc::new(entries), inventory, ctx }
    }

    /// Adds `/services`, `/services/{host}/{name}` and the admins' action
    /// `POST /services/{host}/{name}/deploy` to `site`, with a "Services"
    /// link.
    pub fn add_to(self, site: Site) -> Site {
        let (a, b, c) = (self.clone(), self.clone(), self);
        site.nav_link("Services", "/services")
            .page("/services", move |r| {
                let o = a.clone();
                async move { o.overview(r).await }
            })
            .page("/services/{host}/{name}", move |r| {
                let o = b.clone();
                async move { o.service(r).await }
            })
            .action("/services/{host}/{name}/deploy", Role::Admin, move |r| {
                let o = c.clone();
                async move { o.deploy_again(r).await }
            })
    }

    fn entry(&self, host: &str, name: &str) -> Result<&Entry, Refused> {
        self.entries
            .iter()
            .find(|e| e.host == host && e.name == name)
            .ok_or_else(|| Refused::NotFound("There is no such service in this deployer.".into()))
    }

    /// The deploy jobs in the history, newest first (one page: the last
    /// thousand).
    async fn deploys(&self, op: &str) -> Vec<JobRecord> {
        let query = HistoryQuery { op: Some(op.into()), limit: 1000, ..HistoryQuery::default() };
        self.ctx.store.history(query).await.map(|p| p.rows).unwrap_or_default()
    }

    async fn overview(&self, _r: PageRequest) -> Result<Page, Refused> {
        let services = self.deploys("docker-service").await;
        let unikernels = self.deploys("albatross-deploy").await;
        let active = self.ctx.jobs.active();
        let mut rows = String::new();
        for e in self.entries.iter() {
            let key: Key = (e.host.clone(), e.name.clone());
            let now = self.inventory.now(&key);
            let (commit, digest, since) = match now.as_ref().and_then(|n| n.digest.clone()) {
                Some(d) => {
                    let commit = self.inventory.built(&d).map(|b| commit_link(&b.repo, &b.hash)).unwrap_or_default();
                    let since = now.as_ref().and_then(|n| n.since).map(time_text).unwrap_or_default();
                    (commit, format!("<code>{}</code>", escape(&short(&d))), since)
                }
                None => (String::new(), "<span class=\"muted\">not known yet</span>".into(), String::new()),
            };
            let state = match &now {
                None => "<span class=\"badge none\">starting</span>".to_owned(),
                Some(n) => {
                    let title = n.message.as_deref().map(|m| format!(" title=\"{}\"", escape(m))).unwrap_or_default();
                    format!("<span class=\"badge {}\"{title}>{}</span>", badge(n.state), n.state)
                }
            };
            let rows_of = if e.kind == Kind::Unikernel { &unikernels } else { &services };
            let last = deploying(&active, e).or_else(|| {
                rows_of.iter().find(|row| matches(e, &row.description)).map(|row| {
                    let how = if row.ok { "ok" } else { "failed" };
                    format!("<a href=\"/job/{}\">{}</a> {how}", escape(&row.job_id), time_text(row.finished))
                })
            });
            let name = match e.kind {
                Kind::Unikernel => escape(&e.name),
                _ => format!("<a href=\"/services/{}/{}\">{}</a>", url(&e.host), url(&e.name), escape(&e.name)),
            };
            rows += &format!(
                "<tr class=\"service\"><td>{name}</td><td>{}</td><td>{}</td><td>{}</td><td>{commit}</td><td>{digest}</td>\
                 <td>{since}</td><td>{state}</td><td>{}</td></tr>\n",
                escape(&e.host),
                e.uri.as_deref().map(escape).unwrap_or_default(),
                escape(&e.source),
                last.unwrap_or_default(),
            );
        }
        let body = format!(
            "<h1>Services</h1>\n<p>What this deployer runs, where, and how it stands now.</p>\n\
             <div class=\"wide\"><table class=\"list services\"><thead><tr><th>service</th><th>host</th><th>address</th><th>from</th>\
             <th>commit</th><th>image</th><th>since</th><th>state</th><th>last deploy</th></tr></thead>\n\
             <tbody>\n{rows}</tbody></table></div>"
        );
        Ok(Page { title: "Services".into(), body })
    }

    async fn service(&self, r: PageRequest) -> Result<Page, Refused> {
        let (host, name) = (r.param("host").unwrap_or(""), r.param("name").unwrap_or(""));
        let e = self.entry(host, name)?.clone();
        let key: Key = (e.host.clone(), e.name.clone());
        let now = self.inventory.now(&key);
        let current = now.as_ref().and_then(|n| n.digest.clone());
        let may_deploy = e.kind == Kind::Service && r.who.can(Role::Admin);
        let mut rows = String::new();
        let mut seen = std::collections::BTreeSet::new();
        for row in self.deploys("docker-service").await.iter().filter(|row| row.ok && matches(&e, &row.description)) {
            let Some(image) = deployed_image(&row.description) else { continue };
            let digest = Image(image.clone()).digest().to_owned();
            let commit = self.inventory.built(&digest).map(|b| commit_link(&b.repo, &b.hash)).unwrap_or_default();
            let running = current.as_deref() == Some(digest.as_str());
            let again = if may_deploy && !running && seen.insert(digest.clone()) {
                format!(
                    "<form method=\"post\" action=\"/services/{}/{}/deploy\">{}<input type=\"hidden\" name=\"image\" \
                     value=\"{}\"><button>Deploy this version again</button></form>",
                    url(&e.host),
                    url(&e.name),
                    r.csrf_input(),
                    escape(&image)
                )
            } else if running {
                "<span class=\"badge ok\">running now</span>".into()
            } else {
                String::new()
            };
            rows += &format!(
                "<tr class=\"version\"><td>{}</td><td>{commit}</td><td><code>{}</code></td><td><a href=\"/job/{}\">{}</a></td><td>{again}</td></tr>\n",
                time_text(row.finished),
                escape(&short(&digest)),
                escape(&row.job_id),
                escape(&row.job_id),
            );
        }
        let notice = match r.query.iter().find(|(k, _)| k == "notice").map(|(_, v)| v.as_str()) {
            Some("pinned") => {
                "<p class=\"notice\">That version will be deployed again, as a job of the pipeline \
                               (it may wait for confirmation). A new commit on the branch replaces it.</p>"
            }
            _ => "",
        };
        let state = now.map(|n| format!("{}{}", n.state, n.message.map(|m| format!(": {m}")).unwrap_or_default()));
        let body = format!(
            "<h1>{}</h1>\n{notice}<p>On <strong>{}</strong>, from {}. State: <span class=\"state\">{}</span></p>\n\
             <h2>Versions deployed</h2>\n<div class=\"wide\"><table class=\"list versions\"><thead><tr><th>when</th><th>commit</th><th>image</th>\
             <th>job</th><th></th></tr></thead>\n<tbody>\n{rows}</tbody></table></div>",
            escape(&e.name),
            escape(&e.host),
            escape(&e.source),
            escape(&state.unwrap_or_else(|| "starting".into())),
        );
        Ok(Page { title: e.name.clone(), body })
    }

    async fn deploy_again(&self, r: ActionRequest) -> Result<String, Refused> {
        let (host, name) = (r.param("host").unwrap_or(""), r.param("name").unwrap_or(""));
        let e = self.entry(host, name)?.clone();
        if e.kind != Kind::Service {
            return Err(Refused::Conflict(
                "Only services deployed from a branch can be given an earlier version.".into(),
            ));
        }
        let image = r.field("image").ok_or_else(|| Refused::BadRequest("Which version? (no image given)".into()))?;
        // Only a version this service ran before.
        let known = self.deploys("docker-service").await.iter().any(|row| {
            row.ok && matches(&e, &row.description) && deployed_image(&row.description).as_deref() == Some(image)
        });
        if !known {
            return Err(Refused::BadRequest("That image was never deployed to this service.".into()));
        }
        let key: Key = (e.host.clone(), e.name.clone());
        let target = self
            .inventory
            .target(&key)
            .ok_or_else(|| Refused::Conflict("The branch's image is not pushed yet; try again when it is.".into()))?;
        self.inventory.pin(key, Image(image.to_owned()), target);
        tracing::info!("{} asked to deploy {image} to {} on {} again", who(&r), e.name, e.host);
        Ok(format!("/services/{}/{}?notice=pinned", url(&e.host), url(&e.name)))
    }
}

/// The site's badge colour for a state.
fn badge(state: &str) -> &'static str {
    match state {
        "converged" => "ok",
        "updating" => "running",
        "waiting" => "waiting",
        "drifting" | "failed" => "failed",
        _ => "none",
    }
}

fn who(r: &ActionRequest) -> String {
    r.who.user.as_ref().map_or_else(|| "the local admin".to_owned(), |u| u.id.clone())
}

/// Whether a deploy job's description is about `e`.
fn matches(e: &Entry, description: &str) -> bool {
    match e.kind {
        Kind::Unikernel => description.starts_with(&format!("albatross deploy {} (", e.name)),
        _ => {
            description.starts_with(&format!("docker service {} := ", e.name))
                && description.ends_with(&format!(" on {}", e.host))
        }
    }
}

/// The image of a `docker service NAME := IMAGE on HOST` description.
fn deployed_image(description: &str) -> Option<String> {
    let (_, rest) = description.split_once(" := ")?;
    let (image, _) = rest.rsplit_once(" on ")?;
    Some(image.to_owned())
}

/// A link to `e`'s deploy job in progress, if any.
fn deploying(active: &[deployer_core::job::JobInfo], e: &Entry) -> Option<String> {
    active
        .iter()
        .find(|j| matches(e, &j.description))
        .map(|j| format!("<a href=\"/job/{}\">deploying now</a>", escape(&j.id)))
}

fn commit_link(repo: &str, hash: &str) -> String {
    format!(
        "<a href=\"https://github.com/{}/commit/{}\"><code>{}</code></a>",
        escape(repo),
        escape(hash),
        escape(&hash[..hash.len().min(8)])
    )
}

fn short(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    format!("sha256:{}", &hex[..hex.len().min(12)])
}

fn url(s: &str) -> String {
    deployer_web::html::url_encode(s)
}
