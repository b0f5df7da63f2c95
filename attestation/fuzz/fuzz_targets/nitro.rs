//! COSE_Sign1 / CBOR: any bytes, raw and as base64 text, through the whole Nitro verifier with
//! AWS's real root pinned and the clock at the 2022-10-13 corpus document's time, so mutations
//! of a real document reach the chain and signature checks.
#![no_main]

use base64::Engine;
use ephemera_attestation::nitro::{self, NitroVerifier};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const NOW: i64 = 1_665_651_482;

fn verifier() -> &'static NitroVerifier {
    static V: OnceLock<NitroVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let pem = include_str!("../aws_nitro_root_g1.pem");
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let mut v = NitroVerifier::with_pinned_sha256(der, nitro::AWS_NITRO_ROOT_G1_SHA256).unwrap();
        v.require_nonce = false;
        v
    })
}

fuzz_target!(|data: &[u8]| {
    let v = verifier();
    if let Ok(e) = v.verify(data, NOW) {
        // whatever verifies must also pass the policy helpers without panicking
        let _ = nitro::check_pcrs(&e, &std::collections::BTreeMap::from([(0u8, vec![1u8; 48])]), false);
        let _ = nitro::check_user_data(&e, b"x");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(doc) = nitro::decode_document_text(text, 16 * 1024) {
            let _ = v.verify(&doc, NOW);
        }
    }
});
