//! Upstream's per-repository counters in `/metrics`:
//! `deployer_build_builds_total{type, service}` (builds of a repository,
//! `service` = `owner/name`) and `deployer_build_deployments_total{type,
//! service}` (deploys of an image, `service` = the target's repository).
//! Upstream counts each time its pipeline is evaluated; these count each
//! new successful build or deploy (a stage's new value), once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use deployer_web::CounterSample;

/// How many stages' last values are remembered at most.
const MAX_REMEMBERED: usize = 100_000;

/// Which counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    /// `build_builds`.
    Builds,
    /// `build_deployments`.
    Deployments,
}

/// The counters; cloning gives another handle on the same ones.
#[derive(Clone, Default)]
pub struct Counters {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    counts: BTreeMap<(Family, String, String), u64>,
    /// The last value counted for each stage, so a value seen again (a
    /// re-evaluation) is not counted twice.
    last: HashMap<String, String>,
}

impl Counters {
    /// `stage` (a unique name) has the new value `value`: count it in
    /// `family` under (`kind`, `service`) unless it was already counted.
    pub fn saw(&self, family: Family, kind: &str, service: &str, stage: &str, value: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.last.get(stage).map(String::as_str) == Some(value) {
            return;
        }
        // Bounded: PR builds name a stage per image, and a deployer runs for
        // months. Forgetting only risks counting a re-evaluated value again.
        if inner.last.len() >= MAX_REMEMBERED {
            inner.last.clear();
        }
        inner.last.insert(stage.to_owned(), value.to_owned());
        *inner.counts.entry((family, kind.to_owned(), service.to_owned())).or_default() += 1;
    }

    /// The samples of `family`, for [`deployer_web::Site::counter`].
    pub fn samples(&self, family: Family) -> Vec<CounterSample> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .counts
            .iter()
            .filter(|((f, _, _), _)| *f == family)
            .map(|((_, kind, service), n)| {
                (vec![("type".to_owned(), kind.clone()), ("service".to_owned(), service.clone())], *n)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_new_value_counts_once() {
        let c = Counters::default();
        c.saw(Family::Builds, "docker", "ocaml/ocaml.org", "build amd64", "sha256:a");
        c.saw(Family::Builds, "docker", "ocaml/ocaml.org", "build amd64", "sha256:a");
        c.saw(Family::Builds, "docker", "ocaml/ocaml.org", "build arm64", "sha256:b");
        c.saw(Family::Builds, "docker", "ocaml/ocaml.org", "build amd64", "sha256:c");
        c.saw(Family::Deployments, "docker", "ocurrent/v3.ocaml.org-server", "infra_www1", "sha256:c");
        let labels =
            |kind: &str, service: &str| vec![("type".to_owned(), kind.into()), ("service".to_owned(), service.into())];
        assert_eq!(c.samples(Family::Builds), [(labels("docker", "ocaml/ocaml.org"), 3)]);
        assert_eq!(c.samples(Family::Deployments), [(labels("docker", "ocurrent/v3.ocaml.org-server"), 1)]);
        // Memory stays bounded however many images are seen; counts are kept.
        for i in 0..MAX_REMEMBERED + 10 {
            c.saw(Family::Builds, "docker", "ocaml/ocaml.org", &format!("image {i}"), "");
        }
        assert!(c.inner.lock().unwrap().last.len() <= MAX_REMEMBERED);
        assert_eq!(c.samples(Family::Builds)[0].1, 3 + MAX_REMEMBERED as u64 + 10);
    }
}
