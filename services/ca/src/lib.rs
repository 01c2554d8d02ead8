//! Meridian's certificate authority, without I/O.
//!
//! * [`SpiffeId`]: a workload identity, `spiffe://<trust domain>/ns/<namespace>/sa/<account>`.
//! * [`MasterKey`], [`seal`], [`open`]: the key that encrypts the CA key (and
//!   workload keys) at rest, AES-256-GCM.
//! * [`Authority`]: a CA (generated root, or an operator's intermediate) that
//!   issues short-lived workload certificates ([`Issued`]).
//! * [`renewal_due`]: the half-life renewal rule; [`spiffe_id_of`]: reads
//!   the identity from a peer certificate's URI SAN.
//!
//! Crypto comes from aws-lc-rs, which rustls already builds, so the CA adds
//! no second crypto library.

use std::fmt;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use chrono::{DateTime, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// Default lifetime of a workload certificate.
pub const DEFAULT_WORKLOAD_LIFETIME: chrono::Duration = chrono::Duration::hours(24);
/// Lifetime of a generated root CA.
const ROOT_LIFETIME: chrono::Duration = chrono::Duration::days(3650);
/// Issued certificates start a little in the past so a peer whose clock is
/// slightly behind does not reject a certificate issued a moment ago.
const BACKDATE: chrono::Duration = chrono::Duration::minutes(5);

/// Errors of the CA layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A SPIFFE ID did not have the `spiffe://<td>/ns/<ns>/sa/<sa>` shape.
    #[error("invalid SPIFFE ID {0:?}: expected spiffe://<trust domain>/ns/<namespace>/sa/<service account>")]
    InvalidSpiffeId(String),
    /// A trust domain was empty or not a lowercase DNS-like name.
    #[error("invalid trust domain {0:?}: use lowercase letters, digits, '-', '.' and '_'")]
    InvalidTrustDomain(String),
    /// The master key was not 32 bytes (raw, 64 hex digits or base64).
    #[error("the CA master key must be 32 bytes: raw, 64 hex digits or base64")]
    InvalidMasterKey,
    /// Sealed data did not decrypt: wrong master key, or the data was altered.
    #[error("sealed data does not open with this master key (wrong key, or altered data)")]
    Unseal,
    /// The stored CA certificates or trust bundle do not carry a valid MAC
    /// under this master key: they were changed outside Meridian.
    #[error(
        "the stored CA certificate, chain or trust bundle was changed outside Meridian (its MAC \
         does not verify under this master key); refusing to trust it. Restore the ca row from a \
         backup, or provide the CA again (--ca-cert-file, --ca-private-key-file, --ca-bundle-file)"
    )]
    BundleTampered,
    /// Certificate generation or parsing failed.
    #[error("certificate error: {0}")]
    Certificate(#[from] rcgen::Error),
    /// A PEM input held no certificate.
    #[error("{0}: no certificate found in PEM")]
    NoCertificate(&'static str),
    /// The operator's CA key does not belong to the operator's CA certificate.
    #[error("the CA key does not match the CA certificate")]
    KeyMismatch,
    /// The system random generator failed.
    #[error("random number generator failed")]
    Random,
}

/// A workload identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// Checks a trust domain name.
pub fn validate_trust_domain(td: &str) -> Result<(), Error> {
    if valid_segment(td) && !td.bytes().any(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(Error::InvalidTrustDomain(td.to_owned()))
    }
}

impl SpiffeId {
    /// Builds an identity from its parts, checking each.
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<Self, Error> {
        validate_trust_domain(trust_domain)?;
        if !valid_segment(namespace) || !valid_segment(service_account) {
            return Err(Error::InvalidSpiffeId(format!(
                "spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"
            )));
        }
        Ok(SpiffeId {
            trust_domain: trust_domain.to_owned(),
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
        })
    }

    /// Parses `spiffe://<td>/ns/<ns>/sa/<sa>`; nothing else is a workload identity here.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = || Error::InvalidSpiffeId(s.to_owned());
        let rest = s.strip_prefix("spiffe://").ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "ns", ns, "sa", sa] => Self::new(td, ns, sa).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

/// The key that seals CA and workload keys at rest. It never prints.
#[derive(Clone)]
pub struct MasterKey([u8; 32]);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// Reads a key given as 32 raw bytes, 64 hex digits, or base64 of 32
    /// bytes (surrounding whitespace ignored), so `openssl rand 32`,
    /// `openssl rand -hex 32` and `openssl rand -base64 32` all work.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() == 32 {
            let mut k = [0u8; 32];
            k.copy_from_slice(bytes);
            return Ok(MasterKey(k));
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| Error::InvalidMasterKey)?
            .trim();
        let decoded = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| Error::InvalidMasterKey)?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| Error::InvalidMasterKey)?
        };
        let k: [u8; 32] = decoded.try_into().map_err(|_| Error::InvalidMasterKey)?;
        Ok(MasterKey(k))
    }

    /// A fresh random key (tests, and `meridian ca keygen`).
    pub fn generate() -> Result<Self, Error> {
        let mut k = [0u8; 32];
        SystemRandom::new()
            .fill(&mut k)
            .map_err(|_| Error::Random)?;
        Ok(MasterKey(k))
    }

    /// The key as 64 hex digits, to write to a key file.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn aead(&self) -> LessSafeKey {
        LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &self.0).expect("32 bytes is an AES-256 key"),
        )
    }
}

