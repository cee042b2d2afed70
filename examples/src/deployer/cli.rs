//! The command lines of `deployer` and `deployer-local`, and what they
//! build: a [`Plan`] from the flags, the pipeline, and the web site.
//!
//! Every flag is checked before anything runs: a missing file, a bad level
//! or an unknown Docker context is one line naming the flag and the value.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Arg, ArgAction, ArgMatches, Command};
use deployer_core::{Config, Context, Current, Error, Level, Secret};
use deployer_docker::{Credentials, Docker, DockerHost, Endpoint};
use deployer_git::Git;
use deployer_github::login::GitHubLogin;
use deployer_github::{Auth, GitHub};
use deployer_slack::Slack;
use deployer_ssh::Ssh;
use deployer_web::Site;

use super::flavours;
use super::inventory::Inventory;
use super::overview::Overview;
use super::pipeline::{pipeline, Plan};
use super::spec::{Arch, Flavour};

/// Which binary is parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `deployer`: the GitHub App, PR checks, Slack, OAuth.
    Full,
    /// `deployer-local`: anonymous GitHub, deploy branches only, no Slack.
    Local,
}

/// The command line of `mode`'s binary.
pub fn command(mode: Mode) -> Command {
    let name = if mode == Mode::Full { "deployer" } else { "deployer-local" };
    let about = match mode {
        Mode::Full => {
            "Builds and deploys the services of an ocurrent-deployer flavour: every branch and PR checked, \
                       deploy branches rolled out to Docker services and albatross unikernels."
        }
        Mode::Local => {
            "Runs a flavour's deploy branches on this machine: GitHub read anonymously, no PR checks, \
                        no Slack. Pushes and service updates are real: --confirm holds them for a click."
        }
    };
    let mut cmd = Command::new(name)
        .about(about)
        .arg(
            Arg::new("flavour")
                .long("flavour")
                .required(true)
                .value_parser(flavours::NAMES)
                .help("Which deployer: tarides (deploy.ci.dev), ocaml (deploy.ci.ocaml.org) or mirage"),
        )
        .arg(Arg::new("verbose").short('v').long("verbose").action(ArgAction::Count).help(
            "Print more of what the deployer does (-v: debug, -vv: trace); RUST_LOG, if set, decides instead",
        ))
        .arg(
            Arg::new("verbosity")
                .long("verbosity")
                .value_name("LEVEL")
                .value_parser(["error", "warn", "info", "debug", "trace"])
                .help("The least severe events printed (default info)"),
        )
        .arg(
            Arg::new("log-format")
                .long("log-format")
                .value_name("FORMAT")
                .value_parser(["human", "json"])
                .default_value("human")
                .help("How events are printed on stderr: for people, or as JSON lines"),
        )
        .arg(
            Arg::new("list-services")
                .long("list-services")
                .action(ArgAction::SetTrue)
                .help("Print the services the flavour deploys, as Markdown, and exit"),
        )
        .arg(
            Arg::new("confirm")
                .long("confirm")
                .value_name("LEVEL")
                .help("Hold jobs at or above LEVEL for an admin's click: harmless, mostly-harmless, average, above-average, dangerous, or none"),
        )
        .arg(Arg::new("confirm-auto-release").long("confirm-auto-release").value_name("SECONDS").help(
            "Drop the --confirm requirement after SECONDS (unless an admin changed the level before)",
        ))
        .arg(
            Arg::new("state-dir")
                .long("state-dir")
                .value_name("DIR")
                .default_value("/var/lib/deployer")
                .help("Where the store, job logs and git mirrors live"),
        )
        .arg(
            Arg::new("listen")
                .long("listen")
                .value_name("ADDR")
                .default_value("127.0.0.1:8080")
                .help("Where the web UI listens"),
        )
        .arg(Arg::new("web-url").long("web-url").value_name("URL").help(
            "The web UI's public address, for links in checks and notices (default: the flavour's)",
        ))
        .arg(Arg::new("trust-proxy").long("trust-proxy").value_name("ADDR=HEADER").help(
            "The reverse proxy at ADDR sets HEADER (x-forwarded-for, x-real-ip or forwarded) to its client's \
             address: believe it (per-client limits). Without a login, acting needs the admin token in \
             <state-dir>/web-admin-token either way",
        ))
        .arg(Arg::new("docker-config").long("docker-config").value_name("DIR").help(
            "The docker CLI configuration with the services' contexts (default: DOCKER_CONFIG or ~/.docker)",
        ))
        .arg(Arg::new("docker").long("docker").value_name("URL").help(
            "Use this Docker endpoint (unix://…, tcp://…, ssh://…) for every service host and build pool \
             instead of the contexts",
        ))
        .arg(
            Arg::new("build-host")
                .long("build-host")
                .value_name("ARCH=CONTEXT")
                .action(ArgAction::Append)
                .help("A build host for an architecture (repeat; default: the local Docker for every architecture)"),
        )
        .arg(Arg::new("staging").long("staging").value_name("REPO").default_value("ocurrentbuilder/staging").help(
            "The repository per-architecture images are pushed to before the multi-arch tag",
        ))
        .arg(Arg::new("registry").long("registry").value_name("HOST[:PORT]").help(
            "Push every image to this registry instead (targets and staging are prefixed with it)",
        ))
        .arg(
            Arg::new("registry-auth")
                .long("registry-auth")
                .value_name("REGISTRY[/REPO]=USER:FILE")
                .action(ArgAction::Append)
                .help(
                    "Log in to REGISTRY (or only for the repositories under REGISTRY/REPO) as USER with the \
                     password in FILE (repeat)",
                ),
        )
        .arg(Arg::new("staging-password-file").long("staging-password-file").value_name("FILE").help(
            "The password of the Docker Hub user ocurrentbuilder, for pushes to the staging repository (as upstream)",
        ))
        .arg(Arg::new("github-api").long("github-api").value_name("URL").default_value(deployer_github::API).help(
            "GitHub's API (GitHub Enterprise: https://HOST/api/v3)",
        ))
        .arg(Arg::new("git-base").long("git-base").value_name("URL").help(
            "Clone repositories from URL/OWNER/NAME.git instead of GitHub",
        ))
        .arg(
            Arg::new("poll-every")
                .long("poll-every")
                .value_name("SECONDS")
                .default_value("600")
                .help("Read GitHub heads this often when no webhook says they changed"),
        )
        .arg(Arg::new("albatross-socket").long("albatross-socket").value_name("PATH").help(
            "Deploy unikernels through the albatross daemon on this Unix socket",
        ))
        .arg(Arg::new("albatross").long("albatross").value_name("HOST:PORT").help(
            "Deploy unikernels through this remote albatross TLS endpoint (default: the flavour's), \
             with --albatross-server-ca, --albatross-client-ca and --albatross-client-ca-key",
        ))
        .arg(
            Arg::new("albatross-server-ca")
                .long("albatross-server-ca")
                .value_name("FILE")
                .help("The CA certificate that signed the albatross endpoint's certificate"),
        )
        .arg(
            Arg::new("albatross-client-ca")
                .long("albatross-client-ca")
                .value_name("FILE")
                .help("The operator CA certificate the deployer signs its per-command certificates with"),
        )
        .arg(
            Arg::new("albatross-client-ca-key")
                .long("albatross-client-ca-key")
                .value_name("FILE")
                .help("That CA's private key (PEM)"),
        );
    // An App and its webhooks in both modes, as upstream's local mode
    // takes them; PR checks only in full mode.
    cmd = cmd
        .arg(Arg::new("github-app-id").long("github-app-id").value_name("ID").help("The GitHub App's id"))
        .arg(
            Arg::new("github-private-key-file")
                .long("github-private-key-file")
                .value_name("FILE")
                .help("The GitHub App's private key (PEM)"),
        )
        .arg(
            Arg::new("github-account-allowlist")
                .long("github-account-allowlist")
                .value_name("ACCOUNTS")
                .help("Only these accounts' installations (comma-separated)"),
        )
        .arg(
            Arg::new("github-webhook-secret-file")
                .long("github-webhook-secret-file")
                .value_name("FILE")
                .help("The App's webhook secret (deliveries are refused without a valid signature)"),
        );
    if mode == Mode::Full {
        cmd = cmd
            .arg(
                Arg::new("github-oauth-client-id")
                    .long("github-oauth-client-id")
                    .value_name("ID")
                    .help("Log in to the web UI with this GitHub OAuth App (admins: the flavour's)"),
            )
            .arg(
                Arg::new("github-oauth-secret-file")
                    .long("github-oauth-secret-file")
                    .value_name("FILE")
                    .help("The OAuth App's client secret"),
            )
            .arg(
                Arg::new("slack")
                    .long("slack")
                    .value_name("FILE")
                    .help("Post deploy notices to the Slack incoming webhook whose URL is the first line of FILE"),
            );
    } else {
        cmd = cmd.arg(Arg::new("repo").value_name("OWNER/NAME").help("Only this repository of the flavour"));
    }
    cmd
}

