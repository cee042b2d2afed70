//! Image references as a user or a registry writes them: parsing never
//! panics, and what parses is consistent with itself: it parses again to
//! the same parts, its name pinned to a digest parses to the same
//! repository, and the name is within Docker's limits.
#![no_main]

use deployer_docker::ImageRef;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let Ok(r) = ImageRef::parse(text) else { return };
    let again = ImageRef::parse(r.as_str()).expect("a reference parses again");
    assert_eq!(again, r);
    assert!(!r.registry().is_empty() && !r.repository().is_empty(), "{r:?}");
    assert!(r.repository().len() <= 255, "{r:?} is over Docker's limit");
    assert!(r.as_str().starts_with(r.name()), "{r:?}: its name is not where it starts");
    let digest = format!("sha256:{}", "0".repeat(64));
    let pinned = ImageRef::parse(&r.with_digest(&digest)).unwrap_or_else(|e| panic!("{r:?} pinned: {e}"));
    assert_eq!((pinned.registry(), pinned.repository()), (r.registry(), r.repository()));
    assert_eq!(pinned.digest(), Some(digest.as_str()));
    if let Some(tag) = r.tag() {
        assert!(!tag.is_empty() && tag.len() <= 128, "{r:?}");
    }
    // The same name read through Docker Hub's full name is the same image.
    if r.registry() == deployer_docker::DOCKER_HUB && r.digest().is_none() {
        let full = format!("docker.io/{}:{}", r.repository(), r.tag_or_latest());
        let f = ImageRef::parse(&full).unwrap_or_else(|e| panic!("{full}: {e}"));
        assert_eq!((f.registry(), f.repository()), (r.registry(), r.repository()));
    }
});
