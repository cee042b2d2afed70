//! What a deployer deploys, as plain values: the role of ocurrent-deployer's
//! `build.ml` and `cluster.ml` types. A flavour is a list of [`RepoSpec`]s
//! (Docker images and unikernels, with the branches that deploy them), plus
//! scheduled pulls and SSH jobs.
//!
//! Everything here is data: checked by [`Flavour::check`] at start-up
//! (duplicate services, bad image references, a service or unikernel
//! deployed from two branches), before any stage exists.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use deployer_core::Error;

/// A build architecture. Each has a pool of Docker build hosts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Arch {
    /// `linux/amd64`.
    X86_64,
    /// `linux/arm64`.
    Arm64,
    /// `linux/ppc64le`.
    Ppc64,
    /// `linux/s390x`.
    S390x,
    /// `linux/riscv64`.
    Riscv64,
}

/// How long a build may take, as upstream sets it: 50 minutes.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(50 * 60);

impl Arch {
    /// How long a build for this architecture may take: [`BUILD_TIMEOUT`],
    /// doubled for riscv64 (slow hardware), as upstream's pipeline does.
    pub fn build_timeout(self) -> Duration {
        match self {
            Arch::Riscv64 => BUILD_TIMEOUT * 2,
            _ => BUILD_TIMEOUT,
        }
    }

    /// Every architecture.
    pub const ALL: [Arch; 5] = [Arch::X86_64, Arch::Arm64, Arch::Ppc64, Arch::S390x, Arch::Riscv64];

    /// Docker's name (`amd64`, `arm64`, …): the pool's and the platform's.
    pub fn docker(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Arm64 => "arm64",
            Arch::Ppc64 => "ppc64le",
            Arch::S390x => "s390x",
            Arch::Riscv64 => "riscv64",
        }
    }

    /// The platform string (`linux/amd64`).
    pub fn platform(self) -> String {
        format!("linux/{}", self.docker())
    }

    /// The name OCluster gives its pool (`linux-x86_64`), used in tags.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "linux-x86_64",
            Arch::Arm64 => "linux-arm64",
            Arch::Ppc64 => "linux-ppc64",
            Arch::S390x => "linux-s390x",
            Arch::Riscv64 => "linux-riscv64",
        }
    }

    /// Parses Docker's or OCluster's name.
    pub fn parse(s: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.docker() == s || a.name() == s || a.name().trim_start_matches("linux-") == s)
    }
}

/// A Swarm service a deployment updates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// The Swarm service's name (`infra_www1`).
    pub name: String,
    /// The Docker context (host) it runs on (`ocaml-www1`).
    pub host: String,
    /// Where it is served, for people (`ocaml.org`).
    pub uri: Option<String>,
}

/// `service(name, host)`: the Swarm service `name` on the Docker context `host`.
pub fn service(name: &str, host: &str) -> Service {
    Service { name: name.into(), host: host.into(), uri: None }
}

impl Service {
    /// Where the service is served, for the services list.
    pub fn uri(mut self, uri: &str) -> Service {
        self.uri = Some(uri.into());
        self
    }
}

/// A branch whose head is built, pushed as `target`, and rolled out to
/// `services`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deployment {
    /// The branch (`live`).
    pub branch: String,
    /// The multi-arch tag pushed (`ocurrent/ocaml.org:live`).
    pub target: String,
    /// The services updated to it (none: build and push only).
    pub services: Vec<Service>,
}

/// A build argument whose value is the head commit of another repository's
/// branch (opam2web's `OPAM_REPO_GIT_SHA`), or the digest of a tag pulled on
/// a schedule (`OPAM_ARCHIVE_SHA`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtraArg {
    /// `name` = the head of `repo`'s `branch` (`owner/name`).
    Head {
        /// The build argument.
        name: String,
        /// `owner/name`.
        repo: String,
        /// The branch.
        branch: String,
    },
    /// `name` = the digest of `tag` pulled on `host`, read every `every`.
    ImageDigest {
        /// The build argument.
        name: String,
        /// The tag (`ocaml/opam:archive`).
        tag: String,
        /// The Docker context it is pulled on (`opam-4.ocaml.org`).
        host: String,
        /// How often the registry is asked.
        every: Duration,
    },
}

