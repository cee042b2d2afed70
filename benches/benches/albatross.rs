//! Albatross codec benchmark: encoding and decoding a force-create command
//! carrying a 10 MiB unikernel image. Target: at least 500 MiB/s for the
//! round trip (the image is copied once, into the encoded message; the
//! decoder borrows it).
//!
//! Run with `cargo bench -p deployer-benches --bench albatross`. In quick
//! mode (`cargo test --benches`) it runs once and checks the round trip.

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::time::Instant;

use criterion::{criterion_group, Criterion, Throughput};
use deployer_albatross::message::*;
use deployer_benches::quick;

fn create(image: &[u8]) -> Wire<'_> {
    let config = Config {
        typ: Typ::Solo5,
        compressed: false,
        image: Cow::Borrowed(image),
        startup: None,
        add_name: true,
        fail_behaviour: FailBehaviour::Restart(BTreeSet::new()),
        cpuids: BTreeSet::from([0]),
        memory: 256,
        blocks: vec![],
        bridges: vec![Bridge { netif: "service".into(), bridge: Some("br0".into()), mac: None }],
        arguments: vec!["--ipv4=10.0.0.2/24".into()],
        cpus: Some(1),
        linux_boot_partition: None,
    };
    Wire {
        header: Header::new(Name::unikernel("www").unwrap()),
        payload: Payload::Command(Command::Unikernel(UnikernelCmd::ForceCreate(CreateVersion::V27, config))),
    }
}

/// Encodes and decodes once; the decoded image's length.
fn round_trip(wire: &Wire<'_>) -> usize {
    let framed = wire.encode_framed().unwrap();
    let decoded = Wire::decode(&framed[4..]).expect("it decodes");
    match decoded.payload {
        Payload::Command(Command::Unikernel(UnikernelCmd::ForceCreate(_, c))) => c.image.len(),
        _ => panic!("not a force-create"),
    }
}

fn codec(c: &mut Criterion) {
    let image: Vec<u8> = (0..10u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    let wire = create(&image);
    assert_eq!(round_trip(&wire), image.len());
    // A plain measurement for the report (criterion's below when measured).
    let rounds = if quick() { 1 } else { 50 };
    let start = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(round_trip(&wire));
    }
    let secs = start.elapsed().as_secs_f64() / rounds as f64;
    let mib = image.len() as f64 / (1 << 20) as f64;
    let rate = mib / secs;
    eprintln!(
        "albatross: encode + decode of a create with a {mib:.0} MiB image: {:.2} ms, {rate:.0} MiB/s",
        secs * 1e3
    );
    if quick() {
        return;
    }
    assert!(rate >= 500.0, "the codec does {rate:.0} MiB/s, under the 500 MiB/s target");
    let mut group = c.benchmark_group("albatross");
    group.throughput(Throughput::Bytes(image.len() as u64));
    group.bench_function("encode + decode, 10 MiB image", |b| b.iter(|| round_trip(&wire)));
    group.finish();
}

criterion_group!(benches, codec);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
