//! The three deployers ocurrent-deployer runs, as tables: `tarides`
//! (deploy.ci.dev), `ocaml` (deploy.ci.ocaml.org) and `mirage`
//! (deploy.mirageos.org). Each deploys itself from its own branch.

use std::time::Duration;

use super::spec::{docker, repo, service, unikernel, Arch, ExtraArg, Flavour, ScheduledPull, SshJob, WEEKLY};

/// The flavours' names.
pub const NAMES: [&str; 3] = ["tarides", "ocaml", "mirage"];

/// The flavour called `name`.
pub fn by_name(name: &str) -> Option<Flavour> {
    match name {
        "tarides" => Some(tarides()),
        "ocaml" => Some(ocaml()),
        "mirage" => Some(mirage()),
        _ => None,
    }
}

/// The deployer's own image (`image`), deployed from `branch` to `name` on
/// `host`.
fn deployer(branch: &str, image: &str, name: &str, host: &str, uri: &str) -> super::spec::RepoSpec {
    repo("ocurrent", "ocurrent-deployer", [docker("Dockerfile").deploy(branch, image, [service(name, host).uri(uri)])])
}

// The tables below are upstream ocurrent-deployer's `src/pipeline.ml` at the
// commit `../shared/reference/upstream-services.md` names, row for row
// (`examples/tests/tables.rs` compares them with
// `upstream-services.tsv`). Upstream's defaults hold unless a row says
// otherwise: BuildKit on, no `.git`, x86_64 only, 50 minutes a build
// (doubled on riscv64).

/// Tarides' deployer (deploy.ci.dev): ocaml-ci, OCluster's images, sandmark,
/// the solver service and the riscv64 tools.
pub fn tarides() -> Flavour {
    use Arch::*;
    let two = [X86_64, Arm64];
    Flavour {
        name: "tarides".into(),
        base_url: "https://deploy.ci.dev".into(),
        admins: admins(&[
            "avsm",
            "dra27",
            "moyodiallo",
            "MisterDA",
            "mtelvers",
            "punchagan",
            "samoht",
            "shonfeder",
            "talex5",
            "tmcgilchrist",
            "cuihtlauac",
        ]),
        repos: vec![
            deployer(
                "live-ci3",
                "ocurrent/ci.ocamllabs.io-deployer:live-ci3",
                "infra_tarides-deployer",
                "chives.caelum.ci.dev",
                "deploy.ci.dev",
            ),
            repo(
                "ocurrent",
                "ocaml-ci",
                [
                    docker("Dockerfile").archs(two).include_git().deploy(
                        "live-engine",
                        "ocurrent/ocaml-ci-service:live",
                        [service("ocaml-ci_ci", "ocaml.ci.dev").uri("ocaml.ci.dev:8100")],
                    ),
                    docker("Dockerfile.gitlab").archs(two).deploy(
                        "live-engine",
                        "ocurrent/ocaml-ci-gitlab-service:live",
                        [service("ocaml-ci_gitlab", "ocaml.ci.dev").uri("ocaml.ci.dev:8200")],
                    ),
                    docker("Dockerfile.web").archs(two).deploy(
                        "live-www",
                        "ocurrent/ocaml-ci-web:live",
                        [service("ocaml-ci_web", "ocaml.ci.dev").uri("ocaml.ci.dev")],
                    ),
                ],
            ),
            repo(
                "ocurrent",
                "ocluster",
                [
                    docker("Dockerfile").archs(two).include_git().deploy(
                        "live-scheduler",
                        "ocurrent/ocluster-scheduler:live",
                        [],
                    ),
                    // Upstream passes `--ulimit …` as a build argument (so it is
                    // one here too, though docker does not read it as a ulimit).
                    docker("Dockerfile.worker")
                        .archs(Arch::ALL)
                        .include_git()
                        .build_arg("--ulimit stack", "1000000000:1000000000")
                        .deploy("live-worker", "ocurrent/ocluster-worker:live", []),
                    docker("Dockerfile.worker.alpine").archs(two).include_git().deploy(
                        "live-worker",
                        "ocurrent/ocluster-worker:alpine",
                        [],
                    ),
                ],
            ),
            repo(
                "ocurrent",
                "clarke",
                [docker("Dockerfile").archs(two).include_git().deploy("live", "ocurrent/clarke:live", [])],
            ),
            repo(
                "ocaml-bench",
                "sandmark-nightly",
                [docker("Dockerfile").include_git().deploy(
                    "main",
                    "ocurrent/sandmark-nightly:live",
                    [service("infra_sandmark", "chives.caelum.ci.dev").uri("sandmark.tarides.com")],
                )],
            ),
            repo(
                "ocurrent",
                "solver-service",
                [docker("Dockerfile")
                    .archs(two)
                    .include_git()
                    .deploy("live", "ocurrent/solver-service:live", [])
                    .deploy("staging", "ocurrent/solver-service:staging", [])],
            ),
            repo(
                "ocurrent",
                "ocurrent-observer",
                [docker("Dockerfile").archs([Riscv64]).include_git().deploy(
                    "live",
                    "ocurrent/ocurrent-observer:live",
                    [],
                )],
            ),
            repo(
                "ocurrent",
                "ocurrent-configurator",
                [docker("Dockerfile").archs([Riscv64]).include_git().deploy(
                    "live",
                    "ocurrent/ocurrent-configurator:live",
                    [],
                )],
            ),
        ],
        pulls: vec![],
        ssh_jobs: vec![],
        albatross: None,
    }
}