/// Encrypts `plaintext` with AES-256-GCM under a random nonce; `label`
/// (authenticated, not stored) binds the ciphertext to its purpose, so a
/// sealed workload key cannot be passed off as the CA key.
/// Output: nonce (12 bytes) || ciphertext || tag.
pub fn seal(key: &MasterKey, label: &str, plaintext: &[u8]) -> Result<Vec<u8>, Error> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| Error::Random)?;
    let mut buf = plaintext.to_vec();
    key.aead()
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(label.as_bytes()),
            &mut buf,
        )
        .map_err(|_| Error::Random)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(out)
}

/// Decrypts what [`seal`] produced with the same key and label.
pub fn open(key: &MasterKey, label: &str, sealed: &[u8]) -> Result<Vec<u8>, Error> {
    if sealed.len() < NONCE_LEN {
        return Err(Error::Unseal);
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| Error::Unseal)?;
    let mut buf = body.to_vec();
    let plain = key
        .aead()
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(label.as_bytes()),
            &mut buf,
        )
        .map_err(|_| Error::Unseal)?;
    Ok(plain.to_vec())
}

/// Label of the key, derived from the master key, that authenticates the
/// CA's public parts (never used for anything else).
const BUNDLE_MAC_LABEL: &[u8] = b"meridian-ca-bundle-mac-key/v1";

/// The CA's public parts, as stored beside its sealed key.
#[derive(Clone, Copy, Debug)]
pub struct PublicParts<'a> {
    pub trust_domain: &'a str,
    pub cert_pem: &'a str,
    pub chain_pem: &'a str,
    pub trust_bundle_pem: &'a str,
}

impl PublicParts<'_> {
    /// Each part length-prefixed, so no two different sets of parts
    /// encode alike.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for part in [
            self.trust_domain,
            self.cert_pem,
            self.chain_pem,
            self.trust_bundle_pem,
        ] {
            out.extend_from_slice(&(part.len() as u64).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
        out
    }
}

fn bundle_key(key: &MasterKey) -> aws_lc_rs::hmac::Key {
    // A key of its own, derived from the master key: HMAC(master, label).
    let master = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &key.0);
    let derived = aws_lc_rs::hmac::sign(&master, BUNDLE_MAC_LABEL);
    aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, derived.as_ref())
}

