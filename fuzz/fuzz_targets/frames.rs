//! `decode_client_frame` (what the server runs on every WebSocket text frame) on arbitrary
//! UTF-8. It must never panic; a refusal carries one of the three decoding codes; a frame that
//! decodes must encode to text that decodes to the same frame, and its `ref` must be the one
//! `peek_ref` reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livebase_protocol::{decode_client_frame, peek_ref};

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    let _ = peek_ref(text);
    match decode_client_frame(text) {
        Ok(frame) => {
            let encoded = frame.encode();
            // serde_json is built with `float_roundtrip`, so a payload float survives text ->
            // f64 -> text exactly: every decoded frame must round-trip to an equal frame.
            let again = decode_client_frame(&encoded).expect("an encoded frame decodes");
            assert_eq!(&again, &frame, "{text:?} -> {encoded:?}");
            assert_eq!(&peek_ref(&encoded), again.reference(), "{encoded:?}");
        }
        Err(e) => {
            assert!(matches!(e.code, "malformed_json" | "bad_request" | "unknown_type"), "{e:?}");
            assert!(!e.message.is_empty());
        }
    }
});
