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

/// The deployer's own image, deployed from `branch` to `service` on `host`.
fn deployer(branch: &str, name: &str, host: &str, uri: &str) -> super::spec::RepoSpec {
    repo(
        "ocurrent",
        "ocurrent-deployer",
        [docker("Dockerfile").deploy(
            branch,
            &format!("ocurrent/ci.ocamllabs.io-deployer:{branch}"),
            [service(name, host).uri(uri)],
        )],
    )
}

/// Tarides' deployer (deploy.ci.dev): ocaml-ci, sandmark, and images built
/// and pushed for the cluster.
pub fn tarides() -> Flavour {
    use Arch::*;
    let two = [X86_64, Arm64];
    Flavour {
        name: "tarides".into(),
        base_url: "https://deploy.ci.dev".into(),
        admins: vec!["talex5".into(), "avsm".into(), "mtelvers".into(), "tmcgilchrist".into()],
        repos: vec![
            deployer("live-ci3", "infra_tarides-deployer", "chives.caelum.ci.dev", "deploy.ci.dev"),
            repo(
                "ocurrent",
                "ocaml-ci",
                [
                    docker("Dockerfile").archs(two).include_git().deploy(
                        "live-engine",
                        "ocurrent/ocaml-ci-service:live",
                        [service("ocaml-ci_ci", "ocaml.ci.dev").uri("ocaml.ci.dev:8100")],
                    ),
                    docker("Dockerfile.gitlab").archs(two).include_git().deploy(
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
                "ocaml-bench",
                "sandmark-nightly",
                [docker("Dockerfile").deploy(
                    "main",
                    "ocurrent/sandmark-nightly:live",
                    [service("sandmark_sandmark", "sandmark.tarides.com").uri("sandmark.tarides.com")],
                )],
            ),
            repo(
                "ocurrent",
                "ocluster",
                [
                    docker("Dockerfile").archs(two).deploy("live-scheduler", "ocurrent/ocluster-scheduler:live", []),
                    docker("Dockerfile.worker").archs(Arch::ALL).deploy(
                        "live-worker",
                        "ocurrent/ocluster-worker:live",
                        [],
                    ),
                ],
            ),
            repo("ocurrent", "clarke", [docker("Dockerfile").archs(two).deploy("live", "ocurrent/clarke:live", [])]),
            repo(
                "ocurrent",
                "solver-service",
                [docker("Dockerfile").archs(two).deploy("live", "ocurrent/solver-service:live", []).deploy(
                    "staging",
                    "ocurrent/solver-service:staging",
                    [],
                )],
            ),
            repo(
                "ocurrent",
                "ocurrent-observer",
                [docker("Dockerfile").archs([Riscv64]).deploy("live", "ocurrent/ocurrent-observer:live", [])],
            ),
        ],
        pulls: vec![],
        ssh_jobs: vec![],
        albatross: None,
    }
}

/// The OCaml deployer (deploy.ci.ocaml.org): ocaml.org, its CI and docs
/// services, opam.ocaml.org (built with other repositories' heads and the
/// opam archive's digest), and watch.ocaml.org's PeerTube and backups.
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
            every: Duration::from_secs(4 * 3600),
        })
    };
    let docs = |file: &str, image: &str, name: &str| {
        docker(file)
            .deploy(
                "live",
                &format!("ocurrent/{image}:live"),
                [service(&format!("docs-ci_{name}"), "docs.ci.ocaml.org")],
            )
            .deploy(
                "staging",
                &format!("ocurrent/{image}:staging"),
                [service(&format!("docs-ci_{name}"), "staging.docs.ci.ocaml.org")],
            )
    };
    Flavour {
        name: "ocaml".into(),
        base_url: "https://deploy.ci.ocaml.org".into(),
        admins: vec!["talex5".into(), "avsm".into(), "mtelvers".into(), "tmcgilchrist".into(), "cuihtlauac".into()],
        repos: vec![
            deployer("live-ocaml-org", "infra_deployer", "default", "deploy.ci.ocaml.org"),
            repo(
                "ocaml",
                "ocaml.org",
                [docker("Dockerfile")
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
                    [service("base-images_builder", "chives.caelum.ci.dev").uri("images.ci.ocaml.org")],
                )],
            ),
            repo(
                "ocurrent",
                "ocaml-docs-ci",
                [
                    docs("Dockerfile", "docs-ci", "docs-ci"),
                    docs("Dockerfile.init", "docs-ci-init", "init"),
                    docs("Dockerfile.web", "docs-ci-storage-server", "storage-server"),
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
                        service("infra_opam-health-check-freebsd", "check.ci.ocaml.org"),
                        service("infra_opam-health-check-macos", "check.ci.ocaml.org"),
                        service("infra_opam-health-check-old", "check.ci.ocaml.org"),
                    ],
                )],
            ),
            repo(
                "ocurrent",
                "opam-repo-ci",
                [
                    docker("Dockerfile").deploy(
                        "live",
                        "ocurrent/opam-repo-ci:live",
                        [service("opam-repo-ci_opam-repo-ci", "opam-repo.ci.ocaml.org")],
                    ),
                    docker("Dockerfile.web").deploy(
                        "live-web",
                        "ocurrent/opam-repo-ci-web:live",
                        [service("opam-repo-ci_opam-repo-ci-web", "opam-repo.ci.ocaml.org").uri("opam.ci.ocaml.org")],
                    ),
                ],
            ),
            repo(
                "ocaml-dune",
                "binary-distribution",
                [docker("Dockerfile").archs([X86_64]).deploy(
                    "main",
                    "ocurrent/dune-binary-distribution:live",
                    [
                        service("dune_binary-distribution", "get.dune.build").uri("get.dune.build"),
                        service("dune_binary-distribution-preview", "preview.dune.build").uri("preview.dune.build"),
                    ],
                )],
            ),
            repo(
                "ocaml-opam",
                "opam2web",
                [opam2web_args(docker("Dockerfile"))
                    .deploy(
                        "live",
                        "ocurrent/opam.ocaml.org:live",
                        [
                            service("infra_opam_live", "opam-4.ocaml.org").uri("opam.ocaml.org"),
                            service("infra_opam_live", "opam-5.ocaml.org").uri("opam.ocaml.org"),
                        ],
                    )
                    .deploy(
                        "live-staging",
                        "ocurrent/opam.ocaml.org:staging",
                        [
                            service("infra_opam_staging", "opam-4.ocaml.org").uri("staging.opam.ocaml.org"),
                            service("infra_opam_staging", "opam-5.ocaml.org").uri("staging.opam.ocaml.org"),
                        ],
                    )],
            ),
        ],
        pulls: vec![ScheduledPull {
            tag: "chocobozzz/peertube:production-bookworm".into(),
            every: WEEKLY,
            service: service("infra_peertube", "watch.ocaml.org").uri("watch.ocaml.org"),
        }],
        ssh_jobs: vec![SshJob {
            host: "root@watch.ocaml.org".into(),
            key: "tarsnap".into(),
            command: vec!["./tarsnap-backup.sh".into()],
            every: Duration::from_secs(30 * 86_400),
        }],
        albatross: None,
    }
}