/// The MAC (HMAC-SHA256) of the CA's public parts under a key derived from
/// the master key: stored with them, so that whoever can write the table
/// but lacks the master key cannot add a trusted root.
pub fn bundle_mac(key: &MasterKey, parts: &PublicParts<'_>) -> Vec<u8> {
    aws_lc_rs::hmac::sign(&bundle_key(key), &parts.encode())
        .as_ref()
        .to_vec()
}

/// Checks a [`bundle_mac`] (in constant time).
pub fn verify_bundle_mac(
    key: &MasterKey,
    parts: &PublicParts<'_>,
    mac: &[u8],
) -> Result<(), Error> {
    aws_lc_rs::hmac::verify(&bundle_key(key), &parts.encode(), mac)
        .map_err(|_| Error::BundleTampered)
}

/// A certificate authority able to issue workload certificates.
pub struct Authority {
    trust_domain: String,
    cert_pem: String,
    key: KeyPair,
    /// Certificates between this CA and the root (an intermediate's parents), PEM.
    chain_pem: String,
    /// What peers trust: the root(s), PEM.
    trust_bundle_pem: String,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn to_offset(t: DateTime<Utc>) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(t.timestamp())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn random_serial() -> Result<SerialNumber, Error> {
    let mut b = [0u8; 16];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| Error::Random)?;
    // Positive and non-zero, as RFC 5280 wants.
    b[0] = (b[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&b))
}

/// The PEM blocks of `pem` that are certificates, each re-encoded.
fn certificates_in(pem_text: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = pem_text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(end_rel) = rest[start..].find("-----END CERTIFICATE-----") else {
            break;
        };
        let end = start + end_rel + "-----END CERTIFICATE-----".len();
        let body: String = rest[start + 27..start + end_rel]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(body) {
            out.push(der);
        }
        rest = &rest[end..];
    }
    out
}

impl Authority {
    /// Generates a self-signed root for `trust_domain`.
    pub fn generate(trust_domain: &str, now: DateTime<Utc>) -> Result<Self, Error> {
        validate_trust_domain(trust_domain)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Meridian");
        dn.push(DnType::CommonName, format!("Meridian CA {trust_domain}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial()?);
        params.not_before = to_offset(now - BACKDATE);
        params.not_after = to_offset(now + ROOT_LIFETIME);
        // The trust domain as a URI SAN, as SPIFFE recommends for CAs.
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{trust_domain}").as_str().try_into()?,
        )];
        let cert = params.self_signed(&key)?;
        let pem = cert.pem();
        Ok(Authority {
            trust_domain: trust_domain.to_owned(),
            cert_pem: pem.clone(),
            key,
            chain_pem: String::new(),
            trust_bundle_pem: pem,
        })
    }

