//! PERSISTENT RESERVE OUT parameter lists (every service action) and the APTPL
//! state file: any bytes give a value or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sa, list)) = data.split_first() else { return };
    let _ = engine::pr::out::parse_prout_params(sa & 0x1f, list);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = engine::pr::aptpl::decode(text);
    }
});
