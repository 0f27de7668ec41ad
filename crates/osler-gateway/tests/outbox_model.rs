//! The outbox against a simple model: random sequences of append, peek, ack and reopen (a
//! restart) on both lanes. After every step the outbox must hold exactly what the model holds,
//! in order, and sequence numbers must never be reused, even after the outbox was emptied.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use osler_gateway::outbox::Outbox;
use osler_wire::Lane;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Append(Lane, usize),
    /// Acknowledge the first `k` of what a peek of at most `max` returns.
    Ack(Lane, usize, usize),
    Reopen,
}

fn lane() -> impl Strategy<Value = Lane> {
    prop_oneof![Just(Lane::Alerts), Just(Lane::Readings)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (lane(), 1usize..20).prop_map(|(l, n)| Op::Append(l, n)),
        3 => (lane(), 0usize..15, 1usize..25).prop_map(|(l, k, m)| Op::Ack(l, k, m)),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default)]
struct Model {
    lanes: [VecDeque<(u64, String)>; 2],
    next: [u64; 2],
}

fn check(outbox: &Outbox, model: &Model) {
    for lane in [Lane::Alerts, Lane::Readings] {
        let want: Vec<(u64, String)> = model.lanes[lane.as_u8() as usize].iter().cloned().collect();
        let got: Vec<(u64, String)> = outbox
            .peek(lane, 10_000, usize::MAX)
            .unwrap()
            .into_iter()
            .map(|s| (s.seq, s.entry))
            .collect();
        assert_eq!(got, want, "lane {lane:?}");
        let depth = outbox.depth().lane(lane).load(Ordering::Relaxed);
        assert_eq!(depth as usize, want.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn outbox_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = std::env::temp_dir().join(format!("osler-outbox-model-{}-{:?}", std::process::id(), std::thread::current().id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut outbox = Some(Outbox::open(&dir, u64::MAX).unwrap());
        let mut model = Model { next: [1, 1], ..Model::default() };
        let mut counter = 0u64;
        for op in ops {
            let ob = outbox.as_ref().unwrap();
            match op {
                Op::Append(lane, n) => {
                    let entries: Vec<String> = (0..n).map(|_| { counter += 1; format!("{{\"n\":{counter}}}") }).collect();
                    let seqs = ob.append_blocking(lane, entries.clone(), 1).unwrap();
                    let i = lane.as_u8() as usize;
                    let expect: Vec<u64> = (model.next[i]..model.next[i] + n as u64).collect();
                    prop_assert_eq!(&seqs, &expect);
                    model.next[i] += n as u64;
                    model.lanes[i].extend(seqs.into_iter().zip(entries));
                }
                Op::Ack(lane, k, max) => {
                    let peeked = ob.peek(lane, max, usize::MAX).unwrap();
                    let i = lane.as_u8() as usize;
                    let want: Vec<u64> = model.lanes[i].iter().take(max).map(|(s, _)| *s).collect();
                    prop_assert_eq!(peeked.iter().map(|s| s.seq).collect::<Vec<_>>(), want);
                    let k = k.min(peeked.len());
                    if k > 0 {
                        let through = peeked[k - 1].seq;
                        prop_assert_eq!(ob.ack_blocking(lane, through).unwrap(), k);
                        model.lanes[i].drain(..k);
                    }
                }
                Op::Reopen => {
                    drop(outbox.take());
                    outbox = Some(Outbox::open(&dir, u64::MAX).unwrap());
                }
            }
            check(outbox.as_ref().unwrap(), &model);
        }
        drop(outbox);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_full_outbox_refuses_readings_but_takes_alerts() {
    let dir = std::env::temp_dir().join(format!("osler-outbox-full-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // A limit below the size of an empty database: readings are refused at once.
    let outbox = Outbox::open(&dir, 1).unwrap();
    let err = outbox
        .append_blocking(Lane::Readings, vec!["{}".into()], 1)
        .unwrap_err();
    assert!(err.to_string().contains("full"), "{err}");
    // With room for alerts only (limit + 10%), alerts still go in.
    let used = outbox.used_bytes().unwrap();
    drop(outbox);
    let outbox = Outbox::open(&dir, used * 100 / 105).unwrap();
    assert!(
        outbox
            .append_blocking(Lane::Readings, vec!["{}".into()], 1)
            .is_err()
    );
    assert_eq!(
        outbox
            .append_blocking(Lane::Alerts, vec!["{\"alert\":1}".into()], 1)
            .unwrap(),
        vec![1]
    );
    drop(outbox);
    // Acknowledged entries free their space: a large batch in, acknowledged; with a limit half
    // its size the outbox takes it again (the freed pages count as free, though SQLite never
    // shrinks the file), and refuses the next one, which would go past the limit.
    let _ = std::fs::remove_dir_all(&dir);
    let outbox = Outbox::open(&dir, u64::MAX).unwrap();
    let big: Vec<String> = (0..2000)
        .map(|i| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(200)))
        .collect();
    let base = outbox.used_bytes().unwrap();
    let seqs = outbox
        .append_blocking(Lane::Readings, big.clone(), 1)
        .unwrap();
    let full = outbox.used_bytes().unwrap();
    assert!(full > base + 400_000, "{base} -> {full}");
    outbox
        .ack_blocking(Lane::Readings, *seqs.last().unwrap())
        .unwrap();
    drop(outbox);
    let outbox = Outbox::open(&dir, base + (full - base) / 2).unwrap();
    assert!(outbox.used_bytes().unwrap() < base + (full - base) / 2);
    outbox
        .append_blocking(Lane::Readings, big.clone(), 1)
        .unwrap();
    outbox.append_blocking(Lane::Readings, big, 1).unwrap_err();
    drop(outbox);
    let _ = std::fs::remove_dir_all(&dir);
}
