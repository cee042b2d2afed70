//! Image references (`registry/repository:tag@digest`) and images (an id or
//! a repository digest).

use std::fmt;

use serde::{Deserialize, Serialize};

/// The registry of images named without one.
pub const DOCKER_HUB: &str = "docker.io";

/// Why an image reference was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadReference {
    /// The reference given.
    pub reference: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl fmt::Display for BadReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "refusing the image reference {:?}: {}", self.reference, self.why)
    }
}

impl std::error::Error for BadReference {}

/// A parsed image reference, as Docker reads one: `[registry/]path[:tag][@digest]`.
/// A first component with a `.` or `:` (or `localhost`) is a registry;
/// otherwise the registry is Docker Hub, where one-component names live
/// under `library/`.
///
/// ```
/// use deployer_docker::ImageRef;
///
/// let r = ImageRef::parse("127.0.0.1:5000/web/app:live")?;
/// assert_eq!((r.registry(), r.repository(), r.tag()), ("127.0.0.1:5000", "web/app", Some("live")));
/// let hub = ImageRef::parse("nginx")?;
/// assert_eq!((hub.registry(), hub.repository(), hub.tag()), ("docker.io", "library/nginx", None));
/// # Ok::<(), deployer_docker::BadReference>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageRef {
    original: String,
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

/// The registry of Docker Hub as older clients name it.
const LEGACY_DOCKER_HUB: &str = "index.docker.io";

/// The longest repository path (without the registry) Docker accepts
/// (distribution/reference's `RepositoryNameTotalLengthMax`, checked on the
/// normalised path: `library/…` counts).
const NAME_MAX: usize = 255;

/// A path component as Docker's grammar has it: lower-case alphanumerics,
/// separated by one `.`, one `_`, `__`, or one or more `-`.
fn path_component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// A registry as Docker's grammar has it: a host name of components
/// (`[A-Za-z0-9]`, `-` inside), or an IPv6 address in brackets (no zone),
/// and an optional `:port`.
fn registry_ok(r: &str) -> bool {
    let (host, port) = if let Some(rest) = r.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else { return false };
        if ip.is_empty() || !ip.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => return true,
            a => match a.strip_prefix(':') {
                Some(port) => ("ok", port),
                None => return false,
            },
        }
    } else {
        match r.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => (r, "0"),
        }
    };
    let component = |c: &str| {
        !c.is_empty()
            && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !c.starts_with('-')
            && !c.ends_with('-')
    };
    !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && host.split('.').all(component)
}

impl ImageRef {
    /// Parses `reference`.
    pub fn parse(reference: &str) -> Result<ImageRef, BadReference> {
        let bad = |why| Err(BadReference { reference: reference.to_owned(), why });
        if reference.is_empty() || reference.len() > 4096 {
            return bad("it is empty or too long");
        }
        if reference.starts_with('-') || reference.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return bad("it starts with '-' or contains whitespace");
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => {
                let Some(hex) = digest.strip_prefix("sha256:") else { return bad("the digest is not sha256:…") };
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
                    return bad("the digest is not 64 lower-case hexadecimal digits");
                }
                (rest, Some(digest.to_owned()))
            }
            None => (reference, None),
        };
        // A tag follows the last ':' after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(rest[last_slash + i + 1..].to_owned())),
            None => (rest, None),
        };
        if let Some(tag) = &tag {
            let ok = !tag.is_empty()
                && tag.len() <= 128
                && tag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
                && !tag.starts_with(['.', '-']);
            if !ok {
                return bad("the tag is not [A-Za-z0-9_.-]{1,128} (not starting with '.' or '-')");
            }
        }
        // Docker's rule: the first component is a registry if it has a '.'
        // or a ':', is `localhost`, or has an upper-case letter.
        let (registry, path) = match name.split_once('/') {
            Some((first, path))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first.to_owned(), path)
            }
            _ => (DOCKER_HUB.to_owned(), name),
        };
        if !registry_ok(&registry) {
            return bad("the registry is not a host name (or [IPv6] address) with an optional :port");
        }
        let registry = if registry == LEGACY_DOCKER_HUB { DOCKER_HUB.to_owned() } else { registry };
        // As Docker: the whole reference being 64 hex digits is an image id
        // (`docker.io/<64 hex>`, or one with a tag, is a name).
        if reference.len() == 64 && reference.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return bad("a 64-digit hexadecimal string is an image id, not a repository name");
        }
        if path.is_empty() || !path.split('/').all(path_component_ok) {
            return bad("the repository path is not lower-case components separated by '/'");
        }
        let repository =
            if registry == DOCKER_HUB && !path.contains('/') { format!("library/{path}") } else { path.to_owned() };
        if repository.len() > NAME_MAX {
            return bad("the repository path is longer than 255 characters");
        }
        Ok(ImageRef { original: reference.to_owned(), registry, repository, tag, digest })
    }

    /// The registry (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository in the registry (`library/nginx`, `web/app`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if given.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if given.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The reference as given.
    pub fn as_str(&self) -> &str {
        &self.original
    }

    /// The name without tag or digest, as given (`127.0.0.1:5000/web/app`,
    /// `nginx`): what `repo@sha256:…` digests are reported against.
    pub fn name(&self) -> &str {
        let end = self.original.find('@').unwrap_or(self.original.len());
        let base = &self.original[..end];
        match &self.tag {
            Some(tag) => &base[..base.len() - tag.len() - 1],
            None => base,
        }
    }

    /// `name@digest`: this image pinned to `digest`.
    pub fn with_digest(&self, digest: &str) -> String {
        format!("{}@{digest}", self.name())
    }

    /// The tag to use: the given one, or `latest`.
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

