#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| osler_fuzz::hub_bodies(data));
