//! Every test vector (`albatross-vectors` in the project's shared
//! reference, `../shared` beside the checkout: upstream ones taken from
//! albatross's own tests, derived ones from an independent encoder)
//! round-trips byte for byte, and the derived commands are what this crate
//! builds from typed values.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use deployer_albatross::message::*;

/// `../shared/albatross-vectors/<dir>` beside the workspace (CI lays
/// `shared` there; `DEPLOYER_SHARED` names another place). Missing is a
/// loud failure, not a skipped test.
fn vectors(dir: &str) -> PathBuf {
    let shared = std::env::var_os("DEPLOYER_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"));
    let path = shared.join("albatross-vectors").join(dir);
    assert!(path.is_dir(), "{} is missing: the shared reference must be beside the checkout", path.display());
    path
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_hex(path: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let text = text.trim();
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

fn derived(name: &str) -> Vec<u8> {
    read_hex(&vectors("derived").join(format!("{name}.hex")))
}

const IMAGE: &[u8] = b"\x7fELF-placeholder";

/// The deployment most derived vectors describe.
fn hello_config() -> Config<'static> {
    Config {
        typ: Typ::Solo5,
        compressed: false,
        image: Cow::Borrowed(IMAGE),
        startup: None,
        add_name: true,
        fail_behaviour: FailBehaviour::Restart(BTreeSet::new()),
        cpuids: BTreeSet::from([0]),
        memory: 64,
        blocks: vec![],
        bridges: vec![Bridge { netif: "service".into(), bridge: Some("br0".into()), mac: None }],
        arguments: vec!["--ipv4=10.0.0.2/24".into()],
        cpus: Some(1),
        linux_boot_partition: None,
    }
}

