//! Host keys: `known_hosts` files as OpenSSH reads them, and the decision
//! on a server's key.
//!
//! Supported: plain and hashed (`|1|salt|hash`) host names, `[host]:port`
//! for ports other than 22, comma-separated lists, `*` and `?` wildcards,
//! `!` negations, `@revoked` keys, spaces or tabs between fields, comments.
//! `@cert-authority` lines are skipped (host certificates are not used).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::ssh_key::{Algorithm, PublicKey};
use sha1::Sha1;

use crate::error::SshError;
use crate::pattern::wildcard;

/// How a server's host key is checked.
#[derive(Clone, Debug)]
pub enum HostKeyPolicy {
    /// The key must be in this `known_hosts` file.
    KnownHosts(PathBuf),
    /// The key must be this one (an OpenSSH public key line, such as the
    /// contents of the server's `ssh_host_ed25519_key.pub`).
    Pinned(PublicKey),
    /// Trust on first use: a host not in the file is added to it (a changed
    /// key is still refused). Only when asked for.
    LearnUnknown(PathBuf),
}

/// What a `known_hosts` file says of a host's key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Listed for this host.
    Known,
    /// The host has other keys of the same type: the key changed (line).
    Changed(usize),
    /// Marked `@revoked` (line).
    Revoked(usize),
    /// The host is not listed with a key of this type.
    Unknown,
}

/// The name a host is listed under: `host`, or `[host]:port` off port 22,
/// in lower case (OpenSSH lower-cases the name before it looks it up or
/// hashes it).
pub(crate) fn lookup_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// Whether `path` keeps nothing written to it (`/dev/null`, or another
/// file that is not a regular file): learning into it learns nothing.
pub(crate) fn forgets(path: &Path) -> bool {
    match std::fs::metadata(path) {
        Ok(m) => !m.is_file(),
        Err(_) => false, // made when the first key is learned
    }
}

/// The first line listing any (not revoked) key for `host:port`, of any type.
pub(crate) fn first_listed(text: &str, host: &str, port: u16) -> Option<usize> {
    entries(text, &lookup_name(host, port)).into_iter().find(|e| !e.revoked).map(|e| e.line)
}

/// Whether one host pattern (plain, wildcard or hashed) names `name`.
fn pattern_matches(pattern: &str, name: &str) -> bool {
    if let Some(hashed) = pattern.strip_prefix("|1|") {
        let Some((salt, hash)) = hashed.split_once('|') else { return false };
        let b64 = base64::engine::general_purpose::STANDARD;
        let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else { return false };
        let Ok(mac) = Hmac::<Sha1>::new_from_slice(&salt) else { return false };
        return mac.chain_update(name.as_bytes()).verify_slice(&hash).is_ok();
    }
    wildcard(pattern.as_bytes(), name.as_bytes())
}

/// Whether a comma-separated host list names `name`: a positive pattern
/// matches and no negated one does.
fn hosts_match(list: &str, name: &str) -> bool {
    let mut matched = false;
    for pattern in list.split(',') {
        if let Some(negated) = pattern.strip_prefix('!') {
            if pattern_matches(negated, name) {
                return false;
            }
        } else if pattern_matches(pattern, name) {
            matched = true;
        }
    }
    matched
}

/// One usable line of a `known_hosts` file.
struct Entry {
    line: usize,
    revoked: bool,
    key: PublicKey,
}

/// The entries of `text` that name `name` (lines that do not parse are
/// skipped, as OpenSSH does).
fn entries(text: &str, name: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut fields = line.split([' ', '\t']).filter(|f| !f.is_empty());
        let Some(mut first) = fields.next() else { continue };
        if first.starts_with('#') {
            continue;
        }
        let mut revoked = false;
        if first.starts_with('@') {
            match first {
                "@revoked" => revoked = true,
                _ => continue, // @cert-authority: not used
            }
            let Some(hosts) = fields.next() else { continue };
            first = hosts;
        }
        let (Some(_kind), Some(blob)) = (fields.next(), fields.next()) else { continue };
        if !hosts_match(first, name) {
            continue;
        }
        if let Ok(key) = russh::keys::parse_public_key_base64(blob) {
            out.push(Entry { line: i + 1, revoked, key });
        }
    }
    out
}

/// What `text` (a `known_hosts` file) says of `key` for `host:port`.
pub(crate) fn check(text: &str, host: &str, port: u16, key: &PublicKey) -> Verdict {
    let entries = entries(text, &lookup_name(host, port));
    if let Some(e) = entries.iter().find(|e| e.revoked && e.key.key_data() == key.key_data()) {
        return Verdict::Revoked(e.line);
    }
    let listed: Vec<&Entry> = entries.iter().filter(|e| !e.revoked).collect();
    if listed.iter().any(|e| e.key.key_data() == key.key_data()) {
        return Verdict::Known;
    }
    match listed.iter().find(|e| e.key.algorithm() == key.algorithm()) {
        Some(e) => Verdict::Changed(e.line),
        None => Verdict::Unknown,
    }
}