/// The admins' GitHub logins, in upstream's order (upstream writes each
/// as `github:<login>`).
fn admins(logins: &[&str]) -> Vec<String> {
    logins.iter().map(|l| l.to_string()).collect()
}

/// The OCaml deployer (deploy.ci.ocaml.org): ocaml.org, its CI and docs
/// services, opam.ocaml.org (built with other repositories' heads and the
/// opam archive's digest), dune's binaries, and watch.ocaml.org's PeerTube
/// and backups.
pub fn ocaml() -> Flavour {
    use Arch::*;
    let opam2web_args = |d: super::spec::DockerSpec| {
        d.extra_arg(ExtraArg::Head {
            name: "OPAM_REPO_GIT_SHA".into(),
            repo: "ocaml/opam-repository".into(),
            branch: "master".into(),
        })
        .extra_arg(ExtraArg::Head {
            name: "BLOG_GIT_SHA".into(),
            repo: "ocaml/platform-blog".into(),
            branch: "master".into(),
        })
        .extra_arg(ExtraArg::Head { name: "OPAM_GIT_SHA".into(), repo: "ocaml/opam".into(), branch: "master".into() })
        .extra_arg(ExtraArg::ImageDigest {
            name: "OPAM_ARCHIVE_SHA".into(),
            tag: "ocaml/opam:archive".into(),
            host: "opam-4.ocaml.org".into(),
            every: Duration::from_secs(4 * 3600),
        })
    };
    let (docs, staging_docs) = ("docs.ci.ocaml.org", "staging.docs.ci.ocamllabs.io");
    let docs_ci = |file: &str, image: &str, name: &str, uri: bool| {
        let on = |host: &str| {
            let s = service(name, host);
            if uri {
                s.uri(host)
            } else {
                s
            }
        };
        docker(file).deploy("live", &format!("ocurrent/{image}:live"), [on(docs)]).deploy(
            "staging",
            &format!("ocurrent/{image}:staging"),
            [on(staging_docs)],
        )
    };
    let opam = |name: &str| {
        [
            service(name, "opam-4.ocaml.org").uri("opam.ocaml.org"),
            service(name, "opam-5.ocaml.org").uri("staging.opam.ocaml.org"),
        ]
    };
    Flavour {
        name: "ocaml".into(),
        base_url: "https://deploy.ci.ocaml.org".into(),
        admins: admins(&[
            "AltGr",
            "avsm",
            "dra27",
            "moyodiallo",
            "mtelvers",
            "punchagan",
            "rjbou",
            "samoht",
            "shonfeder",
            "talex5",
            "tmcgilchrist",
            "cuihtlauac",
            "maiste",
        ]),
        repos: vec![
            deployer(
                "live-ocaml-org",
                "ocurrent/ci.ocamllabs.io-deployer:live-ocaml-org",
                "infra_deployer",
                "default",
                "deploy.ci.ocaml.org",
            ),
            repo(
                "ocaml",
                "ocaml.org",
                [docker("Dockerfile")
                    .include_git()
                    .deploy(
                        "main",
                        "ocurrent/v3.ocaml.org-server:live",
                        [
                            service("infra_www1", "v3b.ocaml.org").uri("ocaml.org"),
                            service("infra_www2", "v3b.ocaml.org").uri("ocaml.org"),
                        ],
                    )
                    .deploy(
                        "staging",
                        "ocurrent/v3.ocaml.org-server:staging",
                        [service("infra_www", "v3c.ocaml.org").uri("staging.ocaml.org")],
                    )],
            ),
            repo(
                "ocurrent",
                "docker-base-images",
                [docker("Dockerfile").deploy(
                    "live",
                    "ocurrent/base-images:live",
                    [service("infra_base-images", "chives.caelum.ci.dev").uri("images.ci.ocaml.org")],
                )],
            ),
            repo(
                "ocurrent",
                "ocaml-docs-ci",
                [
                    docs_ci("Dockerfile", "docs-ci", "infra_docs-ci", true),
                    docs_ci("docker/init/Dockerfile", "docs-ci-init", "infra_init", false),
                    docs_ci("docker/storage/Dockerfile", "docs-ci-storage-server", "infra_storage-server", false),
                ],
            ),
            repo(
                "ocurrent",
                "opam-health-check",
                [docker("Dockerfile").deploy(
                    "live",
                    "ocurrent/opam-health-check:live",
                    [
                        service("infra_opam-health-check", "check.ci.ocaml.org").uri("check.ci.ocaml.org"),
                        service("infra_opam-health-check-windows", "check.ci.ocaml.org").uri("windows.check.ci.dev"),
                        service("infra_opam-health-check-dune", "check.ci.ocaml.org").uri("dune.check.ci.dev"),
                        service("infra_opam-health-check-freebsd", "check.ci.ocaml.org").uri("freebsd.check.ci.dev"),
                    ],
                )],
            ),
            repo(
                "ocurrent",
                "opam-repo-ci",
                [
                    docker("Dockerfile").archs([X86_64, Arm64]).deploy(
                        "live",
                        "ocurrent/opam-repo-ci:live",
                        [service("opam-repo-ci_opam-repo-ci", "opam.ci.ocaml.org").uri("opam-repo.ci.ocaml.org")],
                    ),
                    docker("Dockerfile.web").archs([X86_64, Arm64]).deploy(
                        "live-web",
                        "ocurrent/opam-repo-ci-web:live",
                        [service("opam-repo-ci_opam-repo-ci-web", "opam.ci.ocaml.org").uri("opam.ci.ocaml.org")],
                    ),
                ],
            ),
            // Upstream lists this repository twice, once per branch (two
            // pipelines setting one check); here it is one entry with both.
            repo(
                "ocaml-dune",
                "binary-distribution",
                [docker("Dockerfile")
                    .deploy(
                        "main",
                        "ocurrent/dune-binary-distribution:live",
                        [service("infra_www", "get.dune.build").uri("preview.dune.build")],
                    )
                    .deploy(
                        "staging",
                        "ocurrent/dune-binary-distribution:staging",
                        [service("infra_staging", "get.dune.build").uri("staging-preview.dune.build")],
                    )],
            ),
            repo(
                "ocaml-opam",
                "opam2web",
                [opam2web_args(docker("Dockerfile"))
                    .deploy("live", "ocurrent/opam.ocaml.org:live", opam("infra_opam_live"))
                    .deploy("live-staging", "ocurrent/opam.ocaml.org:staging", opam("infra_opam_staging"))],
            ),
        ],
        pulls: vec![ScheduledPull {
            tag: "chocobozzz/peertube:production-bookworm".into(),
            every: WEEKLY,
            service: service("infra_peertube", "watch.ocaml.org"),
        }],
        // Kept from the seeds (watch.ocaml.org's deployment); upstream
        // replaced it with Borg in 90a78bf (2025-06-27).
        ssh_jobs: vec![SshJob {
            host: "root@watch.ocaml.org".into(),
            key: "tarsnap".into(),
            command: vec!["./tarsnap-backup.sh".into()],
            every: Duration::from_secs(30 * 86_400),
        }],
        albatross: None,
    }
}

