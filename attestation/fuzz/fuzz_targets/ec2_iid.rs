//! PKCS#7 (BER) and the JSON signature form: any bytes through the IID verifier with AWS's DSA
//! certificate configured and legacy crypto allowed, so the DSA-SHA1 path is reached.
#![no_main]

use base64::Engine;
use ephemera_attestation::ec2::IidVerifier;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn verifier() -> &'static IidVerifier {
    static V: OnceLock<IidVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let pem = include_str!("../../tests/fixtures/aws_dsa_certificate.pem");
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        let mut v = IidVerifier::new(vec![("*".into(), der.into())]).unwrap();
        v.allow_legacy_crypto = true;
        v
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = verifier().verify(data, 1_700_000_000);
});
