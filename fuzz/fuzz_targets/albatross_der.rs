//! Albatross messages and certificate extensions, as DER off the wire:
//! decoding never panics, and what decodes encodes back to a message that
//! decodes to the same thing.
#![no_main]

use deployer_albatross::message::{cert_extension, decode_cert_extension, Wire};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(wire) = Wire::decode(bytes) {
        let again = wire.encode();
        let back = Wire::decode(&again).unwrap_or_else(|e| panic!("{wire:?} encodes to what does not decode: {e}"));
        assert_eq!(back, wire, "a decoded message changed through encoding");
    }
    if let Ok(command) = decode_cert_extension(bytes) {
        let again = cert_extension(&command);
        let back = decode_cert_extension(&again)
            .unwrap_or_else(|e| panic!("{command:?} encodes to an extension that does not decode: {e}"));
        assert_eq!(back, command, "a decoded command changed through encoding");
    }
});