    /// Loads a CA from PEM: its certificate, its key, the certificates up to
    /// the root (empty for a root), and the trust bundle (the CA itself when
    /// empty). An operator's intermediate CA comes in this way.
    pub fn from_pem(
        trust_domain: &str,
        cert_pem: &str,
        key_pem: &str,
        chain_pem: &str,
        trust_bundle_pem: &str,
    ) -> Result<Self, Error> {
        validate_trust_domain(trust_domain)?;
        let key = KeyPair::from_pem(key_pem)?;
        let certs = certificates_in(cert_pem);
        let first = certs
            .first()
            .ok_or(Error::NoCertificate("CA certificate"))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(first)
            .map_err(|_| Error::Certificate(rcgen::Error::CouldNotParseCertificate))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(Error::KeyMismatch);
        }
        let bundle = if trust_bundle_pem.trim().is_empty() {
            cert_pem.to_owned()
        } else {
            if certificates_in(trust_bundle_pem).is_empty() {
                return Err(Error::NoCertificate("trust bundle"));
            }
            trust_bundle_pem.to_owned()
        };
        Ok(Authority {
            trust_domain: trust_domain.to_owned(),
            cert_pem: cert_pem.to_owned(),
            key,
            chain_pem: chain_pem.to_owned(),
            trust_bundle_pem: bundle,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA's own certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's key, PEM. Only to be sealed; never log it.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Certificates between the CA and the root, PEM (empty for a root).
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// What peers trust, PEM.
    pub fn trust_bundle_pem(&self) -> &str {
        &self.trust_bundle_pem
    }

    /// Issues a workload certificate for `id` (URI SAN = the SPIFFE ID;
    /// usable as client and server certificate), plus extra DNS/IP SANs
    /// (the xDS server's own certificate needs them).
    pub fn issue(
        &self,
        id: &SpiffeId,
        extra_sans: &[String],
        now: DateTime<Utc>,
        lifetime: chrono::Duration,
    ) -> Result<Issued, Error> {
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Meridian");
        dn.push(DnType::CommonName, id.service_account.clone());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let mut sans = vec![SanType::URI(id.to_string().as_str().try_into()?)];
        for s in extra_sans {
            match s.parse::<std::net::IpAddr>() {
                Ok(ip) => sans.push(SanType::IpAddress(ip)),
                Err(_) => sans.push(SanType::DnsName(s.as_str().try_into()?)),
            }
        }
        params.subject_alt_names = sans;
        params.serial_number = Some(random_serial()?);
        let not_before = now - BACKDATE;
        let not_after = now + lifetime;
        params.not_before = to_offset(not_before);
        params.not_after = to_offset(not_after);
        let cert = params.signed_by(&key, &issuer)?;
        let mut chain = cert.pem();
        // Peers trust the root: send every certificate up to it.
        if !self.chain_pem.is_empty() || self.cert_pem != self.trust_bundle_pem {
            chain.push_str(&self.cert_pem);
            chain.push_str(&self.chain_pem);
        }
        Ok(Issued {
            spiffe_id: id.clone(),
            cert_chain_pem: chain,
            key_pem: key.serialize_pem(),
            not_before: now,
            not_after,
        })
    }
}

/// A workload certificate and its key.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    pub spiffe_id: SpiffeId,
    /// The leaf, then any intermediates; PEM.
    pub cert_chain_pem: String,
    /// PKCS#8 PEM. Secret: never log it.
    pub key_pem: String,
    /// When it was issued (the certificate itself is backdated a little).
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// Whether a certificate valid from `not_before` to `not_after` should be
/// renewed at `now`: at half its life, so a renewal that fails has the other
/// half to succeed in.
pub fn renewal_due(
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
    now: DateTime<Utc>,
) -> bool {
    let half = (not_after - not_before) / 2;
    now >= not_before + half
}

/// The URI SANs of a DER certificate (empty when it does not parse).
pub fn uri_sans(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect()
}

/// The workload identity of a peer certificate: its one SPIFFE URI SAN.
/// A certificate with several SPIFFE IDs names none (SPIFFE X.509-SVIDs
/// carry exactly one), so it cannot pick the identity it likes.
pub fn spiffe_id_of(der: &[u8]) -> Option<SpiffeId> {
    let ids: Vec<SpiffeId> = uri_sans(der)
        .iter()
        .filter(|u| u.starts_with("spiffe://"))
        .filter_map(|u| SpiffeId::parse(u).ok())
        .collect();
    match ids.as_slice() {
        [one] => Some(one.clone()),
        _ => None,
    }
}

/// DER of the first certificate in a PEM text.
pub fn first_certificate_der(pem_text: &str) -> Option<Vec<u8>> {
    certificates_in(pem_text).into_iter().next()
}

/// DER of every certificate in a PEM text.
pub fn certificates_der(pem_text: &str) -> Vec<Vec<u8>> {
    certificates_in(pem_text)
}

/// Validity of the first certificate in a PEM text, as (not_before, not_after).
pub fn validity(pem_text: &str) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let der = first_certificate_der(pem_text)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let v = cert.validity();
    Some((
        DateTime::from_timestamp(v.not_before.timestamp(), 0)?,
        DateTime::from_timestamp(v.not_after.timestamp(), 0)?,
    ))
}

#[cfg(test)]
mod tests;