/// What the binary runs: the context, the pipeline, and its site.
pub struct Deployer {
    /// The store, jobs and configuration.
    pub ctx: Context,
    /// The flavour.
    pub flavour: Flavour,
    /// The pipeline.
    pub pipeline: Current<()>,
    /// The GitHub client (for the webhook and login routes).
    pub github: GitHub,
    /// The webhook secret, if deliveries are accepted.
    pub webhook_secret: Option<Secret<String>>,
    /// The login, if configured.
    pub login: Option<GitHubLogin>,
    /// Where the web UI listens.
    pub listen: SocketAddr,
    /// What the services overview shows.
    pub inventory: Inventory,
    /// The albatross daemon's name, if unikernels are deployed.
    pub daemon: Option<String>,
    /// The web UI's public address (`--web-url`): its host name is one the
    /// site answers to.
    pub web_url: String,
    /// The reverse proxy whose client addresses are believed, and its header.
    pub trust_proxy: Option<(std::net::IpAddr, deployer_web::ClientHeader)>,
    /// When the confirmation requirement is dropped (`--confirm-auto-release`).
    pub auto_release: Option<std::time::Duration>,
    /// Builds and deploys per repository, for `/metrics`.
    pub counters: super::counters::Counters,
}

/// A file's content, trimmed; the error names the flag.
fn read_secret(flag: &str, path: &str) -> Result<Secret<String>, Error> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::msg(format!("--{flag} {path}: {e}")))?;
    let first = text.lines().next().unwrap_or("").trim().to_owned();
    if first.is_empty() {
        return Err(Error::msg(format!("--{flag} {path}: the file is empty")));
    }
    Ok(Secret::new(if flag == "github-private-key-file" { text } else { first }))
}

