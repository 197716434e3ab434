//! Fuzzes the AMF0 decoder; whatever decodes must re-encode to bytes that
//! decode again.
#![no_main]

use baton_proto::amf0;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut cursor = data;
    let _ = amf0::decode(&mut cursor);
    if let Ok(values) = amf0::decode_all(data) {
        let encoded = amf0::encode_all(&values);
        let again = amf0::decode_all(&encoded).expect("re-encoded AMF0 must decode");
        assert_eq!(again.len(), values.len());
    }
});
