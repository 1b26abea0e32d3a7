//! The daemon's TOML configuration: any text gives a checked config or an
//! error with a position, and a config that checks saves to text that checks
//! again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(c) = oxtarget::config::parse("fuzz.toml", text) {
        let saved = toml::to_string(&c.raw).expect("a checked config serializes");
        if let Err(e) = oxtarget::config::parse("saved.toml", &saved) {
            panic!("saved config does not check: {e}\n{saved}");
        }
    }
});
