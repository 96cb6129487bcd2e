//! Property tests of signature verification: any body signed with any configured secret
//! verifies; any other signature, and any header at all, is refused without a panic.

use proptest::prelude::*;

use super::*;

fn verifier(secrets: &[String]) -> Verifier {
    Verifier::new(
        secrets.iter().map(|s| Secret::new(s.clone())).collect(),
        HashMap::new(),
    )
}

proptest! {
    #[test]
    fn a_body_signed_with_any_configured_secret_verifies(
        secrets in prop::collection::vec(".{1,40}", 1..4),
        which in any::<prop::sample::Index>(),
        body in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let index = which.index(secrets.len());
        let header = sign(&Secret::new(secrets[index].clone()), &body);
        let verified = verifier(&secrets).verify(None, Some(header.as_bytes()), &body);
        prop_assert!(verified.is_ok());
    }

    #[test]
    fn a_changed_body_or_signature_byte_is_refused(
        secret in ".{1,40}",
        body in prop::collection::vec(any::<u8>(), 1..512),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let verifier = verifier(std::slice::from_ref(&secret));
        let header = sign(&Secret::new(secret), &body);
        let mut tampered = body.clone();
        let at = flip.index(tampered.len());
        tampered[at] ^= 1 << bit;
        prop_assert_eq!(
            verifier.verify(None, Some(header.as_bytes()), &tampered),
            Err(SignatureError::Mismatch)
        );
        let mut mac = STANDARD.decode(&header).expect("our own base64");
        let at = flip.index(mac.len());
        mac[at] ^= 1 << bit;
        let forged = STANDARD.encode(&mac);
        prop_assert_eq!(
            verifier.verify(None, Some(forged.as_bytes()), &body),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn any_header_bytes_get_an_answer_and_never_a_panic(
        header in prop::collection::vec(any::<u8>(), 0..80),
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let result = verifier(&["hush".to_string()]).verify(Some("Shop.example"), Some(&header), &body);
        prop_assert!(matches!(
            result,
            Err(SignatureError::Malformed) | Err(SignatureError::Mismatch)
        ));
    }
}