fn command(name: &str, cmd: UnikernelCmd<'static>) -> Wire<'static> {
    Wire { header: Header::new(Name::parse(name).unwrap()), payload: Payload::Command(Command::Unikernel(cmd)) }
}

/// `wire` encodes to the vector `name` (plain and framed) and decodes
/// back to itself.
fn check(name: &str, wire: &Wire<'_>) {
    let expected = derived(name);
    assert_eq!(hex(&wire.encode()), hex(&expected), "{name}: encoding");
    let framed = read_hex(&vectors("derived").join(format!("{name}.framed.hex")));
    assert_eq!(hex(&wire.encode_framed().unwrap()), hex(&framed), "{name}: framed");
    assert_eq!(&Wire::decode(&expected).unwrap(), wire, "{name}: decoding");
}

#[test]
fn creates_in_all_three_encodings() {
    check("cmd-create-v20-hello", &command(":hello", UnikernelCmd::Create(CreateVersion::V27, hello_config())));
    check(
        "cmd-force-create-v21-hello",
        &command(":hello", UnikernelCmd::ForceCreate(CreateVersion::V27, hello_config())),
    );
    // The older encodings carry one CPU and (v3) no add-name or cpus.
    let v4 = Config { cpus: None, ..hello_config() };
    check("cmd-force-create-OLD2-v17-hello", &command(":hello", UnikernelCmd::ForceCreate(CreateVersion::V26, v4)));
    let v3 = Config { cpus: None, ..hello_config() };
    check("cmd-create-OLD-v9-hello", &command(":hello", UnikernelCmd::Create(CreateVersion::V15, v3.clone())));
    check("cmd-force-create-OLD-v10-hello", &command(":hello", UnikernelCmd::ForceCreate(CreateVersion::V15, v3)));
}

#[test]
fn a_create_with_everything() {
    let config = Config {
        startup: Some(10),
        fail_behaviour: FailBehaviour::Restart(BTreeSet::from([0, 2, 255])),
        cpuids: BTreeSet::from([0, 1]),
        blocks: vec![Block { name: "storage".into(), host_device: Some("hello-data".into()), sector_size: Some(4096) }],
        bridges: vec![
            Bridge {
                netif: "service".into(),
                bridge: Some("br0".into()),
                mac: Some([0x00, 0x80, 0x41, 0x1a, 0x2b, 0x3c]),
            },
            Bridge { netif: "management".into(), bridge: Some("br1".into()), mac: None },
        ],
        arguments: vec!["--ipv4=10.0.0.2/24".into(), "-l".into(), "*:debug".into()],
        ..hello_config()
    };
    let name = "cmd-force-create-v21-hello-mac-block-exitcodes";
    let wire = command(":hello", UnikernelCmd::ForceCreate(CreateVersion::V27, config));
    assert_eq!(hex(&wire.encode()), hex(&derived(name)));
    // SET OF comes back in encoding order (management before service).
    let bytes = derived(name);
    let decoded = Wire::decode(&bytes).unwrap();
    let Payload::Command(Command::Unikernel(UnikernelCmd::ForceCreate(_, c))) = decoded.payload else { panic!() };
    assert_eq!(c.bridges[0].netif, "management");
    assert_eq!(c.startup, Some(10));
}

#[test]
fn info_destroy_restart_get_and_policy() {
    check("cmd-info-v19-hello", &command(":hello", UnikernelCmd::Info(InfoVersion::V27)));
    check("cmd-info-v19-root", &command(":", UnikernelCmd::Info(InfoVersion::V27)));
    check("cmd-info-OLD4-v15-hello", &command(":hello", UnikernelCmd::Info(InfoVersion::V24)));
    check("cmd-destroy-hello", &command(":hello", UnikernelCmd::Destroy));
    check("cmd-destroy-user-hello", &command("user:hello", UnikernelCmd::Destroy));
    check("cmd-restart-noargs-hello", &command(":hello", UnikernelCmd::Restart));
    check("cmd-get-hello-level0", &command(":hello", UnikernelCmd::Get(0)));
    check(
        "cmd-policy-info-root",
        &Wire { header: Header::new(Name::root()), payload: Payload::Command(Command::PolicyInfo) },
    );
}

#[test]
fn replies_and_failures() {
    let reply = |payload| Wire { header: Header::new(Name::unikernel("hello").unwrap()), payload };
    check("reply-success-created-hello", &reply(Payload::Success(Success::String("created unikernel".into()))));
    check("reply-success-destroyed-hello", &reply(Payload::Success(Success::String("destroyed unikernel".into()))));
    check(
        "reply-failure-already-running-hello",
        &reply(Payload::Failure("Unikernel with same name is already running".into())),
    );
    check(
        "reply-success-unikernel-info-empty",
        &reply(Payload::Success(Success::UnikernelInfo(InfoVersion::V27, vec![]))),
    );
    let info = Info {
        typ: Typ::Solo5,
        startup: None,
        fail_behaviour: FailBehaviour::Restart(BTreeSet::new()),
        cpuids: BTreeSet::from([0]),
        memory: 64,
        digest: (0u8..32).collect(),
        blocks: vec![],
        bridges: vec![("service".into(), "br0".into(), vec![0x00, 0x80, 0x41, 0x1a, 0x2b, 0x3c])],
        arguments: vec!["--ipv4=10.0.0.2/24".into()],
        started: Some("20250102030405Z".into()),
        cpus: Some(1),
        linux_boot_partition: None,
    };
    check(
        "reply-success-unikernel-info-hello",
        &reply(Payload::Success(Success::UnikernelInfo(
            InfoVersion::V27,
            vec![(Name::unikernel("hello").unwrap(), info)],
        ))),
    );
}

#[test]
fn certificate_extensions() {
    let ext = |name: &str| read_hex(&vectors("derived").join(format!("{name}.hex")));
    let streamed = Config { image: Cow::Borrowed(&[]), ..hello_config() };
    let cmd = Command::Unikernel(UnikernelCmd::ForceCreate(CreateVersion::V27, streamed));
    assert_eq!(hex(&cert_extension(&cmd)), hex(&ext("certext-force-create-v21-streamed-image")));
    assert_eq!(decode_cert_extension(&ext("certext-force-create-v21-streamed-image")).unwrap(), cmd);
    let info = Command::Unikernel(UnikernelCmd::Info(InfoVersion::V27));
    assert_eq!(hex(&cert_extension(&info)), hex(&ext("certext-info-v19")));
    let policy = Command::PolicyAdd(Policy {
        cpuids: vec![0, 1],
        unikernels: 16,
        memory: 1024,
        block: None,
        bridges: vec!["br0".into()],
    });
    assert_eq!(hex(&cert_extension(&policy)), hex(&ext("certext-policy-add-user")));
    assert_eq!(decode_cert_extension(&ext("certext-policy-add-user")).unwrap(), policy);
}

#[test]
fn upstream_samples_are_exact() {
    // albatross's own: console subscribe, 20 lines, for ":foo" and ":foo.bar".
    for (file, name) in [("wire-console_subscribe_v5", ":foo"), ("wire-console_subscribe_v5_2", ":foo.bar")] {
        let bytes = read_hex(&vectors("upstream").join(format!("{file}.hex")));
        let expected = Wire {
            header: Header::new(Name::parse(name).unwrap()),
            payload: Payload::Command(Command::ConsoleSubscribe(Subscribe::Count(20))),
        };
        assert_eq!(Wire::decode(&bytes).unwrap(), expected, "{file}");
        assert_eq!(hex(&expected.encode()), hex(&bytes), "{file}");
        assert_eq!(std::fs::read(vectors("upstream").join(format!("{file}.der"))).unwrap(), bytes);
    }
    for file in ["cert-bistro_console_subscribe_v5-leaf", "cert-bistro_console_subscribe_v5_2-leaf"] {
        let bytes = std::fs::read(vectors("upstream").join(format!("{file}.albatross-ext.der"))).unwrap();
        let cmd = decode_cert_extension(&bytes).unwrap();
        assert_eq!(cmd, Command::ConsoleSubscribe(Subscribe::Count(20)));
        assert_eq!(cert_extension(&cmd), bytes, "{file}");
    }
}

#[test]
fn every_vector_file_round_trips() {
    let mut n = 0;
    for dir in ["derived", "upstream"] {
        for entry in std::fs::read_dir(vectors(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".hex") || name.ends_with(".framed.hex") {
                continue;
            }
            let bytes = read_hex(&path);
            let again = if name.starts_with("certext") {
                cert_extension(&decode_cert_extension(&bytes).unwrap_or_else(|e| panic!("{name}: {e}")))
            } else {
                Wire::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}")).encode()
            };
            assert_eq!(hex(&again), hex(&bytes), "{name}");
            n += 1;
        }
    }
    assert!(n >= 24, "only {n} vectors found");
}

#[test]
fn strict_decoding() {
    let good = derived("cmd-info-v19-hello");
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(Wire::decode(&trailing).unwrap_err().to_string().contains("trailing"));
    assert!(Wire::decode(&good[..good.len() - 1]).is_err(), "truncated");
    let mut unknown = good.clone();
    let at = unknown.iter().rposition(|&b| b == 0xb3).unwrap(); // info [19]
    unknown[at] = 0xbe; // [30]: no such command
    assert!(Wire::decode(&unknown).unwrap_err().to_string().contains("unknown unikernel command"));
    assert!(Name::parse("-bad").is_err() && Name::parse("a b").is_err() && Name::parse(&"x".repeat(64)).is_err());
    assert_eq!(Name::parse("User:Hello").unwrap().to_string(), "user:hello");
}
