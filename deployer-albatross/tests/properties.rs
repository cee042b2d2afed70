//! Properties of the codec over generated messages: decoding what was
//! encoded gives the value back (sets in their DER order), and encoding is
//! a function of the value (decode then encode gives the same bytes).

use std::borrow::Cow;

use deployer_albatross::message::*;
use proptest::collection::{btree_set, vec};
use proptest::prelude::*;

fn label() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9.-]{0,20}"
}

fn name() -> impl Strategy<Value = Name> {
    (vec(label(), 0..3), proptest::option::of(label())).prop_map(|(path, label)| {
        let text = format!("{}:{}", path.join(":"), label.unwrap_or_default());
        Name::parse(&text).expect("generated names are valid")
    })
}

fn fail() -> impl Strategy<Value = FailBehaviour> {
    prop_oneof![Just(FailBehaviour::Quit), btree_set(any::<i64>(), 0..4).prop_map(FailBehaviour::Restart)]
}

fn config() -> impl Strategy<Value = Config<'static>> {
    (
        (
            prop_oneof![Just(Typ::Solo5), Just(Typ::Bhyve)],
            any::<bool>(),
            vec(any::<u8>(), 0..300),
            proptest::option::of(any::<i64>()),
        ),
        (any::<bool>(), fail(), btree_set(0i64..64, 1..4), 1i64..1_000_000),
        vec((label(), proptest::option::of(label()), proptest::option::of(512i64..8192)), 0..3),
        vec((label(), proptest::option::of(label()), proptest::option::of(any::<[u8; 6]>())), 0..3),
        (vec(".{0,30}", 0..4), proptest::option::of(1i64..16), proptest::option::of(label())),
    )
        .prop_map(
            |(
                (typ, compressed, image, startup),
                (add_name, fail_behaviour, cpuids, memory),
                blocks,
                bridges,
                (arguments, cpus, linux),
            )| Config {
                typ,
                compressed,
                image: Cow::Owned(image),
                startup,
                add_name,
                fail_behaviour,
                cpuids,
                memory,
                blocks: blocks
                    .into_iter()
                    .map(|(name, host_device, sector_size)| Block { name, host_device, sector_size })
                    .collect(),
                bridges: bridges.into_iter().map(|(netif, bridge, mac)| Bridge { netif, bridge, mac }).collect(),
                arguments,
                cpus,
                linux_boot_partition: linux,
            },
        )
}

fn command() -> impl Strategy<Value = Command<'static>> {
    prop_oneof![
        config().prop_map(|c| Command::Unikernel(UnikernelCmd::Create(CreateVersion::V27, c))),
        config().prop_map(|c| Command::Unikernel(UnikernelCmd::ForceCreate(CreateVersion::V27, c))),
        Just(Command::Unikernel(UnikernelCmd::Destroy)),
        prop_oneof![Just(InfoVersion::V27), Just(InfoVersion::V26), Just(InfoVersion::V24)]
            .prop_map(|v| Command::Unikernel(UnikernelCmd::Info(v))),
        (0i64..10).prop_map(|l| Command::Unikernel(UnikernelCmd::Get(l))),
        Just(Command::Unikernel(UnikernelCmd::Restart)),
        any::<i64>().prop_map(|n| Command::ConsoleSubscribe(Subscribe::Count(n))),
        Just(Command::PolicyInfo),
    ]
}

fn payload() -> impl Strategy<Value = Payload<'static>> {
    prop_oneof![
        command().prop_map(Payload::Command),
        ".{0,40}".prop_map(|s| Payload::Success(Success::String(s))),
        Just(Payload::Success(Success::Empty)),
        ".{0,40}".prop_map(Payload::Failure),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn decode_after_encode_is_the_identity(name in name(), sequence in any::<i64>(), payload in payload()) {
        let wire = Wire { header: Header { version: VERSION, sequence, name }, payload };
        let bytes = wire.encode();
        let decoded = Wire::decode(&bytes).expect("what was encoded decodes");
        // Encoding is canonical: the decoded value encodes to the same bytes.
        prop_assert_eq!(decoded.encode(), bytes.clone());
        // And the value is the same, once SET OF members are in DER order.
        let again = Wire::decode(&bytes).unwrap();
        prop_assert_eq!(&decoded, &again);
        match (&wire.payload, &decoded.payload) {
            (Payload::Command(Command::Unikernel(UnikernelCmd::Create(_, a))), Payload::Command(Command::Unikernel(UnikernelCmd::Create(_, b))))
            | (Payload::Command(Command::Unikernel(UnikernelCmd::ForceCreate(_, a))), Payload::Command(Command::Unikernel(UnikernelCmd::ForceCreate(_, b)))) => {
                prop_assert_eq!(&a.image, &b.image);
                prop_assert_eq!(a.blocks.len(), b.blocks.len());
                prop_assert_eq!(a.bridges.len(), b.bridges.len());
                let (mut x, mut y) = (a.clone(), b.clone());
                x.blocks.sort_by(|p, q| p.name.cmp(&q.name).then(p.host_device.cmp(&q.host_device)));
                y.blocks.sort_by(|p, q| p.name.cmp(&q.name).then(p.host_device.cmp(&q.host_device)));
                x.bridges.sort_by(|p, q| p.netif.cmp(&q.netif).then(p.bridge.cmp(&q.bridge)));
                y.bridges.sort_by(|p, q| p.netif.cmp(&q.netif).then(p.bridge.cmp(&q.bridge)));
                prop_assert_eq!(x, y);
            }
            (a, b) => prop_assert_eq!(a, b),
        }
    }

    #[test]
    fn a_framed_message_is_its_length_then_its_encoding(payload in payload()) {
        let wire = Wire { header: Header::new(Name::root()), payload };
        let framed = wire.encode_framed().unwrap();
        let len = u32::from_be_bytes(framed[..4].try_into().unwrap()) as usize;
        prop_assert_eq!(len, framed.len() - 4);
        prop_assert_eq!(&framed[4..], &wire.encode()[..]);
    }

    #[test]
    fn garbage_is_refused_not_a_panic(bytes in vec(any::<u8>(), 0..200)) {
        let _ = Wire::decode(&bytes);
        let _ = decode_cert_extension(&bytes);
    }
}
