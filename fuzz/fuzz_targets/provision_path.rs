//! Fuzzes the provisioning parsers: MAC addresses (`phone add`, request user names) and
//! the request path of a desk phone's fetch. No input may panic; a MAC that parses prints
//! in a form that parses to itself; a path that names a phone's file names it by a MAC
//! that parses; any text as a display name or model stays one value in every vendor's
//! file (no line or XML element of its own); and a `[provision] time_zone` that parses has
//! an offset and daylight-saving rule within their bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pbx_core::provision::{
    self, parse_path, Mac, PhoneFile, Profile, Transport, Vendor, Wanted,
};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(mac) = text.parse::<Mac>() {
        assert_eq!(mac.to_string().parse::<Mac>(), Ok(mac));
        assert_eq!(mac.colons().parse::<Mac>(), Ok(mac));
    }
    match parse_path(text) {
        Some(Wanted::Phone { mac, .. }) => {
            assert!(text.len() <= provision::mac::MAX_PATH);
            assert!(text.to_ascii_lowercase().contains(&mac.to_string()));
        }
        Some(Wanted::Common(_)) | None => {}
    }
    let _ = Vendor::of_model(text);
    if let Ok(zone) = provision::TimeZone::parse(text) {
        assert!((-24 * 60..=24 * 60).contains(&zone.offset_minutes));
        if let Some(dst) = zone.dst {
            assert!((1..=180).contains(&dst.save_minutes));
            for c in [dst.start, dst.end] {
                assert!((1..=12).contains(&c.month) && (1..=5).contains(&c.week));
                assert!(c.weekday <= 6 && c.hour <= 23);
            }
        }
    }
    let profile = Profile {
        mac: Mac([0x80, 0x5e, 0xc0, 0x12, 0x34, 0x56]),
        model: text.to_owned(),
        ext: "101".to_owned(),
        display_name: text.to_owned(),
        password: "pw".to_owned(),
        server: "192.0.2.1".to_owned(),
        port: 5060,
        transport: Transport::Udp,
        voicemail: "*97".to_owned(),
        utc_offset_minutes: 0,
        daylight: provision::files::Daylight::LeftToPhone,
        blf: Vec::new(),
    };
    // The same files with a plain name: the fuzzed one may add characters, never lines,
    // keys or elements.
    let plain = Profile {
        model: "x".to_owned(),
        display_name: "x".to_owned(),
        ..profile.clone()
    };
    for (vendor, file) in [
        (Vendor::Yealink, PhoneFile::MacCfg),
        (Vendor::Fanvil, PhoneFile::MacCfg),
        (Vendor::Grandstream, PhoneFile::Grandstream),
        (Vendor::Snom, PhoneFile::Snom),
        (Vendor::Poly, PhoneFile::PolyPhone),
    ] {
        let (Some(got), Some(base)) = (
            provision::phone_file(vendor, file, &profile),
            provision::phone_file(vendor, file, &plain),
        ) else {
            panic!("{vendor} has no {file:?}");
        };
        assert_eq!(
            got.body.lines().count(),
            base.body.lines().count(),
            "{vendor}: a value made a line of its own"
        );
        if got.content_type.contains("xml") {
            assert_eq!(
                got.body.matches('<').count(),
                base.body.matches('<').count(),
                "{vendor}: a value made markup"
            );
        }
    }
});