/// An image built from a repository's Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerSpec {
    /// The Dockerfile's path (`Dockerfile`, `Dockerfile.web`).
    pub dockerfile: String,
    /// The architectures built (default: x86_64).
    pub archs: Vec<Arch>,
    /// Fixed `--build-arg`s.
    pub build_args: BTreeMap<String, String>,
    /// Build arguments taken from other repositories' heads or images.
    pub extra_args: Vec<ExtraArg>,
    /// Whether `.git` is part of the context.
    pub include_git: bool,
    /// Whether it is built with BuildKit (upstream's default: on).
    pub buildkit: bool,
    /// The branches deployed.
    pub deployments: Vec<Deployment>,
}

/// `docker(path)`: the image built from the Dockerfile at `path`.
pub fn docker(dockerfile: &str) -> DockerSpec {
    DockerSpec {
        dockerfile: dockerfile.into(),
        archs: vec![Arch::X86_64],
        build_args: BTreeMap::new(),
        extra_args: Vec::new(),
        include_git: false,
        buildkit: true,
        deployments: Vec::new(),
    }
}

impl DockerSpec {
    /// Built for these architectures.
    pub fn archs(mut self, archs: impl IntoIterator<Item = Arch>) -> DockerSpec {
        self.archs = archs.into_iter().collect();
        self
    }

    /// With `--build-arg name=value`.
    pub fn build_arg(mut self, name: &str, value: &str) -> DockerSpec {
        self.build_args.insert(name.into(), value.into());
        self
    }

    /// With a build argument taken from a head or an image digest.
    pub fn extra_arg(mut self, arg: ExtraArg) -> DockerSpec {
        self.extra_args.push(arg);
        self
    }

    /// With `.git` in the build context.
    pub fn include_git(mut self) -> DockerSpec {
        self.include_git = true;
        self
    }

    /// Built with Docker's legacy builder instead of BuildKit.
    pub fn legacy_builder(mut self) -> DockerSpec {
        self.buildkit = false;
        self
    }

    /// Deploys `branch` as `target` to `services`.
    pub fn deploy(mut self, branch: &str, target: &str, services: impl IntoIterator<Item = Service>) -> DockerSpec {
        self.deployments.push(Deployment {
            branch: branch.into(),
            target: target.into(),
            services: services.into_iter().collect(),
        });
        self
    }
}

/// How a unikernel is built: `TARGET=hvt|xen` and its configure flags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnikernelSpec {
    /// The Dockerfile that builds it (leaves `/unikernel.<target>`).
    pub dockerfile: String,
    /// `hvt` or `xen`.
    pub target: String,
    /// `EXTRA_FLAGS` for `mirage configure`.
    pub args: Vec<String>,
    /// (branch, albatross name): the heads deployed; none: build only.
    pub deployments: Vec<(String, String)>,
    /// How albatross runs it: memory, CPUs, network interfaces and their
    /// bridges, block devices, boot arguments, restart policy.
    pub run: deployer_albatross::Unikernel,
}

/// `unikernel(dockerfile, target)`.
pub fn unikernel(dockerfile: &str, target: &str) -> UnikernelSpec {
    UnikernelSpec {
        dockerfile: dockerfile.into(),
        target: target.into(),
        args: Vec::new(),
        deployments: Vec::new(),
        run: deployer_albatross::Unikernel::default(),
    }
}