/// The key types listed for `host:port`, in file order: the server is asked
/// for one of these first, so that a known key is the one it shows.
pub(crate) fn known_algorithms(text: &str, host: &str, port: u16) -> Vec<Algorithm> {
    let mut out: Vec<Algorithm> = Vec::new();
    for e in entries(text, &lookup_name(host, port)).into_iter().filter(|e| !e.revoked) {
        if !out.contains(&e.key.algorithm()) {
            out.push(e.key.algorithm());
        }
    }
    out
}

/// The line recording `key` for `host:port`.
pub(crate) fn line_for(host: &str, port: u16, key: &PublicKey) -> Result<String, SshError> {
    let openssh = key.to_openssh().map_err(|e| SshError::Key(format!("cannot encode the host key: {e}")))?;
    let mut parts = openssh.split(' ');
    let (kind, blob) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    Ok(format!("{} {kind} {blob}\n", lookup_name(host, port)))
}

/// Reads a `known_hosts` file; a missing one is empty.
pub(crate) fn read(path: &Path) -> Result<String, SshError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(SshError::Config(format!("cannot read {}: {e}", path.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIHERYbVActYdOJlXncfi0+ejMA0oDcgh1KTWLBpDe9QK";
    const ED_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIISVnSmUtyK2MMTBEgmJ7pEU4TkAoHrhuj7iEVkCDyXb";

    fn key(b64: &str) -> PublicKey {
        russh::keys::parse_public_key_base64(b64).unwrap()
    }

    /// `|1|salt|hash` for `name`, as `ssh-keygen -H` writes it.
    fn hashed(name: &str, salt: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mac = Hmac::<Sha1>::new_from_slice(salt).unwrap().chain_update(name.as_bytes()).finalize();
        format!("|1|{}|{}", b64.encode(salt), b64.encode(mac.into_bytes()))
    }

    #[test]
    fn plain_bracketed_hashed_and_wildcard_entries() {
        let (a, b) = (key(ED_A), key(ED_B));
        let text = format!(
            "# a comment\n\
             example.org ssh-ed25519 {ED_A}\n\
             [127.0.0.1]:2222\tssh-ed25519\t{ED_A}  comment\n\
             {} ssh-ed25519 {ED_A}\n\
             [10.0.0.*]:22?? ssh-ed25519 {ED_A}\n\
             *.example.com,!bad.example.com ssh-ed25519 {ED_A}\n\
             garbage line\n",
            hashed("hashed.example.net", b"0123456789abcdefghij"),
        );
        for (host, port) in [
            ("example.org", 22),
            ("EXAMPLE.ORG", 22),
            ("127.0.0.1", 2222),
            ("hashed.example.net", 22),
            ("10.0.0.7", 2201),
            ("a.example.com", 22),
        ] {
            assert_eq!(check(&text, host, port, &a), Verdict::Known, "{host}:{port}");
        }
        assert_eq!(check(&text, "example.org", 2222, &a), Verdict::Unknown, "another port is another host");
        assert_eq!(check(&text, "bad.example.com", 22, &a), Verdict::Unknown, "negated");
        assert_eq!(check(&text, "other.net", 22, &a), Verdict::Unknown);
        assert_eq!(check(&text, "127.0.0.1", 2222, &b), Verdict::Changed(3));
        assert_eq!(check(&text, "hashed.example.net", 22, &b), Verdict::Changed(4));
        assert_eq!(known_algorithms(&text, "example.org", 22), vec![Algorithm::Ed25519]);
    }

    #[test]
    fn a_revoked_key_is_refused_even_when_also_listed() {
        let a = key(ED_A);
        let text =
            format!("h ssh-ed25519 {ED_A}\n@revoked * ssh-ed25519 {ED_A}\n@cert-authority * ssh-ed25519 {ED_B}\n");
        assert_eq!(check(&text, "h", 22, &a), Verdict::Revoked(2));
        assert_eq!(check(&text, "h", 22, &key(ED_B)), Verdict::Changed(1), "a CA line is no listing");
    }

    #[test]
    fn hashed_names_are_looked_up_in_lower_case_as_openssh_does() {
        let a = key(ED_A);
        // `ssh-keygen -H` hashes the lower-case name.
        let text = format!("{} ssh-ed25519 {ED_A}\n", hashed("build.example.org", b"salt-salt-salt-salt!"));
        assert_eq!(check(&text, "Build.Example.ORG", 22, &a), Verdict::Known);
        let text = format!("{} ssh-ed25519 {ED_A}\n", hashed("[build.example.org]:2222", b"another-salt-20bytes"));
        assert_eq!(check(&text, "BUILD.example.org", 2222, &a), Verdict::Known);
        assert_eq!(line_for("Build.Example.org", 22, &a).unwrap().split(' ').next(), Some("build.example.org"));
    }

    #[test]
    fn a_learned_line_is_found_again() {
        let a = key(ED_A);
        let line = line_for("127.0.0.1", 2200, &a).unwrap();
        assert!(line.starts_with("[127.0.0.1]:2200 ssh-ed25519 "), "{line}");
        assert_eq!(check(&line, "127.0.0.1", 2200, &a), Verdict::Known);
    }
}
