//! What SES events need to go out through SNS over HTTP: the key SNS messages are signed with, the
//! signing certificate (served at `SigningCertURL` by the front doors), and the subscriptions — a
//! receiver gets a `SubscriptionConfirmation` first and must visit its `SubscribeURL` (also served by
//! the doors) before any notification goes to it, as with SNS.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};

use crate::config::HttpSettings;

/// The path under which the doors serve the certificate and the SubscribeURL.
pub const PATH: &str = "/understudy/sns";

#[derive(Debug, thiserror::Error)]
#[error("cannot make the SNS signing certificate: {0}")]
pub struct SnsError(#[from] openssl::error::ErrorStack);

pub struct Sns {
    key: PKey<Private>,
    cert_pem: Vec<u8>,
    /// `SimpleNotificationService-{digest}.pem`.
    pub cert_name: String,
    pub topic_arn: String,
    pub signature_version: u8,
    /// Where receivers reach the doors; the listening address until [`Sns::listening_on`] is told.
    public_url: RwLock<String>,
    configured_url: bool,
    /// Tokens sent in SubscriptionConfirmations, and those confirmed.
    tokens: Mutex<HashMap<String, String>>,
    /// Confirmed tokens, and the endpoints they confirmed.
    confirmed: Mutex<HashSet<String>>,
    endpoints: Mutex<HashSet<String>>,
    confirmations: tokio::sync::Notify,
}

impl std::fmt::Debug for Sns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sns").field("cert_name", &self.cert_name).finish()
    }
}

impl Sns {
    /// The signer of `http.ses`: its key (or one made now) and a certificate for it. A configured key
    /// gives the same certificate on every replica (fixed validity and serial).
    pub fn from_settings(http: &HttpSettings) -> Result<Self, SnsError> {
        let key = match &http.ses.signing_key_pem {
            Some(pem) => PKey::private_key_from_pem(pem.as_bytes())?,
            None => PKey::from_rsa(openssl::rsa::Rsa::generate(2048)?)?,
        };
        let cert = certificate(&key)?;
        let digest = openssl::sha::sha256(&cert.to_der()?);
        let cert_name = format!("SimpleNotificationService-{}.pem", &crate::wire::ses::hex(&digest)[..32]);
        let public_url = http.ses.public_url.clone().or_else(|| http.listen_addr.map(|a| format!("http://{a}")));
        Ok(Self {
            key,
            cert_pem: cert.to_pem()?,
            cert_name,
            topic_arn: http.ses.topic_arn.clone(),
            signature_version: http.ses.signature_version,
            configured_url: public_url.is_some() && http.ses.public_url.is_some(),
            public_url: RwLock::new(public_url.unwrap_or_default().trim_end_matches('/').to_owned()),
            tokens: Mutex::default(),
            confirmed: Mutex::default(),
            endpoints: Mutex::default(),
            confirmations: tokio::sync::Notify::new(),
        })
    }

    /// The doors listen on `addr` (a port chosen at bind time): the URLs point there unless
    /// `http.ses.public_url` says otherwise.
    pub fn listening_on(&self, addr: std::net::SocketAddr) {
        if !self.configured_url {
            *self.public_url.write().expect("url lock") = format!("http://{addr}");
        }
    }

    fn url(&self, rest: &str) -> String {
        format!("{}{PATH}{rest}", self.public_url.read().expect("url lock"))
    }

    pub fn cert_url(&self) -> String {
        self.url(&format!("/{}", self.cert_name))
    }

    pub fn cert_pem(&self) -> &[u8] {
        &self.cert_pem
    }

    pub fn unsubscribe_url(&self) -> String {
        let arn = crate::wire::ses::uri_encode(&self.topic_arn, false);
        self.url(&format!("?Action=Unsubscribe&SubscriptionArn={arn}:understudy"))
    }

    /// Base64 of the signature of `string_to_sign`: SHA1withRSA (version 1) or SHA256withRSA (2).
    pub fn sign(&self, string_to_sign: &str) -> String {
        use base64::Engine as _;
        let digest = if self.signature_version == 2 { MessageDigest::sha256() } else { MessageDigest::sha1() };
        let mut signer = openssl::sign::Signer::new(digest, &self.key).expect("an RSA key signs");
        signer.update(string_to_sign.as_bytes()).expect("signing");
        base64::engine::general_purpose::STANDARD.encode(signer.sign_to_vec().expect("signing"))
    }

