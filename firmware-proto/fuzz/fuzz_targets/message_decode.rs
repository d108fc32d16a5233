//! Decodes arbitrary bytes as a message; whatever decodes must re-encode to bytes that
//! decode to the same message, and that encoding must be a fixed point. Floats are
//! compared through `Debug`, which tells every f64 apart (NaN equals NaN, -0.0 is not 0.0).

#![no_main]

use firmware_proto::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = Message::decode(data) else {
        return;
    };
    let bytes = message.to_vec();
    let again = Message::decode(&bytes).expect("a re-encoded message decodes");
    assert_eq!(format!("{message:?}"), format!("{again:?}"));
    if !format!("{message:?}").contains("NaN") {
        assert_eq!(message, again);
    }
    assert_eq!(again.to_vec(), bytes, "the encoding is not a fixed point");

    let mut buf = vec![0u8; bytes.len()];
    assert_eq!(message.encode(&mut buf).ok(), Some(bytes.len()));
    assert_eq!(buf, bytes);
    if !bytes.is_empty() {
        assert!(message.encode(&mut buf[..bytes.len() - 1]).is_err());
    }
});
