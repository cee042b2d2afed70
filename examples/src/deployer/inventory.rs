//! What the services overview shows, kept as the pipeline runs: the state
//! of every service and unikernel, which commit each pushed image was built
//! from (an index kept in the state directory, so it outlives restarts),
//! and the versions an admin pinned with "deploy this version again".
//!
//! The pipeline feeds it through observers (`map`s over stage states); the
//! web pages read it, and the core's history for past deploys.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use deployer_core::{Current, Output, Var};
use deployer_docker::Image;
use serde::{Deserialize, Serialize};

/// A service on a host, or a unikernel (host = its albatross daemon).
pub type Key = (String, String);

/// Which commit an image was built from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Built {
    /// The image's digest (`sha256:…`).
    pub digest: String,
    /// `owner/name`.
    pub repo: String,
    /// The branch.
    pub branch: String,
    /// The commit.
    pub hash: String,
}

/// Where a service stands now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Now {
    /// The image (or unikernel) digest it runs, if known.
    pub digest: Option<String>,
    /// Since when (Unix milliseconds), if known.
    pub since: Option<i64>,
    /// `converged`, `updating`, `waiting`, `drifting` or `failed`.
    pub state: &'static str,
    /// The error, when drifting or failed.
    pub message: Option<String>,
}

/// A version an admin asked to deploy again: `image` stays deployed until
/// the branch's target moves on from `instead_of`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pin {
    /// The image to deploy.
    pub image: Image,
    /// The target's image when it was pinned.
    pub instead_of: Image,
}

/// The pinned versions, by service.
pub type Pins = BTreeMap<Key, Pin>;

#[derive(Default)]
struct Inner {
    now: BTreeMap<Key, Now>,
    built: HashMap<String, Built>,
    targets: BTreeMap<Key, Image>,
}

/// The shared inventory. Cloning gives another handle on the same one.
#[derive(Clone)]
pub struct Inventory {
    inner: Arc<Mutex<Inner>>,
    pins: Var<Pins>,
    index: PathBuf,
}

impl Inventory {
    /// The inventory whose commit index is `<state_dir>/deployer-index.jsonl`
    /// (read now; a torn last line is skipped).
    pub fn open(state_dir: &Path) -> Inventory {
        let index = state_dir.join("deployer-index.jsonl");
        let mut built = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(&index) {
            for line in text.lines() {
                if let Ok(b) = serde_json::from_str::<Built>(line) {
                    built.insert(b.digest.clone(), b);
                }
            }
        }
        Inventory {
            inner: Arc::new(Mutex::new(Inner { now: BTreeMap::new(), built, targets: BTreeMap::new() })),
            pins: Var::new("pinned versions", Pins::new()),
            index,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that `image` was built from `hash` of `repo`'s `branch`.
    pub fn note_built(&self, image: &Image, repo: &str, branch: &str, hash: &str) {
        let b = Built {
            digest: image.digest().to_owned(),
            repo: repo.to_owned(),
            branch: branch.to_owned(),
            hash: hash.to_owned(),
        };
        let mut inner = self.lock();
        if inner.built.get(&b.digest) == Some(&b) {
            return;
        }
        if let Ok(line) = serde_json::to_string(&b) {
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.index)
                .and_then(|mut f| writeln!(f, "{line}"));
            if let Err(e) = written {
                tracing::warn!("recording {} in {}: {e}", b.digest, self.index.display());
            }
        }
        inner.built.insert(b.digest.clone(), b);
    }

    /// The commit `digest` was built from, if known.
    pub fn built(&self, digest: &str) -> Option<Built> {
        self.lock().built.get(digest).cloned()
    }

    /// Notes a service's state from its stage's output; `runs` gives the
    /// digest and time of a value.
    pub fn note_now<T>(&self, key: Key, output: &Output<T>, runs: impl Fn(&T) -> (String, Option<i64>)) {
        let mut inner = self.lock();
        let previous = inner.now.get(&key).cloned();
        let now = match output {
            Output::Ok(v) => {
                let (digest, since) = runs(v);
                Now { digest: Some(digest), since, state: "converged", message: None }
            }
            Output::Active(a) => {
                let state = if matches!(a, deployer_core::ActiveState::WaitingForConfirmation) {
                    "waiting"
                } else {
                    "updating"
                };
                // What ran before still runs.
                let (digest, since) = previous.map(|p| (p.digest, p.since)).unwrap_or((None, None));
                Now { digest, since, state, message: None }
            }
            Output::Err(e) => {
                let drift = e.message().starts_with("drift:");
                let (digest, since) = previous.map(|p| (p.digest, p.since)).unwrap_or((None, None));
                let state = if drift { "drifting" } else { "failed" };
                Now { digest, since, state, message: Some(e.message().to_owned()) }
            }
        };
        inner.now.insert(key, now);
    }

    /// Where `key` stands, if the pipeline has said.
    pub fn now(&self, key: &Key) -> Option<Now> {
        self.lock().now.get(key).cloned()
    }

    /// The pinned versions, as a stage (one box, "pinned versions").
    pub fn pins(&self) -> Current<Pins> {
        self.pins.current()
    }

    /// Pins `image` on `key` instead of the target's current `instead_of`.
    pub fn pin(&self, key: Key, image: Image, instead_of: Image) {
        self.pins.update(|o| {
            let mut pins = match o {
                Output::Ok(p) => p.clone(),
                _ => Pins::new(),
            };
            pins.insert(key, Pin { image, instead_of });
            Output::Ok(pins)
        });
    }

    /// The image to deploy on `key`: the pinned one while the target is
    /// still what it was when pinned, else the target.
    pub fn choose(key: &Key, target: &Image, pins: &Pins) -> Image {
        match pins.get(key) {
            Some(p) if &p.instead_of == target => p.image.clone(),
            _ => target.clone(),
        }
    }
}

impl Inventory {
    /// Notes the target image the branch of `key` pushed last.
    pub fn note_target(&self, key: Key, image: &Image) {
        self.lock().targets.insert(key, image.clone());
    }

    /// The target image of `key`'s branch, once pushed.
    pub fn target(&self, key: &Key) -> Option<Image> {
        self.lock().targets.get(key).cloned()
    }
}
