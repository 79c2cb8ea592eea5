#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| dinoedge_fuzz::http(data));