fn get<'a>(m: &'a ArgMatches, id: &str) -> Option<&'a String> {
    m.try_get_one::<String>(id).ok().flatten()
}

fn all<'a>(m: &'a ArgMatches, id: &str) -> Vec<&'a String> {
    m.try_get_many::<String>(id).ok().flatten().map(|v| v.collect()).unwrap_or_default()
}

/// The flavour named on the command line, with `--registry` applied.
pub fn flavour(m: &ArgMatches) -> Result<Flavour, Error> {
    let name = get(m, "flavour").ok_or_else(|| Error::msg("--flavour is required"))?;
    let mut f = flavours::by_name(name).ok_or_else(|| Error::msg(format!("--flavour {name}: unknown")))?;
    if let Some(registry) = get(m, "registry") {
        for r in &mut f.repos {
            for d in &mut r.images {
                for x in &mut d.deployments {
                    x.target = format!("{registry}/{}", x.target);
                }
            }
        }
    }
    Ok(f)
}

/// Builds everything from the flags, checking each; nothing runs yet.
pub fn build(mode: Mode, m: &ArgMatches) -> Result<Deployer, Error> {
    let flavour = flavour(m)?;
    let confirm = match get(m, "confirm").map(String::as_str) {
        None | Some("none") => None,
        Some(l) => Some(l.parse::<Level>().map_err(|_| {
            Error::msg(format!(
                "--confirm {l:?}: not a level (harmless, mostly-harmless, average, above-average, dangerous, none)"
            ))
        })?),
    };
    let auto_release = match get(m, "confirm-auto-release") {
        None => None,
        Some(s) => Some(std::time::Duration::from_secs(
            s.parse::<u64>()
                .map_err(|_| Error::msg(format!("--confirm-auto-release {s:?}: not a number of seconds")))?,
        )),
    };
    let listen: SocketAddr = {
        let l = get(m, "listen").map(String::as_str).unwrap_or("127.0.0.1:8080");
        l.parse().map_err(|_| Error::msg(format!("--listen {l:?}: not an address such as 127.0.0.1:8080")))?
    };
    let state_dir = PathBuf::from(get(m, "state-dir").map(String::as_str).unwrap_or("/var/lib/deployer"));
    std::fs::create_dir_all(&state_dir).map_err(|e| Error::msg(format!("--state-dir {}: {e}", state_dir.display())))?;
    let ctx = Context::open(&state_dir, Config::new(confirm))
        .map_err(|e| Error::msg(format!("--state-dir {}: {e}", state_dir.display())))?;

    // GitHub: an App in full mode when its flags are given, else anonymous.
    let api = get(m, "github-api").map(String::as_str).unwrap_or(deployer_github::API);
    let app = match (get(m, "github-app-id"), get(m, "github-private-key-file")) {
        (Some(id), Some(key)) => {
            let app_id = id.parse::<u64>().map_err(|_| Error::msg(format!("--github-app-id {id:?}: not a number")))?;
            let accounts = get(m, "github-account-allowlist")
                .map(|a| a.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect())
                .unwrap_or_default();
            Some(Auth::App { app_id, private_key: read_secret("github-private-key-file", key)?, accounts })
        }
        (None, None) => None,
        (Some(_), None) => return Err(Error::msg("--github-app-id needs --github-private-key-file")),
        (None, Some(_)) => return Err(Error::msg("--github-private-key-file needs --github-app-id")),
    };
    let pr_checks = app.is_some() && mode == Mode::Full;
    let every = get(m, "poll-every").map(String::as_str).unwrap_or("600");
    let every = every
        .parse::<u64>()
        .ok()
        .filter(|s| *s > 0)
        .ok_or_else(|| Error::msg(format!("--poll-every {every:?}: not a number of seconds")))?;
    let github =
        GitHub::with_api(&ctx, api, app.unwrap_or(Auth::Anonymous))?.poll_every(std::time::Duration::from_secs(every));
    let webhook_secret = match get(m, "github-webhook-secret-file") {
        Some(f) => Some(read_secret("github-webhook-secret-file", f)?),
        None if pr_checks => return Err(Error::msg("the GitHub App needs --github-webhook-secret-file")),
        None => None,
    };
    let login = match (get(m, "github-oauth-client-id"), get(m, "github-oauth-secret-file")) {
        (Some(id), Some(file)) => {
            let admins: Vec<&str> = flavour.admins.iter().map(String::as_str).collect();
            // Bare logins are pinned to the id of their first login, kept
            // in the state directory (see deployer_github::login).
            Some(
                GitHubLogin::new(id, read_secret("github-oauth-secret-file", file)?, &admins)
                    .pin_file(state_dir.join("github-admin-ids.json")),
            )
        }
        (None, None) => None,
        _ => return Err(Error::msg("--github-oauth-client-id and --github-oauth-secret-file go together")),
    };
    let slack = match get(m, "slack") {
        Some(f) => Some(Slack::new(&ctx, &flavour.name, read_secret("slack", f)?)?),
        None => None,
    };

    let git = Git::new(&ctx);
    let mut docker = Docker::with(&ctx, git.clone(), Ssh::new(&ctx));
    if let Some(dir) = get(m, "docker-config") {
        if !Path::new(dir).is_dir() {
            return Err(Error::msg(format!("--docker-config {dir}: not a directory")));
        }
        docker = docker.config_dir(Path::new(dir));
    }
    for auth in all(m, "registry-auth") {
        let bad = || Error::msg(format!("--registry-auth {auth:?}: expected REGISTRY=USER:FILE"));
        let (registry, rest) = auth.split_once('=').ok_or_else(bad)?;
        let (user, file) = rest.split_once(':').ok_or_else(bad)?;
        let password = read_secret("registry-auth", file)?;
        let credentials = Credentials { username: user.to_owned(), password };
        if registry.contains('/') {
            docker
                .credentials_for_repository(registry, credentials)
                .map_err(|e| Error::msg(format!("--registry-auth {registry}: {e}")))?;
        } else {
            docker.credentials(registry, credentials);
        }
    }
    let one = match get(m, "docker") {
        Some(url) => Some(Endpoint::parse(url, None).map_err(|e| Error::msg(format!("--docker {url}: {e}")))?),
        None => None,
    };
    let resolve = |name: &str| -> Result<DockerHost, Error> {
        let host = match &one {
            Some(endpoint) => docker.host(name, endpoint.clone()),
            None if name == "default" => docker.default_host(),
            None => docker.context(name),
        };
        host.map_err(|e| Error::msg(format!("the Docker context {name:?}: {e}")))
    };
    let local = resolve("default")?;
    let mut hosts = BTreeMap::new();
    let service_hosts = flavour
        .repos
        .iter()
        .flat_map(|r| r.images.iter())
        .flat_map(|d| d.deployments.iter())
        .flat_map(|x| x.services.iter().map(|s| s.host.clone()))
        .chain(flavour.pulls.iter().map(|p| p.service.host.clone()));
    for name in service_hosts {
        if let std::collections::btree_map::Entry::Vacant(slot) = hosts.entry(name) {
            let h = if slot.key() == "default" { local.clone() } else { resolve(slot.key())? };
            slot.insert(h);
        }
    }
    let mut by_arch: BTreeMap<Arch, Vec<DockerHost>> = BTreeMap::new();
    for spec in all(m, "build-host") {
        let (arch, name) =
            spec.split_once('=').ok_or_else(|| Error::msg(format!("--build-host {spec:?}: expected ARCH=CONTEXT")))?;
        let arch =
            Arch::parse(arch).ok_or_else(|| Error::msg(format!("--build-host {spec:?}: unknown architecture")))?;
        by_arch.entry(arch).or_default().push(resolve(name)?);
    }
    let pools = Arch::ALL
        .into_iter()
        .map(|a| {
            let hosts = by_arch.remove(&a).unwrap_or_else(|| vec![local.clone()]);
            (a, docker.pool(a.docker(), hosts).build_timeout(a.build_timeout()))
        })
        .collect();
    let albatross = albatross(m, &ctx, flavour.albatross.as_deref())?;
    let staging = match get(m, "registry") {
        Some(r) => format!("{r}/{}", get(m, "staging").map(String::as_str).unwrap_or("ocurrentbuilder/staging")),
        None => get(m, "staging").cloned().unwrap_or_else(|| "ocurrentbuilder/staging".into()),
    };
    deployer_docker::ImageRef::parse(&staging).map_err(|e| Error::msg(format!("--staging {staging}: {e}")))?;
    if let Some(file) = get(m, "staging-password-file") {
        // Upstream's low-security Docker Hub user for staging images; the
        // final images are pushed with the registry's own credentials.
        let password = read_secret("staging-password-file", file)?;
        let credentials = Credentials { username: "ocurrentbuilder".into(), password };
        docker
            .credentials_for_repository(&staging, credentials)
            .map_err(|e| Error::msg(format!("--staging {staging}: {e}")))?;
    }
    let plan = Plan {
        ctx: ctx.clone(),
        github: github.clone(),
        git,
        docker,
        local,
        pools,
        hosts,
        staging,
        slack: if mode == Mode::Full { slack } else { None },
        counters: Default::default(),
        albatross,
        ssh: Some(Ssh::new(&ctx)),
        web_url: get(m, "web-url").cloned().unwrap_or_else(|| flavour.base_url.clone()),
        pr_checks,
        filter: get(m, "repo").cloned(),
        clone_base: get(m, "git-base").cloned(),
        inventory: Inventory::open(&state_dir),
    };
    let pipeline = pipeline(&flavour, &plan)?;
    // The overview shows what this deployer runs: only the filtered repository.
    let mut flavour = flavour;
    if let Some(only) = &plan.filter {
        flavour.repos.retain(|r| r.full_name().eq_ignore_ascii_case(only));
        flavour.pulls.clear();
        flavour.ssh_jobs.clear();
    }
    let daemon = plan.albatross.as_ref().map(|(_, d)| d.name().to_owned());
    let inventory = plan.inventory.clone();
    let counters = plan.counters.clone();
    let web_url = plan.web_url.clone();
    web_host(&web_url).map_err(|e| Error::msg(format!("--web-url {web_url}: {e}")))?;
    let trust_proxy = match get(m, "trust-proxy") {
        None => None,
        Some(text) => Some(parse_trust_proxy(text).map_err(|e| Error::msg(format!("--trust-proxy {text}: {e}")))?),
    };
    Ok(Deployer {
        ctx,
        flavour,
        pipeline,
        github,
        webhook_secret,
        login,
        listen,
        inventory,
        daemon,
        web_url,
        trust_proxy,
        auto_release,
        counters,
    })
}

