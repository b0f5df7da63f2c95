//! Compact JWS with an x5c chain: any UTF-8 through the proof-of-possession verifier (header and
//! payload JSON, base64url, certificate parsing, chain building).
#![no_main]

use base64::Engine;
use ephemera_attestation::x509pop::PopVerifier;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn verifier() -> &'static PopVerifier {
    static V: OnceLock<PopVerifier> = OnceLock::new();
    V.get_or_init(|| {
        // Any real CA certificate serves as the anchor: the target is the parsing.
        let pem = include_str!("../aws_nitro_root_g1.pem");
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        PopVerifier::new(vec![der.into()], "https://broker.example.com").unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = verifier().verify(text, 1_750_000_000);
    }
});
