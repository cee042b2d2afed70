//! Who may do what: roles, logins, and CSRF tokens.
//!
//! With a [`Login`] configured (GitHub OAuth comes with the GitHub plugin),
//! a request's role is what the login says, and anonymous users can only
//! view. With no login, actions are allowed only from loopback clients:
//! anyone else can view, never act (the OCaml deployer made everyone an
//! admin on a public address; this does not).

use std::net::SocketAddr;

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

/// What a user may do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// See the pipeline, jobs, logs and history.
    Viewer,
    /// Also rebuild and cancel jobs.
    Builder,
    /// Also start waiting jobs early and change the confirmation level.
    Admin,
}

/// A logged-in user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// A stable id, such as `github:alice`.
    pub id: String,
    /// What they may do.
    pub role: Role,
}

/// A login system (mounted by a plugin): finds the user of a request.
pub trait Login: Send + Sync + 'static {
    /// The user a request comes from (from its session cookie), if any.
    fn user(&self, headers: &HeaderMap) -> Option<User>;

    /// Where to send people to log in.
    fn login_url(&self) -> String;
}

/// The user and role of one request.
#[derive(Clone, Debug)]
pub struct Requester {
    /// The logged-in user, if any.
    pub user: Option<User>,
    /// What this request may do.
    pub role: Role,
    /// The CSRF token forms must carry.
    pub csrf: String,
}

impl Requester {
    /// Whether the request may do what needs `role`.
    pub fn can(&self, role: Role) -> bool {
        self.role >= role
    }
}

/// Decides roles and CSRF tokens for a site.
pub(crate) struct Access {
    login: Option<Box<dyn Login>>,
    secret: [u8; 32],
}

impl Access {
    pub(crate) fn new(login: Option<Box<dyn Login>>) -> Access {
        Access { login, secret: random_secret() }
    }

    pub(crate) fn login_url(&self) -> Option<String> {
        self.login.as_ref().map(|l| l.login_url())
    }

    pub(crate) fn requester(&self, headers: &HeaderMap, peer: Option<SocketAddr>) -> Requester {
        let (user, role) = match &self.login {
            Some(login) => match login.user(headers) {
                Some(user) => {
                    let role = user.role;
                    (Some(user), role)
                }
                None => (None, Role::Viewer),
            },
            // No login: only the machine itself may act. A request forwarded
            // by a proxy on the same machine is not trusted as local.
            None => {
                let local = peer.is_some_and(|p| p.ip().is_loopback()) && !headers.contains_key("x-forwarded-for");
                (None, if local { Role::Admin } else { Role::Viewer })
            }
        };
        let csrf = self.csrf_for(user.as_ref().map_or("", |u| u.id.as_str()));
        Requester { user, role, csrf }
    }

    fn csrf_for(&self, user: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(b"csrf\0");
        h.update(user.as_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Compares two tokens in time independent of where they differ.
pub(crate) fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_secret() -> [u8; 32] {
    let mut secret = [0u8; 32];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut secret)) {
        Ok(()) => secret,
        Err(e) => {
            // Fall back on the hasher's per-process random keys.
            tracing::warn!("cannot read /dev/urandom ({e}); using a weaker CSRF secret");
            use std::hash::{BuildHasher, Hasher};
            for chunk in secret.chunks_mut(8) {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_u64(std::process::id() as u64);
                chunk.copy_from_slice(&h.finish().to_le_bytes());
            }
            secret
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct HeaderLogin;
    impl Login for HeaderLogin {
        fn user(&self, headers: &HeaderMap) -> Option<User> {
            let id = headers.get("x-test-user")?.to_str().ok()?;
            Some(User { id: id.into(), role: if id == "boss" { Role::Admin } else { Role::Builder } })
        }
        fn login_url(&self) -> String {
            "/login".into()
        }
    }

    #[test]
    fn without_login_only_loopback_clients_act() {
        let access = Access::new(None);
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let remote: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        assert_eq!(access.requester(&HeaderMap::new(), Some(local)).role, Role::Admin);
        assert_eq!(access.requester(&HeaderMap::new(), Some(remote)).role, Role::Viewer);
        let mut proxied = HeaderMap::new();
        proxied.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
        assert_eq!(access.requester(&proxied, Some(local)).role, Role::Viewer);
    }

    #[test]
    fn with_login_anonymous_users_only_view_even_locally() {
        let access = Access::new(Some(Box::new(HeaderLogin)));
        let local: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        assert_eq!(access.requester(&HeaderMap::new(), Some(local)).role, Role::Viewer);
        let mut h = HeaderMap::new();
        h.insert("x-test-user", "alice".parse().unwrap());
        let alice = access.requester(&h, Some(local));
        assert_eq!(alice.role, Role::Builder);
        h.insert("x-test-user", "boss".parse().unwrap());
        let boss = access.requester(&h, Some(local));
        assert_ne!(alice.csrf, boss.csrf, "tokens are per user");
        assert!(same_token(&boss.csrf, &access.requester(&h, None).csrf));
        assert!(!same_token(&boss.csrf, &alice.csrf));
    }
}