impl UnikernelSpec {
    /// With these configure flags.
    pub fn args(mut self, args: &[&str]) -> UnikernelSpec {
        self.args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Run by albatross with `memory_mb` of memory.
    pub fn memory(mut self, memory_mb: i64) -> UnikernelSpec {
        self.run.memory_mb = memory_mb;
        self
    }

    /// With the network interface `netif` on the host's bridge `bridge`.
    pub fn net(mut self, netif: &str, bridge: &str) -> UnikernelSpec {
        self.run.nets.push(deployer_albatross::Net { netif: netif.into(), bridge: bridge.into(), mac: None });
        self
    }

    /// With these boot arguments (`--ipv4=10.0.0.2/24`).
    pub fn boot_args(mut self, args: &[&str]) -> UnikernelSpec {
        self.run.arguments = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Run as albatross is told by `run` (every setting at once).
    pub fn run(mut self, run: deployer_albatross::Unikernel) -> UnikernelSpec {
        self.run = run;
        self
    }

    /// Deploys `branch` as the albatross unikernel `name`.
    pub fn deploy(mut self, branch: &str, name: &str) -> UnikernelSpec {
        self.deployments.push((branch.into(), name.into()));
        self
    }
}

/// A repository and what is built and deployed from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepoSpec {
    /// The GitHub account.
    pub owner: String,
    /// The repository's name.
    pub name: String,
    /// Docker images.
    pub images: Vec<DockerSpec>,
    /// Unikernels.
    pub unikernels: Vec<UnikernelSpec>,
    /// Whether builds of refs that are not deploy branches (pull requests,
    /// forks, other branches) get the deployer's registry credentials to
    /// pull base images. Off: their code is not the operator's.
    pub untrusted_credentials: bool,
}

/// `repo(owner, name, images)`.
pub fn repo(owner: &str, name: &str, images: impl IntoIterator<Item = DockerSpec>) -> RepoSpec {
    RepoSpec {
        owner: owner.into(),
        name: name.into(),
        images: images.into_iter().collect(),
        unikernels: Vec::new(),
        untrusted_credentials: false,
    }
}

impl RepoSpec {
    /// `owner/name`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }

    /// With these unikernels.
    pub fn unikernels(mut self, u: impl IntoIterator<Item = UnikernelSpec>) -> RepoSpec {
        self.unikernels.extend(u);
        self
    }

    /// Gives builds of every ref (pull requests too) the deployer's
    /// registry credentials: only for a repository whose every PR author
    /// the operator trusts with them.
    pub fn credentials_for_every_ref(mut self) -> RepoSpec {
        self.untrusted_credentials = true;
        self
    }

    /// The branches something is deployed from.
    pub fn deploy_branches(&self) -> BTreeSet<String> {
        let docker = self.images.iter().flat_map(|d| d.deployments.iter().map(|x| x.branch.clone()));
        let unikernels = self.unikernels.iter().flat_map(|u| u.deployments.iter().map(|(b, _)| b.clone()));
        docker.chain(unikernels).collect()
    }
}

/// A tag pulled on a schedule, then a service updated to it (PeerTube on
/// watch.ocaml.org, weekly).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScheduledPull {
    /// The tag (`chocobozzz/peertube:production-bookworm`).
    pub tag: String,
    /// How often the registry is asked for a new digest.
    pub every: Duration,
    /// The service updated to it.
    pub service: Service,
}

/// A command run over SSH on a schedule (the monthly tarsnap backup).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshJob {
    /// The host (an `ssh_config` alias or `user@host`).
    pub host: String,
    /// The job's key (its store key and label).
    pub key: String,
    /// The command.
    pub command: Vec<String>,
    /// How often.
    pub every: Duration,
}

/// A deployer: its repositories, scheduled jobs and who administers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flavour {
    /// `tarides`, `ocaml`, `mirage`.
    pub name: String,
    /// The public address of its web UI (`https://deploy.ci.dev`).
    pub base_url: String,
    /// The GitHub logins that are admins (`github:<login>` users).
    pub admins: Vec<String>,
    /// The repositories.
    pub repos: Vec<RepoSpec>,
    /// Scheduled pulls.
    pub pulls: Vec<ScheduledPull>,
    /// Scheduled SSH jobs.
    pub ssh_jobs: Vec<SshJob>,
    /// The albatross endpoint unikernels are deployed to, if any.
    pub albatross: Option<String>,
}

