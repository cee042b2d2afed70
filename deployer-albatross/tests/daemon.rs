//! Deploys end to end against the test daemon (`support/albatrossd.rs`):
//! over the Unix socket and over TLS with a test PKI, with the real engine,
//! caches and store.

mod support {
    pub mod albatrossd;
}

use std::path::{Path, PathBuf};
use std::time::Duration;

use deployer_albatross::message::{Command, CreateVersion, UnikernelCmd};
use deployer_albatross::{Albatross, Endpoint, Net, Remote, Running, Unikernel, STREAM_ABOVE};
use deployer_core::{Config, Context, Current, Engine, Output, Secret, Value, Var};
use sha2::{Digest, Sha256};
use support::albatrossd::{Behaviour, Pki, TestDaemon};

fn work(name: &str) -> PathBuf {
    let base = std::env::var_os("DEPLOYER_TEST_WORK").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("albatross-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn context(dir: &Path) -> Context {
    Context::open(&dir.join("state"), Config::default()).unwrap()
}

/// An "image" of `len` bytes (deterministic, compressible a little).
fn image(dir: &Path, name: &str, len: usize, seed: u8) -> PathBuf {
    let bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8).collect();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn sha256_hex(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
}

fn www() -> Unikernel {
    Unikernel {
        memory_mb: 64,
        nets: vec![Net { netif: "service".into(), bridge: "br0".into(), mac: None }],
        arguments: vec!["--ipv4=10.0.0.2/24".into()],
        settle: Duration::from_millis(200),
        ..Unikernel::default()
    }
}

async fn settle<T: Value + std::fmt::Debug>(
    engine: &Engine<T>,
    what: &str,
    want: impl Fn(&Output<T>) -> bool,
) -> Output<T> {
    let wait = Duration::from_secs(20);
    engine.settle(wait, want).await.unwrap_or_else(|last| panic!("{what}: still {last:?} after {wait:?}"))
}

fn done(o: &Output<Running>) -> bool {
    !matches!(o, Output::Active(_))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_deploy_is_confirmed_by_digest_and_redone_only_on_change() {
    let dir = work("local");
    let daemon = TestDaemon::start(&dir.join("d"), Behaviour::Current).await;
    let ctx = context(&dir);
    let albatross = Albatross::new(&ctx);
    let local = albatross.local("local", &daemon.socket);
    let www_path = image(&dir, "www.hvt", 100_000, 1);
    let path = Var::new("image", www_path.clone());
    let config = Var::new("config", www());
    let file = albatross.image_file("www image", &path.current());
    let deployed = config.current().and_then({
        let (albatross, local, file) = (albatross.clone(), local.clone(), file.clone());
        move |u: &Unikernel| albatross.deploy(&local, "www", &file, u.clone()).unwrap()
    });
    let engine = Engine::new(deployed);
    let out = settle(&engine, "the deploy", done).await;
    let Output::Ok(running) = out else { panic!("{out:?}") };
    assert_eq!(running.digest, sha256_hex(&www_path));
    {
        let received = daemon.received.lock().unwrap().clone();
        let Command::Unikernel(UnikernelCmd::ForceCreate(CreateVersion::V27, c)) = &received[0].command else {
            panic!("{:?}", received[0].command)
        };
        assert_eq!((c.memory, c.compressed, c.arguments.clone()), (64, true, vec!["--ipv4=10.0.0.2/24".to_string()]));
        assert_eq!(c.bridges[0].bridge.as_deref(), Some("br0"));
        assert_eq!(received[0].image.as_deref(), Some(&std::fs::read(&www_path).unwrap()[..]), "the image, inflated");
        assert_eq!(received[0].name, ":www");
        assert_eq!(received.len(), 3, "force-create, info, info after the settle time");
    }
    // The same image and config again: nothing is sent.
    path.set(www_path.clone());
    engine.step();
    assert_eq!(daemon.received.lock().unwrap().len(), 3);
    // A new config: deployed again.
    config.set(Unikernel { memory_mb: 128, ..www() });
    settle(&engine, "the second deploy", |o| done(o) && daemon.received.lock().unwrap().len() == 6).await;
    assert!(matches!(engine.output(), Output::Ok(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_daemon_gets_the_older_encodings() {
    let dir = work("old");
    let daemon = TestDaemon::start(&dir.join("d"), Behaviour::Old26).await;
    let ctx = context(&dir);
    let albatross = Albatross::new(&ctx);
    let local = albatross.local("old", &daemon.socket);
    let file = albatross.image_file("image", &Current::constant(image(&dir, "www.hvt", 5_000, 2)));
    let engine = Engine::new(albatross.deploy(&local, "www", &file, www()).unwrap());
    let out = settle(&engine, "the deploy", done).await;
    assert!(matches!(out, Output::Ok(_)), "{out:?}");
    let received = daemon.received.lock().unwrap().clone();
    assert!(matches!(received[0].command, Command::Unikernel(UnikernelCmd::ForceCreate(CreateVersion::V27, _))));
    assert!(matches!(received[1].command, Command::Unikernel(UnikernelCmd::ForceCreate(CreateVersion::V26, _))));
    let history = ctx.store.history(Default::default()).await.unwrap();
    let deploy = history.rows.iter().find(|r| r.op == "albatross-deploy").expect("the deploy's row");
    let log = String::from_utf8(ctx.jobs.read_log(&deploy.job_id, 0, 1 << 20).unwrap().0).unwrap();
    assert!(log.contains("did not understand force-create V27: trying V26"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_hangs_garbage_and_crashes_are_clear_errors() {
    let dir = work("bad");
    let ctx = context(&dir);
    let albatross = Albatross::new(&ctx);
    let cases = [
        (Behaviour::Refuse("policy: not enough memory".into()), "refused :www: policy: not enough memory"),
        (Behaviour::Hang, "did not answer within 1 s"),
        (Behaviour::Garbage, "not an albatross message"),
        (Behaviour::DiesAfterStart, "stopped within"),
    ];
    for (i, (behaviour, expected)) in cases.into_iter().enumerate() {
        let daemon = TestDaemon::start(&dir.join(format!("d{i}")), behaviour).await;
        let d = albatross.daemon(&format!("d{i}"), Endpoint::Local(daemon.socket.clone()), Duration::from_secs(1));
        let file = albatross.image_file("image", &Current::constant(image(&dir, &format!("i{i}.hvt"), 1000, i as u8)));
        let engine = Engine::new(albatross.deploy(&d, "www", &file, www()).unwrap());
        let out = settle(&engine, expected, done).await;
        let message = out.err().unwrap_or_else(|| panic!("case {i} succeeded")).message().to_owned();
        assert!(message.contains(expected), "case {i}: {message}");
    }
    // A name that is not an albatross label is refused before anything is sent.
    let d = albatross.local("none", Path::new("/nonexistent.sock"));
    let file = albatross.image_file("image", &Current::constant(dir.join("missing.hvt")));
    assert!(albatross.deploy(&d, "-bad name", &file, www()).is_err());
    // A missing image is a clear failure of its hashing job.
    let engine = Engine::new(albatross.deploy(&d, "www", &file, www()).unwrap());
    let out = settle(&engine, "the missing image", done).await;
    assert!(out.err().unwrap().message().contains("missing.hvt"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_command_rides_in_the_certificate_and_big_images_stream() {
    let dir = work("tls");
    let pki = Pki::make(&dir.join("pki"));
    let daemon = TestDaemon::start(&dir.join("d"), Behaviour::Current).await;
    let address = daemon.serve_tls(&pki).await;
    let ctx = context(&dir);
    let albatross = Albatross::new(&ctx);
    let remote = albatross.remote(
        "remote",
        Remote {
            address: address.clone(),
            server_ca: pki.root_pem.clone(),
            client_ca: pki.operator_pem.clone(),
            client_ca_key: Secret::new(pki.operator_key.clone()),
        },
    );
    let small = albatross.image_file("small", &Current::constant(image(&dir, "small.hvt", 50_000, 3)));
    // Random-ish bytes barely compress: over STREAM_ABOVE once compressed.
    let big_bytes: Vec<u8> = {
        let mut x = 0x9e3779b97f4a7c15u64;
        (0..STREAM_ABOVE + 100_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    std::fs::write(dir.join("big.hvt"), &big_bytes).unwrap();
    let big = albatross.image_file("big", &Current::constant(dir.join("big.hvt")));
    let both = albatross
        .deploy(&remote, "small", &small, www())
        .unwrap()
        .pair(&albatross.deploy(&remote, "big", &big, www()).unwrap());
    let engine = Engine::new(both);
    let out = settle(&engine, "the TLS deploys", |o| !matches!(o, Output::Active(_))).await;
    let Output::Ok((s, b)) = out else { panic!("{out:?}") };
    assert_eq!(s.digest, sha256_hex(&dir.join("small.hvt")));
    assert_eq!(b.digest, sha256_hex(&dir.join("big.hvt")));
    let received = daemon.received.lock().unwrap().clone();
    assert!(received.iter().all(|r| r.via == "tls"));
    let creates: Vec<_> =
        received.iter().filter(|r| matches!(r.command, Command::Unikernel(UnikernelCmd::ForceCreate(..)))).collect();
    assert_eq!(creates.len(), 2);
    for c in creates {
        let Command::Unikernel(UnikernelCmd::ForceCreate(_, config)) = &c.command else { unreachable!() };
        match c.name.as_str() {
            "small" => assert!(!config.image.is_empty(), "a small image travels in the certificate"),
            "big" => {
                assert!(config.image.is_empty(), "a big image is streamed after the handshake");
                assert_eq!(c.image.as_deref(), Some(&big_bytes[..]));
            }
            other => panic!("unexpected CN {other}"),
        }
    }
    // A client whose CA the endpoint does not know is refused.
    let stranger = albatross.remote(
        "stranger",
        Remote {
            address,
            server_ca: pki.root_pem.clone(),
            client_ca: pki.stranger_pem.clone(),
            client_ca_key: Secret::new(pki.stranger_key.clone()),
        },
    );
    let engine = Engine::new(albatross.deploy(&stranger, "small", &small, www()).unwrap());
    let out = settle(&engine, "the refused client", done).await;
    let message = out.err().unwrap().message().to_owned();
    assert!(message.contains("stranger") && (message.contains("TLS") || message.contains("reply")), "{message}");
    assert!(!message.contains(&pki.stranger_key[40..80]), "no key material in errors");
}

/// Security issue 19: the endpoint must be the one the server CA made for
/// it. An operator holding a sub-CA of the same root (albatross's
/// delegation) can make a server-auth certificate: an endpoint showing it
/// is refused, as is one whose certificate is not for a server (no EKU).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_certificate_made_by_an_operator_is_refused() {
    let dir = work("impostor");
    let pki = Pki::make(&dir.join("pki"));
    let daemon = TestDaemon::start(&dir.join("d"), Behaviour::Current).await;
    let ctx = context(&dir);
    let albatross = Albatross::new(&ctx);
    let small = albatross.image_file("small", &Current::constant(image(&dir, "small.hvt", 50_000, 3)));
    let cases = [("operator-made", pki.operator_made_server()), ("no-eku", pki.server_without_eku())];
    for (what, (chain, key)) in cases {
        let address = daemon.serve_tls_as(&pki, chain, key).await;
        let remote = albatross.remote(
            what,
            Remote {
                address,
                server_ca: pki.root_pem.clone(),
                client_ca: pki.operator_pem.clone(),
                client_ca_key: Secret::new(pki.operator_key.clone()),
            },
        );
        let engine = Engine::new(albatross.deploy(&remote, "small", &small, www()).unwrap());
        let out = settle(&engine, what, done).await;
        let message = out.err().unwrap_or_else(|| panic!("{what}: deployed to an impostor")).message().to_owned();
        assert!(message.contains("certificate"), "{what}: {message}");
    }
    assert!(daemon.received.lock().unwrap().is_empty(), "an impostor endpoint was sent a command");
}