/// The MirageOS deployer (deploy.mirageos.org): mirage-www as unikernels
/// through albatross (`master` as `www`, `next` as `next`; the xen target
/// built only), mirage-ci, and itself.
pub fn mirage() -> Flavour {
    Flavour {
        name: "mirage".into(),
        base_url: "https://deploy.mirageos.org".into(),
        admins: admins(&[
            "avsm",
            "dra27",
            "hannesm",
            "moyodiallo",
            "mtelvers",
            "punchagan",
            "samoht",
            "shonfeder",
            "talex5",
            "tmcgilchrist",
            "cuihtlauac",
        ]),
        repos: vec![
            repo("mirage", "mirage-www", []).unikernels([
                // Upstream's pipeline leaves memory and networks to the host's
                // `mirage-redeploy` script; here they are part of the table
                // (albatross is told them): the `service` interface on the
                // public bridge and, for `--separate-networks`, `management`
                // on its own. Memory and bridge names are this table's
                // choice: set them to the host's.
                unikernel("Dockerfile", "hvt")
                    .args(&["--tls=true", "--metrics", "--separate-networks"])
                    .memory(512)
                    .net("service", "service")
                    .net("management", "management")
                    .deploy("master", "www")
                    .deploy("next", "next"),
                unikernel("Dockerfile", "xen").args(&["--tls=true"]),
            ]),
            repo(
                "ocurrent",
                "mirage-ci",
                [docker("Dockerfile").include_git().deploy(
                    "live",
                    "ocurrent/mirage-ci:live",
                    [service("infra_mirage-ci", "chives.caelum.ci.dev").uri("ci.mirageos.org")],
                )],
            ),
            deployer(
                "live-mirage",
                "ocurrent/deploy.mirageos.org:live",
                "infra_mirage-deployer",
                "chives.caelum.ci.dev",
                "deploy.mirageos.org",
            ),
        ],
        pulls: vec![],
        ssh_jobs: vec![],
        albatross: Some("dopey.caelum.ci.dev:1025".into()),
    }
}
