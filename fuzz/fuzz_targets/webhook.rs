//! GitHub webhook deliveries: any headers and body, signed with the
//! webhook's secret (a header line `x-fuzz-sign: yes`) or not. Unsigned
//! deliveries are refused (401) before anything is parsed; signed ones are
//! answered 200 or 400 (413 when their declared length is over the limit),
//! never a server error, never a panic.
#![no_main]

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use deployer_core::{Config, Context};
use deployer_fuzz::{runtime, scratch, RawRequest};
use deployer_github::{sign, Auth, GitHub, MAX_BODY, WEBHOOK_PATH};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

const SECRET: &str = "fuzz-webhook-secret";

struct Target {
    rt: tokio::runtime::Runtime,
    app: axum::Router,
}

fn target() -> &'static Target {
    static T: OnceLock<Target> = OnceLock::new();
    T.get_or_init(|| {
        let rt = runtime();
        let ctx = Context::open(&scratch("webhook"), Config::default()).expect("a store");
        let app = rt.block_on(async {
            let github = GitHub::with_api(&ctx, "http://127.0.0.1:9", Auth::Anonymous).expect("a GitHub client");
            github.webhook_routes(ctx.secret(SECRET.to_owned()))
        });
        Target { rt, app }
    })
}

fuzz_target!(|input: &[u8]| {
    let t = target();
    let raw = RawRequest::parse(input);
    let signed = raw.headers.iter().any(|(n, v)| n == "x-fuzz-sign" && v == "yes");
    let mut req = Request::post(WEBHOOK_PATH);
    for (n, v) in &raw.headers {
        if n != "x-fuzz-sign" && !(signed && n == "x-hub-signature-256") {
            req = req.header(n, v);
        }
    }
    if signed {
        req = req.header("x-hub-signature-256", sign(SECRET, &raw.body));
    }
    let Ok(req) = req.body(Body::from(raw.body.clone())) else { return };
    let status = t.rt.block_on(async { t.app.clone().oneshot(req).await.expect("infallible").status() });
    // The handler reads the first content-length (the body itself is
    // counted as it is read, whatever the headers say).
    let declared_too_large = raw
        .headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .is_some_and(|(_, v)| v.to_str().ok().and_then(|l| l.parse::<usize>().ok()).is_some_and(|l| l > MAX_BODY));
    let allowed: &[StatusCode] = match (signed, declared_too_large) {
        (true, false) => &[StatusCode::OK, StatusCode::BAD_REQUEST],
        (true, true) => &[StatusCode::PAYLOAD_TOO_LARGE],
        (false, false) => &[StatusCode::UNAUTHORIZED],
        (false, true) => &[StatusCode::UNAUTHORIZED, StatusCode::PAYLOAD_TOO_LARGE],
    };
    assert!(allowed.contains(&status), "signed: {signed}, declared too large: {declared_too_large}: answered {status}");
});
