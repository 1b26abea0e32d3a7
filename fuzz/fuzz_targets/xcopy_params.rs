//! EXTENDED COPY parameter lists: any bytes parse to a value or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = engine::xcopy::parse_xcopy(data);
});