/// The MirageOS deployer (deploy.mirageos.org): mirage-ci, and mirage-www as
/// unikernels through albatross (`master` as `www`, `next` as `next`; the
/// xen target built only).
pub fn mirage() -> Flavour {
    Flavour {
        name: "mirage".into(),
        base_url: "https://deploy.mirageos.org".into(),
        admins: vec!["talex5".into(), "hannesm".into(), "samoht".into(), "mtelvers".into()],
        repos: vec![
            deployer("live-mirage", "infra_mirage-deployer", "chives.caelum.ci.dev", "deploy.mirageos.org"),
            repo(
                "ocurrent",
                "mirage-ci",
                [docker("Dockerfile").deploy(
                    "live",
                    "ocurrent/mirage-ci:live",
                    [service("infra_mirage-ci", "ci.mirage.io").uri("ci.mirage.io")],
                )],
            ),
            repo("mirage", "mirage-www", []).unikernels([
                unikernel("Dockerfile", "hvt").deploy("master", "www").deploy("next", "next"),
                unikernel("Dockerfile", "xen").args(&["--tls=true", "--metrics", "--separate-networks"]),
            ]),
        ],
        pulls: vec![],
        ssh_jobs: vec![],
        albatross: Some("dopey.caelum.ci.dev:1025".into()),
    }
}