/// A week.
pub const WEEKLY: Duration = Duration::from_secs(7 * 86_400);

impl Flavour {
    /// Checks the table before any stage exists: image references parse,
    /// service and unikernel names are valid and each is deployed from
    /// exactly one branch of one repository (two deployers on one service
    /// fight: ocurrent-deployer #57), architectures are not repeated.
    pub fn check(&self) -> Result<(), Error> {
        let mut owners: BTreeMap<String, String> = BTreeMap::new();
        let mut claim = |what: String, by: String| -> Result<(), Error> {
            if let Some(first) = owners.insert(what.clone(), by.clone()) {
                if first != by {
                    return Err(Error::msg(format!("{what} is deployed by both {first} and {by}")));
                }
                return Err(Error::msg(format!("{what} is listed twice in {by}")));
            }
            Ok(())
        };
        for r in &self.repos {
            for d in &r.images {
                let entry = format!("{} ({})", r.full_name(), d.dockerfile);
                let mut seen = BTreeSet::new();
                if d.archs.is_empty() || !d.archs.iter().all(|a| seen.insert(*a)) {
                    return Err(Error::msg(format!("{entry}: archs must be a non-empty list without repeats")));
                }
                for x in &d.deployments {
                    deployer_docker::ImageRef::parse(&x.target)
                        .map_err(|e| Error::msg(format!("{entry}, branch {}: {e}", x.branch)))?;
                    for s in &x.services {
                        check_name(&s.name).map_err(|e| Error::msg(format!("{entry}, branch {}: {e}", x.branch)))?;
                        claim(
                            format!("service {} on {}", s.name, s.host),
                            format!("{} branch {}", r.full_name(), x.branch),
                        )?;
                    }
                }
                for x in &d.extra_args {
                    if let ExtraArg::ImageDigest { tag, .. } = x {
                        deployer_docker::ImageRef::parse(tag).map_err(|e| Error::msg(format!("{entry}: {e}")))?;
                    }
                }
            }
            for u in &r.unikernels {
                if u.target != "hvt" && u.target != "xen" {
                    return Err(Error::msg(format!(
                        "{}: unikernel target {:?} is not hvt or xen",
                        r.full_name(),
                        u.target
                    )));
                }
                // `mirage configure --separate-networks` gives the unikernel a
                // second interface, `management`: albatross must attach it.
                let separate = u.args.iter().any(|a| a == "--separate-networks");
                let netifs: BTreeSet<&str> = u.run.nets.iter().map(|n| n.netif.as_str()).collect();
                if !u.deployments.is_empty() && separate && !netifs.contains("management") {
                    return Err(Error::msg(format!(
                        "{}: the {} unikernel is configured with --separate-networks, so it needs a \
                         `management` network interface (UnikernelSpec::net)",
                        r.full_name(),
                        u.target
                    )));
                }
                for (branch, name) in &u.deployments {
                    check_name(name).map_err(|e| Error::msg(format!("{}: {e}", r.full_name())))?;
                    claim(format!("unikernel {name}"), format!("{} branch {branch}", r.full_name()))?;
                }
            }
        }
        for p in &self.pulls {
            deployer_docker::ImageRef::parse(&p.tag).map_err(|e| Error::msg(format!("scheduled pull: {e}")))?;
            claim(format!("service {} on {}", p.service.name, p.service.host), format!("the pull of {}", p.tag))?;
        }
        Ok(())
    }

    /// The repository `owner/name` (case-insensitive), if listed.
    pub fn repo(&self, full_name: &str) -> Option<&RepoSpec> {
        self.repos.iter().find(|r| r.full_name().eq_ignore_ascii_case(full_name))
    }
}

/// A service or unikernel name: a letter, then letters, digits, `-` and `_`.
fn check_name(name: &str) -> Result<(), Error> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::msg(format!("{name:?} is not a valid name (a letter, then letters, digits, - and _)")))
    }
}
