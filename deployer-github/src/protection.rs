//! Whether a deploy branch's protection requires the deployability check.
//!
//! A branch whose protection does not require the check can be pushed to
//! with a commit that failed it, and the deployer would deploy it. The
//! report needs a token that may read branch protection (the App's
//! "Administration: read" permission); without it the answer is
//! [`Protection::Unknown`], which says so.

use serde_json::Value;

use deployer_core::Error;

use crate::api::Api;
use crate::repo::Repo;

/// What a branch's protection says about a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protection {
    /// The check must pass before anything is merged into the branch.
    Required,
    /// The branch is protected with required checks, but not this one.
    NotRequired {
        /// The checks it does require.
        required: Vec<String>,
    },
    /// The branch is not protected, or requires no checks.
    Unprotected,
    /// The token may not read the branch's protection; the reason.
    Unknown(String),
}

impl Protection {
    /// True when the check is required.
    pub fn is_required(&self) -> bool {
        matches!(self, Protection::Required)
    }
}

impl std::fmt::Display for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Protection::Required => f.write_str("required"),
            Protection::NotRequired { required } => write!(f, "not required (requires {})", required.join(", ")),
            Protection::Unprotected => f.write_str("not required (no required checks)"),
            Protection::Unknown(why) => write!(f, "unknown ({why})"),
        }
    }
}

/// Reads `branch`'s required status checks and looks for `check`.
pub(crate) async fn read(api: &Api, repo: &Repo, branch: &str, check: &str) -> Result<Protection, Error> {
    let path = format!(
        "/repos/{}/{}/branches/{}/protection/required_status_checks",
        repo.owner,
        repo.name,
        encode_branch(branch)
    );
    match api.get_or_refused(repo, &path).await? {
        Ok(v) => Ok(from_required_checks(&v, check)),
        Err(refused) if refused.status == 404 => Ok(Protection::Unprotected),
        Err(refused) if refused.status == 403 || refused.status == 401 => Ok(Protection::Unknown(format!(
            "the token may not read {repo}'s branch protection: give the App \"Administration: read\""
        ))),
        Err(refused) => Err(Error::msg(refused.message)),
    }
}

/// The check names in a `required_status_checks` body (both its `contexts`
/// and its newer `checks` list).
fn from_required_checks(v: &Value, check: &str) -> Protection {
    let mut required: Vec<String> = Vec::new();
    let contexts = v.get("contexts").and_then(Value::as_array).into_iter().flatten();
    let checks = v.get("checks").and_then(Value::as_array).into_iter().flatten().filter_map(|c| c.get("context"));
    for name in contexts.chain(checks).filter_map(Value::as_str) {
        if !required.iter().any(|r| r == name) {
            required.push(name.to_owned());
        }
    }
    if required.iter().any(|r| r == check) {
        Protection::Required
    } else if required.is_empty() {
        Protection::Unprotected
    } else {
        Protection::NotRequired { required }
    }
}

/// A branch name in a URL path: slashes stay (GitHub reads them), all else
/// outside the unreserved set is percent-encoded.
fn encode_branch(branch: &str) -> String {
    let mut out = String::with_capacity(branch.len());
    for b in branch.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_checks_are_read_from_both_lists() {
        let body = serde_json::json!({
            "strict": true,
            "contexts": ["ci/build"],
            "checks": [{"context": "ci/build", "app_id": 1}, {"context": "deployability", "app_id": 7}]
        });
        assert_eq!(from_required_checks(&body, "deployability"), Protection::Required);
        assert_eq!(
            from_required_checks(&body, "other"),
            Protection::NotRequired { required: vec!["ci/build".into(), "deployability".into()] }
        );
        assert_eq!(from_required_checks(&serde_json::json!({"contexts": []}), "x"), Protection::Unprotected);
    }

    #[test]
    fn branch_names_are_encoded() {
        assert_eq!(encode_branch("live/ocaml org#1"), "live/ocaml%20org%231");
        assert_eq!(encode_branch("live-ci3"), "live-ci3");
    }
}