/// `ADDR=HEADER`: the proxy's address and the header it sets
/// (`x-forwarded-for`, `x-real-ip` or `forwarded`).
fn parse_trust_proxy(text: &str) -> Result<(std::net::IpAddr, deployer_web::ClientHeader), String> {
    use deployer_web::ClientHeader;
    let (addr, header) = text.split_once('=').ok_or("write ADDR=HEADER, such as 127.0.0.1=x-forwarded-for")?;
    let addr = addr.parse().map_err(|_| format!("{addr:?} is not an IP address"))?;
    let header = match header.to_ascii_lowercase().as_str() {
        "x-forwarded-for" => ClientHeader::XForwardedFor,
        "x-real-ip" => ClientHeader::XRealIp,
        "forwarded" => ClientHeader::Forwarded,
        other => return Err(format!("{other:?} is not x-forwarded-for, x-real-ip or forwarded")),
    };
    Ok((addr, header))
}

/// The albatross daemon unikernels go to: a local socket, or the remote TLS
/// endpoint (the flavour's unless `--albatross` says) when its CA and key
/// are given; none otherwise.
fn albatross(
    m: &ArgMatches,
    ctx: &Context,
    flavours_endpoint: Option<&str>,
) -> Result<Option<(deployer_albatross::Albatross, deployer_albatross::Daemon)>, Error> {
    let a = deployer_albatross::Albatross::new(ctx);
    if let Some(path) = get(m, "albatross-socket") {
        let daemon = a.local("albatross", Path::new(path));
        return Ok(Some((a, daemon)));
    }
    let files = (get(m, "albatross-server-ca"), get(m, "albatross-client-ca"), get(m, "albatross-client-ca-key"));
    let (server_ca, client_ca, key) = match files {
        (None, None, None) => return Ok(None),
        (Some(s), Some(c), Some(k)) => (s, c, k),
        _ => {
            return Err(Error::msg(
                "--albatross-server-ca, --albatross-client-ca and --albatross-client-ca-key go together",
            ))
        }
    };
    for (flag, file) in [("albatross-server-ca", server_ca), ("albatross-client-ca", client_ca)] {
        if !Path::new(file).is_file() {
            return Err(Error::msg(format!("--{flag} {file}: no such file")));
        }
    }
    let key = std::fs::read_to_string(key).map_err(|e| Error::msg(format!("--albatross-client-ca-key {key}: {e}")))?;
    let address = get(m, "albatross")
        .map(String::as_str)
        .or(flavours_endpoint)
        .ok_or_else(|| Error::msg("--albatross HOST:PORT is needed: the flavour names no endpoint"))?;
    let remote = deployer_albatross::Remote {
        address: address.to_owned(),
        server_ca: PathBuf::from(server_ca),
        client_ca: PathBuf::from(client_ca),
        client_ca_key: Secret::new(key),
    };
    let name = address.split(':').next().unwrap_or(address).to_owned();
    let daemon = a.remote(&name, remote);
    Ok(Some((a, daemon)))
}