    /// Whether a receiver at `endpoint` has confirmed a subscription, by any token sent to it (a late
    /// visit to an earlier confirmation's SubscribeURL counts).
    pub fn is_confirmed(&self, endpoint: &str) -> bool {
        self.endpoints.lock().expect("confirm lock").contains(endpoint)
    }

    /// A SubscriptionConfirmation for `endpoint`: its token (the same each time for one endpoint) and
    /// SubscribeURL.
    pub fn new_subscription(&self, endpoint: &str) -> (String, String) {
        let token = {
            let mut tokens = self.tokens.lock().expect("token lock");
            match tokens.iter().find(|(_, e)| e.as_str() == endpoint) {
                Some((t, _)) => t.clone(),
                None => {
                    let t = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
                    tokens.insert(t.clone(), endpoint.to_owned());
                    t
                }
            }
        };
        let arn = crate::wire::ses::uri_encode(&self.topic_arn, false);
        let url = self.url(&format!("?Action=ConfirmSubscription&TopicArn={arn}&Token={token}"));
        (token, url)
    }

    /// The receiver visited the SubscribeURL with `token`; the subscription's endpoint, if the token is
    /// one that was sent.
    pub fn confirm(&self, token: &str) -> Option<String> {
        let endpoint = self.tokens.lock().expect("token lock").get(token).cloned()?;
        self.confirmed.lock().expect("confirm lock").insert(token.to_owned());
        self.endpoints.lock().expect("confirm lock").insert(endpoint.clone());
        self.confirmations.notify_waiters();
        Some(endpoint)
    }

    /// Wait until `token` is confirmed, at most `within`; whether it was.
    pub async fn confirmed(&self, token: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.confirmations.notified();
            if self.confirmed.lock().expect("confirm lock").contains(token) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.confirmed.lock().expect("confirm lock").contains(token);
            }
        }
    }
}

/// A self-signed certificate for `key`, the same for the same key: fixed validity (2020–2049) and a
/// serial from the key.
fn certificate(key: &PKey<Private>) -> Result<openssl::x509::X509, openssl::error::ErrorStack> {
    use openssl::asn1::{Asn1Integer, Asn1Time};
    use openssl::bn::BigNum;
    let mut name = openssl::x509::X509NameBuilder::new()?;
    name.append_entry_by_text("CN", "sns.understudy.test")?;
    name.append_entry_by_text("O", "Understudy")?;
    let name = name.build();
    let mut b = openssl::x509::X509::builder()?;
    b.set_version(2)?;
    let serial = openssl::sha::sha256(&key.public_key_to_der()?);
    let serial = BigNum::from_slice(&serial[..16])?;
    let serial = Asn1Integer::from_bn(&serial)?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(&name)?;
    b.set_issuer_name(&name)?;
    b.set_pubkey(key)?;
    let (not_before, not_after) = (Asn1Time::from_unix(1_577_836_800)?, Asn1Time::from_unix(2_524_607_999)?);
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    b.sign(key, MessageDigest::sha256())?;
    Ok(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_with_the_served_certificate() {
        let mut http = HttpSettings { listen_addr: Some("127.0.0.1:8080".parse().unwrap()), ..Default::default() };
        for version in [1, 2] {
            http.ses.signature_version = version;
            let sns = Sns::from_settings(&http).unwrap();
            let sig = sns.sign("Message\nhi\n");
            use base64::Engine as _;
            let raw = base64::engine::general_purpose::STANDARD.decode(sig).unwrap();
            let cert = openssl::x509::X509::from_pem(sns.cert_pem()).unwrap();
            let digest = if version == 2 { MessageDigest::sha256() } else { MessageDigest::sha1() };
            let public = cert.public_key().unwrap();
            let mut v = openssl::sign::Verifier::new(digest, &public).unwrap();
            v.update(b"Message\nhi\n").unwrap();
            assert!(v.verify(&raw).unwrap(), "version {version}");
            assert!(sns.cert_url().starts_with("http://127.0.0.1:8080/understudy/sns/SimpleNotificationService-"));
        }
        // A configured key: the same certificate each time.
        let pem = String::from_utf8(
            PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap().private_key_to_pem_pkcs8().unwrap(),
        )
        .unwrap();
        http.ses.signing_key_pem = Some(pem);
        let (a, b) = (Sns::from_settings(&http).unwrap(), Sns::from_settings(&http).unwrap());
        assert_eq!((a.cert_pem(), &a.cert_name), (b.cert_pem(), &b.cert_name));
    }
}
