//! Batches sealed and opened: what a gateway seals, the hub opens with the gateway's public key
//! as the same header and entries; one flipped byte anywhere is refused.

use osler_core::{Id, Metric, Reading, Status, Timestamp, Value};
use osler_wire::{BatchHeader, Entry, GatewayKey, Lane, seal};
use proptest::prelude::*;

fn entry() -> impl Strategy<Value = Entry> {
    (
        "[a-z0-9]{1,10}",
        proptest::option::of("[a-z0-9-]{1,10}"),
        30.0f64..250.0,
        0i64..10_000_000_000,
        -720i16..=840,
    )
        .prop_map(|(p, d, v, t, o)| {
            Entry::from_reading(&Reading {
                patient: Id::parse(&p).unwrap(),
                device: d.map(|d| Id::parse(&d).unwrap()),
                metric: Metric::HeartRate,
                value: Value::Scalar(v),
                taken: Timestamp {
                    utc_ms: 1_700_000_000_000 + t,
                    offset_min: o,
                },
                received_ms: 1_700_000_000_000 + t + 500,
                status: Status::Final,
                identifier: None,
            })
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn a_sealed_batch_opens_as_itself(
        entries in proptest::collection::vec(entry(), 1..60),
        first_seq in 1u64..1_000_000,
        flip in any::<proptest::sample::Index>(),
    ) {
        let key = GatewayKey::from_hex(&"5a".repeat(32)).unwrap();
        let public = osler_wire::parse_public_key(&key.public_hex()).unwrap();
        let header = BatchHeader {
            gateway: "gw-7".into(),
            lane: Lane::Readings,
            first_seq,
            count: entries.len() as u32,
            sent_ms: 1_750_000_000_000,
            state: None,
        };
        let json: Vec<String> = entries.iter().map(Entry::to_json).collect();
        let refs: Vec<&str> = json.iter().map(String::as_str).collect();
        let bytes = seal(&header, &refs, &key);
        let env = osler_wire::Envelope::parse(&bytes).unwrap();
        env.verify(&public).unwrap();
        prop_assert_eq!(&env.header, &header);
        prop_assert_eq!(env.entries().unwrap(), entries);
        // Damage anywhere is caught: by the parser or by the signature.
        let mut bad = bytes.clone();
        let i = flip.index(bad.len());
        bad[i] ^= 0x01;
        let refused = match osler_wire::Envelope::parse(&bad) {
            Err(_) => true,
            Ok(env) => env.verify(&public).is_err(),
        };
        prop_assert!(refused, "a flipped byte at {} of {} went through", i, bad.len());
    }
}