impl Deployer {
    /// The web site: the pipeline, webhooks and login mounted.
    pub fn site(&self, engine: deployer_core::EngineHandle) -> Site {
        let mut site = Site::new(&format!("{} deployer", self.flavour.name), engine, self.ctx.clone());
        // The name it is served under (`--web-url`), not the flavour's.
        if let Ok(host) = web_host(&self.web_url) {
            site = site.allow_host(&host);
        }
        if let Some((proxy, header)) = self.trust_proxy {
            site = site.trust_proxy(proxy, header);
        }
        if let Some(secret) = &self.webhook_secret {
            site = site.mount(self.github.webhook_routes(secret.clone()));
        }
        if let Some(login) = &self.login {
            site = site.mount(login.routes()).login(login.clone());
        }
        use super::counters::Family;
        let (builds, deploys) = (self.counters.clone(), self.counters.clone());
        site = site.counter("build_builds", "Number of builds", move || builds.samples(Family::Builds)).counter(
            "build_deployments",
            "Number of deployments",
            move || deploys.samples(Family::Deployments),
        );
        Overview::new(&self.flavour, self.inventory.clone(), self.ctx.clone(), self.daemon.as_deref()).add_to(site)
    }

    /// Runs the pipeline and serves the site until the process is stopped.
    pub async fn run(self) -> Result<(), Error> {
        let engine = std::sync::Arc::new(deployer_core::Engine::new(self.pipeline.clone()));
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .map_err(|e| Error::msg(format!("--listen {}: {e}", self.listen)))?;
        eprintln!("{} deployer: web UI on http://{}", self.flavour.name, self.listen);
        let site = self.site(engine.handle());
        tokio::spawn(async move {
            if let Err(e) = site.serve(listener).await {
                eprintln!("the web UI stopped: {e}");
            }
        });
        if let Some(after) = self.auto_release {
            let (release, engine) = (self.ctx.config().auto_release(after), engine.handle());
            tokio::spawn(async move {
                if release.await.is_ok() {
                    tracing::info!("the confirmation requirement was released after {} s", after.as_secs());
                    engine.wake();
                }
            });
        }
        engine.run().await;
        Ok(())
    }
}

