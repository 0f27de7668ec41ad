//! Times written and read back: every instant and offset a reading can carry comes back as
//! itself from the text Osler writes for it.

use osler_core::Timestamp;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn a_written_time_reads_back_the_same(
        // 1900 to 2200, to the millisecond; offsets -14:00 to +14:00 in minutes.
        utc_ms in -2_208_988_800_000i64..7_258_118_400_000,
        offset_min in -840i16..=840,
    ) {
        let t = Timestamp { utc_ms, offset_min };
        let text = t.to_string();
        prop_assert_eq!(Timestamp::parse(&text), Ok(t), "{}", text);
    }
}
