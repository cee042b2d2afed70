//! `DOCKER_HOST` addresses and Docker contexts' `meta.json`: the first line
//! of the input is an address, the rest a context's `meta.json`. Nothing
//! panics; a TCP address read back is the same endpoint; a context resolves
//! to what its host address parses to.
#![no_main]

use std::sync::OnceLock;

use deployer_docker::{Endpoint, TlsFiles};
use deployer_fuzz::scratch;
use libfuzzer_sys::fuzz_target;

fn tls() -> TlsFiles {
    TlsFiles { ca: "/t/ca.pem".into(), cert: "/t/cert.pem".into(), key: "/t/key.pem".into() }
}

/// The config directory, and the folder of the context `fuzz`'s meta.json.
fn dirs() -> &'static (std::path::PathBuf, std::path::PathBuf) {
    static D: OnceLock<(std::path::PathBuf, std::path::PathBuf)> = OnceLock::new();
    D.get_or_init(|| {
        let config = scratch("docker-host");
        // sha256("fuzz"), as the docker CLI names a context's folder.
        let meta = config.join("contexts/meta/93850b707585e404e4951a3ddc1f05a34b3d4f5fc081d616f46d8a2e8f1c8e68");
        std::fs::create_dir_all(&meta).expect("the context folder");
        (config, meta)
    })
}

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let (address, meta) = text.split_once('\n').unwrap_or((text, ""));
    for files in [None, Some(tls())] {
        let with_tls = files.is_some();
        if let Ok(endpoint) = Endpoint::parse(address, files.clone()) {
            match &endpoint {
                Endpoint::Tcp { address: a, .. } => {
                    let back = Endpoint::parse(&format!("tcp://{a}"), files.clone())
                        .unwrap_or_else(|e| panic!("{address:?} gave {a:?}, which does not parse: {e}"));
                    assert_eq!(back, endpoint, "{address:?} (TLS: {with_tls})");
                }
                Endpoint::Unix(path) => assert!(path.is_absolute(), "{address:?} gave {path:?}"),
                Endpoint::Ssh { destination, .. } => assert!(!destination.is_empty() && !destination.contains('/')),
            }
        }
    }
    if meta.is_empty() {
        return;
    }
    let (config, folder) = dirs();
    std::fs::write(folder.join("meta.json"), meta).expect("meta.json written");
    let resolved = deployer_docker::fuzzing::resolve_context("fuzz", config);
    // What it resolves to is what its host address reads as (no TLS files
    // are in the folder).
    if let Ok(endpoint) = resolved {
        // (serde_json's Value refuses its private raw-value key, which the
        // typed reading of meta.json ignores: nothing to compare then.)
        let Ok(json) = serde_json::from_str::<serde_json::Value>(meta) else { return };
        let host = json.pointer("/Endpoints/docker/Host").and_then(|h| h.as_str()).expect("a host");
        assert_eq!(Endpoint::parse(host, None).ok(), Some(endpoint), "{meta}");
    }
});