/// The host name of a URL (`https://deploy.ci.dev` → `deploy.ci.dev`).
fn web_host(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("the web UI's address starts with https:// (or http://)")?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    if host.is_empty() || host.contains('@') {
        return Err("it names no host (or carries credentials)".into());
    }
    Ok(host.to_owned())
}

/// Installs the subscriber the flags ask for (`-v`, `--verbosity`,
/// `--log-format`; `RUST_LOG` wins over both level flags).
fn init_logging(m: &ArgMatches) -> Result<(), String> {
    let level = match (get(m, "verbosity"), m.get_count("verbose")) {
        (Some(level), _) => level.clone(),
        (None, 0) => "info".to_owned(),
        (None, 1) => "debug".to_owned(),
        (None, _) => "trace".to_owned(),
    };
    let format = get(m, "log-format").map_or(Ok(super::logging::Format::Human), |f| f.parse())?;
    super::logging::init(&level, format)
}

/// The whole `main` of both binaries: parse, list or build, run. Errors
/// are one line on stderr, and exit status 2.
pub fn main(mode: Mode) {
    let m = command(mode).get_matches();
    if m.get_flag("list-services") {
        match flavour(&m) {
            Ok(f) => print!("{}", super::services::markdown(&f)),
            Err(e) => {
                eprintln!("error: {}", e.message());
                std::process::exit(2);
            }
        }
        return;
    }
    if let Err(e) = init_logging(&m) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::exit(2);
        }
    };
    let result = runtime.block_on(async {
        let deployer = build(mode, &m)?;
        deployer.run().await
    });
    if let Err(e) = result {
        eprintln!("error: {}", e.message());
        std::process::exit(2);
    }
}