impl TryFrom<String> for ImageRef {
    type Error = BadReference;
    fn try_from(s: String) -> Result<ImageRef, BadReference> {
        ImageRef::parse(&s)
    }
}

impl From<ImageRef> for String {
    fn from(r: ImageRef) -> String {
        r.original
    }
}

/// An image: an id (`sha256:…`, on one host) or a repository digest
/// (`repo@sha256:…`, anywhere the registry is reachable). Equal images have
/// equal strings.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Image(pub String);

impl Image {
    /// The image's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `sha256:…` part.
    pub fn digest(&self) -> &str {
        self.0.rsplit_once('@').map_or(&self.0, |(_, d)| d)
    }

    /// A short form for labels: the first 12 hex digits of the digest.
    pub fn short(&self) -> &str {
        let d = self.digest();
        let hex = d.strip_prefix("sha256:").unwrap_or(d);
        &hex[..hex.len().min(12)]
    }
}

impl fmt::Display for Image {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_docker_reads_them() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("ocurrent/ocaml-ci-service:live@{d}")).unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag(), r.digest()),
            ("docker.io", "ocurrent/ocaml-ci-service", Some("live"), Some(d.as_str()))
        );
        assert_eq!(r.name(), "ocurrent/ocaml-ci-service");
        let r = ImageRef::parse("localhost/x").unwrap();
        assert_eq!((r.registry(), r.repository(), r.tag()), ("localhost", "x", None));
        let r = ImageRef::parse("localhost:5000/a/b").unwrap();
        assert_eq!((r.registry(), r.repository(), r.name()), ("localhost:5000", "a/b", "localhost:5000/a/b"));
        assert_eq!(r.with_digest(&d), format!("localhost:5000/a/b@{d}"));
        for bad in ["", "-x", "UPPER", "a b", "x:", "x:-t", "x@sha256:abc", "x@md5:00", "a//b", "x:tag:more"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }

    /// The cases where this parser used to read a reference otherwise than
    /// Docker (distribution/reference's `ParseNormalizedNamed`) does.
    #[test]
    fn references_that_docker_normalises_or_refuses() {
        let parts = |s: &str| {
            let r = ImageRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            (r.registry().to_owned(), r.repository().to_owned())
        };
        // The legacy name of Docker Hub is Docker Hub (its credentials apply).
        assert_eq!(parts("index.docker.io/debian"), ("docker.io".into(), "library/debian".into()));
        assert_eq!(parts("index.docker.io/ocurrent/x"), ("docker.io".into(), "ocurrent/x".into()));
        assert_eq!(parts("docker.io/debian"), ("docker.io".into(), "library/debian".into()));
        // An upper-case first component is a registry, as in Docker.
        assert_eq!(parts("Foo/bar"), ("Foo".into(), "bar".into()));
        assert_eq!(parts("[2001:db8::1]:5000/app"), ("[2001:db8::1]:5000".into(), "app".into()));
        assert_eq!(parts("[::1]/app"), ("[::1]".into(), "app".into()));
        assert_eq!(parts("a__b/c-d--e.f_g"), ("docker.io".into(), "a__b/c-d--e.f_g".into()));
        for bad in [
            "dock..er/app",            // an empty domain component
            "-reg.io/app",             // a component starting with '-'
            "[fe80::1%eth0]:5000/app", // a zone in an IPv6 registry
            "reg.io:port/app",         // a port that is no number
            "a..b",                    // two separators in a path component
            "a___b",                   // three underscores
            "a.-b",                    // mixed separators
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad} was accepted");
        }
        // A bare 64-digit hex string is an image id.
        assert!(ImageRef::parse(&"ab".repeat(32)).unwrap_err().why.contains("image id"));
        // Docker's 255-character limit, on the repository path (the
        // registry does not count: reference_test.go line 275).
        let long = format!("reg.io/{}", "a".repeat(256));
        assert!(ImageRef::parse(&long).unwrap_err().why.contains("255"));
        assert!(ImageRef::parse(&format!("example.com/{}", "a".repeat(255))).is_ok());
    }

    #[test]
    fn a_bad_reference_is_a_pipeline_error_with_its_reason() {
        fn parse(s: &str) -> Result<ImageRef, deployer_core::Error> {
            Ok(ImageRef::parse(s)?)
        }
        let e = parse("dock..er/app").unwrap_err();
        assert!(e.message().contains("dock..er/app") && e.message().contains("registry"), "{}", e.message());
    }

    #[test]
    fn images_show_short() {
        let i = Image(format!("web@sha256:{}", "0123456789ab".repeat(5) + "cdef"));
        assert_eq!(i.short(), "0123456789ab");
        assert!(i.digest().starts_with("sha256:"));
    }
}
