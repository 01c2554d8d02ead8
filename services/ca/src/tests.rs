use super::*;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use std::sync::Arc;

fn now() -> DateTime<Utc> {
    Utc::now()
}

/// Verifies a chain as a TLS server verifies a client: what Envoy and the
/// xDS port do with these certificates.
fn verify_as_client(bundle_pem: &str, chain_pem: &str, at: DateTime<Utc>) -> Result<(), String> {
    let mut roots = rustls::RootCertStore::empty();
    for der in certificates_der(bundle_pem) {
        roots
            .add(CertificateDer::from(der))
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| e.to_string())?;
    let chain: Vec<CertificateDer<'static>> = certificates_der(chain_pem)
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let t = UnixTime::since_unix_epoch(std::time::Duration::from_secs(at.timestamp() as u64));
    verifier
        .verify_client_cert(&chain[0], &chain[1..], t)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn spiffe_ids_parse_and_print() {
    let cases: &[(&str, bool)] = &[
        ("spiffe://example.org/ns/shop/sa/web", true),
        ("spiffe://example.org/ns/shop/sa/web/extra", false),
        ("spiffe://example.org/ns//sa/web", false),
        ("spiffe://Example.org/ns/a/sa/b", false),
        ("https://example.org/ns/a/sa/b", false),
        ("spiffe://example.org/sa/web/ns/shop", false),
        ("spiffe://ex ample.org/ns/a/sa/b", false),
    ];
    for (s, ok) in cases {
        let parsed = SpiffeId::parse(s);
        assert_eq!(parsed.is_ok(), *ok, "{s}");
        if let Ok(id) = parsed {
            assert_eq!(id.to_string(), *s);
        }
    }
}

#[test]
fn master_key_formats_and_redaction() {
    let k = MasterKey::generate().unwrap();
    let hex = k.to_hex();
    let b64 = base64::engine::general_purpose::STANDARD.encode(k.0);
    for form in [
        hex.as_bytes().to_vec(),
        format!("{b64}\n").into_bytes(),
        k.0.to_vec(),
    ] {
        assert_eq!(MasterKey::parse(&form).unwrap().0, k.0);
    }
    assert!(MasterKey::parse(b"too short").is_err());
    assert!(MasterKey::parse(&[b'a'; 63]).is_err());
    assert!(!format!("{k:?}").contains(&hex[..8]));
}

#[test]
fn seal_round_trips_and_rejects_wrong_key_label_or_tampering() {
    let k = MasterKey::generate().unwrap();
    let sealed = seal(&k, "ca-key", b"secret key").unwrap();
    assert!(!sealed.windows(10).any(|w| w == b"secret key"));
    assert_eq!(open(&k, "ca-key", &sealed).unwrap(), b"secret key");
    // Two seals of the same text differ (random nonce).
    assert_ne!(seal(&k, "ca-key", b"secret key").unwrap(), sealed);
    let other = MasterKey::generate().unwrap();
    assert!(matches!(
        open(&other, "ca-key", &sealed),
        Err(Error::Unseal)
    ));
    assert!(matches!(
        open(&k, "workload-key", &sealed),
        Err(Error::Unseal)
    ));
    let mut bad = sealed.clone();
    *bad.last_mut().unwrap() ^= 1;
    assert!(matches!(open(&k, "ca-key", &bad), Err(Error::Unseal)));
    assert!(matches!(
        open(&k, "ca-key", &sealed[..5]),
        Err(Error::Unseal)
    ));
}

#[test]
fn root_issues_workload_certs_that_verify_and_carry_the_spiffe_id() {
    let t = now();
    let ca = Authority::generate("example.org", t).unwrap();
    let id = SpiffeId::parse("spiffe://example.org/ns/shop/sa/web").unwrap();
    let issued = ca.issue(&id, &[], t, DEFAULT_WORKLOAD_LIFETIME).unwrap();
    verify_as_client(ca.trust_bundle_pem(), &issued.cert_chain_pem, t).unwrap();
    let der = first_certificate_der(&issued.cert_chain_pem).unwrap();
    assert_eq!(spiffe_id_of(&der), Some(id.clone()));
    let (nb, na) = validity(&issued.cert_chain_pem).unwrap();
    assert!(
        (86_398..=86_400).contains(&(na - t).num_seconds()),
        "24 h lifetime"
    );
    assert!(nb < t);
    // Expired after its lifetime.
    assert!(verify_as_client(
        ca.trust_bundle_pem(),
        &issued.cert_chain_pem,
        t + chrono::Duration::hours(25)
    )
    .is_err());
    // Another CA's bundle does not trust it.
    let other = Authority::generate("example.org", t).unwrap();
    assert!(verify_as_client(other.trust_bundle_pem(), &issued.cert_chain_pem, t).is_err());
    assert!(!format!("{issued:?}").contains("PRIVATE KEY"));
}

#[test]
fn reloaded_ca_keeps_issuing_certs_the_old_bundle_trusts() {
    let t = now();
    let ca = Authority::generate("example.org", t).unwrap();
    let again = Authority::from_pem("example.org", ca.cert_pem(), &ca.key_pem(), "", "").unwrap();
    let id = SpiffeId::parse("spiffe://example.org/ns/a/sa/b").unwrap();
    let issued = again.issue(&id, &[], t, DEFAULT_WORKLOAD_LIFETIME).unwrap();
    verify_as_client(ca.trust_bundle_pem(), &issued.cert_chain_pem, t).unwrap();
    // A key of another CA is refused.
    let other = Authority::generate("example.org", t).unwrap();
    assert!(matches!(
        Authority::from_pem("example.org", ca.cert_pem(), &other.key_pem(), "", ""),
        Err(Error::KeyMismatch)
    ));
}

#[test]
fn operator_intermediate_issues_chains_to_the_operator_root() {
    let t = now();
    let root = Authority::generate("corp.example", t).unwrap();
    // The operator's intermediate, signed by their root.
    let inter_id = SpiffeId::new("corp.example", "meridian", "ca").unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
        .distinguished_name
        .push(DnType::CommonName, "intermediate");
    params.subject_alt_names = vec![SanType::URI(
        inter_id.to_string().as_str().try_into().unwrap(),
    )];
    params.not_before = to_offset(t - chrono::Duration::hours(1));
    params.not_after = to_offset(t + chrono::Duration::days(30));
    let inter_key = KeyPair::generate().unwrap();
    let issuer = Issuer::from_ca_cert_pem(root.cert_pem(), &root.key).unwrap();
    let inter_cert = params.signed_by(&inter_key, &issuer).unwrap();
    let inter = Authority::from_pem(
        "corp.example",
        &inter_cert.pem(),
        &inter_key.serialize_pem(),
        "",
        root.trust_bundle_pem(),
    )
    .unwrap();
    let id = SpiffeId::parse("spiffe://corp.example/ns/shop/sa/api").unwrap();
    let issued = inter.issue(&id, &[], t, DEFAULT_WORKLOAD_LIFETIME).unwrap();
    assert_eq!(
        certificates_der(&issued.cert_chain_pem).len(),
        2,
        "leaf + intermediate"
    );
    verify_as_client(root.trust_bundle_pem(), &issued.cert_chain_pem, t).unwrap();
    assert_eq!(inter.trust_bundle_pem(), root.trust_bundle_pem());
}

#[test]
fn renewal_is_due_at_half_life() {
    let nb = DateTime::from_timestamp(1_000_000, 0).unwrap();
    let na = nb + chrono::Duration::hours(24);
    let cases = [(0, false), (11, false), (12, true), (23, true), (30, true)];
    for (h, due) in cases {
        assert_eq!(
            renewal_due(nb, na, nb + chrono::Duration::hours(h)),
            due,
            "{h}h"
        );
    }
}

#[test]
fn peer_identity_needs_exactly_one_spiffe_id() {
    let t = now();
    let ca = Authority::generate("example.org", t).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![
        SanType::URI("spiffe://example.org/ns/a/sa/x".try_into().unwrap()),
        SanType::URI("spiffe://example.org/ns/b/sa/y".try_into().unwrap()),
    ];
    let issuer = Issuer::from_ca_cert_pem(ca.cert_pem(), &ca.key).unwrap();
    let two = params.signed_by(&key, &issuer).unwrap();
    assert_eq!(uri_sans(two.der()).len(), 2);
    assert_eq!(spiffe_id_of(two.der()), None);
    assert_eq!(spiffe_id_of(b"not a certificate"), None);
}

#[test]
fn bundle_mac_authenticates_every_public_part_under_the_master_key() {
    let key = MasterKey::generate().unwrap();
    let good = PublicParts {
        trust_domain: "td",
        cert_pem: "CERT",
        chain_pem: "",
        trust_bundle_pem: "ROOT",
    };
    let mac = bundle_mac(&key, &good);
    verify_bundle_mac(&key, &good, &mac).unwrap();
    let other_key = MasterKey::generate().unwrap();
    assert!(matches!(
        verify_bundle_mac(&other_key, &good, &mac),
        Err(Error::BundleTampered)
    ));
    let changed = [
        PublicParts {
            trust_bundle_pem: "ROOT\nEVIL ROOT",
            ..good
        },
        PublicParts {
            chain_pem: "EXTRA",
            ..good
        },
        PublicParts {
            cert_pem: "OTHER",
            ..good
        },
        PublicParts {
            trust_domain: "evil",
            ..good
        },
        // The same bytes split differently between the parts.
        PublicParts {
            cert_pem: "CERTROOT",
            trust_bundle_pem: "",
            ..good
        },
    ];
    for parts in changed {
        assert!(
            matches!(
                verify_bundle_mac(&key, &parts, &mac),
                Err(Error::BundleTampered)
            ),
            "{parts:?}"
        );
    }
    assert!(verify_bundle_mac(&key, &good, &mac[..16]).is_err());
}
