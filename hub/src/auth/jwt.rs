//! JWT bearer tokens (for browsers, which rarely hold client certificates).
//!
//! One algorithm and one key per hub, both from the config: the token's `alg` header
//! must name exactly that algorithm, which rules out `none` and the classic confusion of
//! an HS256 token "signed" with the RS256 public key as its secret. Time claims are
//! checked here against the `now` the caller passes, not the system clock, so tests are
//! deterministic.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{AuthError, AuthSetupError};
use crate::acl::is_substitutable;

/// Shortest HS256 secret accepted: the hash output size (RFC 7518 §3.2).
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// `[auth.jwt]`: how bearer tokens are verified.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Signature algorithm every token must use.
    pub algorithm: JwtAlgorithm,
    /// HS256: the shared secret, the file's bytes exactly (at least 32). RS256/ES256: the
    /// issuer's public key in PEM (`-----BEGIN PUBLIC KEY-----`). Relative to the config
    /// file's directory once [`super::AuthConfig::resolve`]d.
    pub key_file: PathBuf,
    /// Required `iss` claim value, if set.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Required `aud` claim value, if set. When unset, tokens carrying `aud` are refused
    /// (RFC 7519 §4.1.3: a recipient not named in `aud` must reject the token).
    #[serde(default)]
    pub audience: Option<String>,
    /// Claim holding the client's identity (substituted for `%i` in ACL rules).
    #[serde(default = "default_identity_claim")]
    pub identity_claim: String,
    /// Claim naming the client's role; without it (or when a token lacks the claim) the
    /// role comes from `acl.assign` by identity.
    #[serde(default)]
    pub role_claim: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf` ("30s").
    #[serde(
        default = "default_leeway",
        deserialize_with = "crate::config::duration::deserialize"
    )]
    pub leeway: Duration,
}

fn default_identity_claim() -> String {
    "sub".to_owned()
}

fn default_leeway() -> Duration {
    Duration::from_secs(30)
}

/// The signature algorithms the hub verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret.
    #[serde(rename = "HS256")]
    Hs256,
    /// RSA PKCS#1 v1.5 with SHA-256.
    #[serde(rename = "RS256")]
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    #[serde(rename = "ES256")]
    Es256,
}

impl JwtAlgorithm {
    fn jsonwebtoken(self) -> Algorithm {
        match self {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Rs256 => Algorithm::RS256,
            JwtAlgorithm::Es256 => Algorithm::ES256,
        }
    }

    /// The name used in the config and in the `alg` header.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::Hs256 => "HS256",
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::Es256 => "ES256",
        }
    }
}

/// What a valid token says about its bearer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The identity claim (`sub` by default).
    pub identity: String,
    /// The role claim, if configured and present, unchecked: check it with
    /// [`crate::acl::Acl::has_role`].
    pub role: Option<String>,
    /// When the hub stops honouring the token (`exp` plus the leeway): close the
    /// connection then.
    pub expires_at: SystemTime,
}

/// A configured verifier: the key is read once, at start.
pub(crate) struct JwtVerifier {
    config: JwtConfig,
    key: DecodingKey,
    validation: Validation,
}

impl JwtVerifier {
    /// Reads `config.key_file` and checks that it holds a key for `config.algorithm`.
    pub(crate) fn new(config: &JwtConfig) -> Result<JwtVerifier, AuthSetupError> {
        let path = &config.key_file;
        let bytes = std::fs::read(path).map_err(|error| AuthSetupError::Read {
            key: "auth.jwt.key_file",
            path: path.clone(),
            error,
        })?;
        let key = load_key(config.algorithm, &bytes).map_err(|problem| AuthSetupError::Key {
            path: path.clone(),
            problem,
        })?;
        let mut validation = Validation::new(config.algorithm.jsonwebtoken());
        // exp and nbf are checked in `verify` against the caller's `now`.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        // `exp` is required too, but checked in `verify`: jsonwebtoken only takes integers
        // and RFC 7519 allows fractional NumericDates.
        let mut required = HashSet::new();
        if let Some(issuer) = &config.issuer {
            validation.set_issuer(&[issuer]);
            required.insert("iss".to_owned());
        }
        if let Some(audience) = &config.audience {
            validation.set_audience(&[audience]);
            required.insert("aud".to_owned());
        }
        validation.required_spec_claims = required;
        Ok(JwtVerifier {
            config: config.clone(),
            key,
            validation,
        })
    }

    /// The configured algorithm.
    pub(crate) fn algorithm(&self) -> JwtAlgorithm {
        self.config.algorithm
    }

    /// Verifies signature, algorithm, issuer, audience, `exp` (required) and `nbf` (if
    /// present) at `now`, then extracts identity and role.
    pub(crate) fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &self.key, &self.validation)
            .map_err(|error| self.map_error(error.into_kind()))?;
        let claims = data.claims;
        let now = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let leeway = self.config.leeway;

        let exp = numeric_date(&claims, "exp")?.ok_or(AuthError::MissingClaim("exp".into()))?;
        let deadline = exp.saturating_add(leeway);
        // RFC 7519 §4.1.4: not accepted "on or after" exp.
        if now >= deadline {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = numeric_date(&claims, "nbf")? {
            if now.saturating_add(leeway) < nbf {
                return Err(AuthError::NotYetValid);
            }
        }

        let name = &self.config.identity_claim;
        let identity = match claims.get(name) {
            None => return Err(AuthError::MissingClaim(name.clone())),
            Some(Value::String(identity)) if is_substitutable(identity) => identity.clone(),
            Some(Value::String(_)) => return Err(AuthError::UnusableIdentity(name.clone())),
            Some(_) => return Err(AuthError::InvalidClaim(name.clone())),
        };
        let role = match self.config.role_claim.as_ref().map(|n| (n, claims.get(n))) {
            None | Some((_, None)) => None,
            Some((_, Some(Value::String(role)))) => Some(role.clone()),
            Some((name, Some(_))) => return Err(AuthError::InvalidClaim(name.clone())),
        };
        Ok(Claims {
            identity,
            role,
            expires_at: UNIX_EPOCH + deadline,
        })
    }

    fn map_error(&self, kind: ErrorKind) -> AuthError {
        match kind {
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                AuthError::AlgorithmNotAllowed(self.config.algorithm.as_str())
            }
            ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
            ErrorKind::InvalidAudience if self.config.audience.is_none() => {
                AuthError::UnexpectedAudience
            }
            ErrorKind::InvalidAudience => AuthError::WrongAudience,
            ErrorKind::MissingRequiredClaim(claim) => AuthError::MissingClaim(claim),
            ErrorKind::InvalidClaimFormat(claim) => AuthError::InvalidClaim(claim),
            ErrorKind::ExpiredSignature => AuthError::Expired,
            ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            // Bad base64 or JSON, a wrong number of parts, an unknown `alg` such as
            // "none", and also a token whose claims are not a JSON object.
            ErrorKind::InvalidToken
            | ErrorKind::Base64(_)
            | ErrorKind::Json(_)
            | ErrorKind::Utf8(_)
            | ErrorKind::InvalidAlgorithmName => AuthError::Malformed,
            _ => AuthError::Unverifiable,
        }
    }
}

/// A NumericDate claim (RFC 7519 §2) as time since the epoch; `None` when absent.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<Duration>, AuthError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    // Non-integer dates are allowed by the RFC; negative, NaN or huge ones are not dates.
    value
        .as_f64()
        .filter(|secs| secs.is_finite() && *secs >= 0.0)
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .map(Some)
        .ok_or_else(|| AuthError::InvalidClaim(name.to_owned()))
}

/// Turns the key file's bytes into a verification key, or says what is wrong with them.
fn load_key(algorithm: JwtAlgorithm, bytes: &[u8]) -> Result<DecodingKey, String> {
    match algorithm {
        JwtAlgorithm::Hs256 => load_secret(bytes),
        JwtAlgorithm::Rs256 => load_public_key(
            algorithm,
            bytes,
            DecodingKey::from_rsa_pem,
            "an RSA public key",
        ),
        JwtAlgorithm::Es256 => {
            let key = load_public_key(
                algorithm,
                bytes,
                DecodingKey::from_ec_pem,
                "a P-256 (prime256v1) public key",
            )?;
            // jsonwebtoken takes any EC curve here and would only fail on every token.
            if !is_p256_point(key.as_bytes()) {
                return Err(
                    "is an EC public key on another curve than P-256 (prime256v1), which \
                     ES256 needs"
                        .to_owned(),
                );
            }
            Ok(key)
        }
    }
}

fn load_secret(bytes: &[u8]) -> Result<DecodingKey, String> {
    if bytes.len() < MIN_HS256_SECRET_BYTES {
        return Err(format!(
            "holds {} bytes; an HS256 secret must be at least {MIN_HS256_SECRET_BYTES} \
             bytes (RFC 7518 §3.2): create one with `head -c 32 /dev/urandom > FILE` and \
             give the token issuer the same bytes (all of the file is the secret, a \
             trailing newline included)",
            bytes.len()
        ));
    }
    Ok(DecodingKey::from_secret(bytes))
}

fn load_public_key(
    algorithm: JwtAlgorithm,
    bytes: &[u8],
    parse: fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>,
    expected: &str,
) -> Result<DecodingKey, String> {
    let text = String::from_utf8_lossy(bytes);
    if text.contains("PRIVATE KEY-----") {
        return Err(
            "holds a private key; the hub needs only the public key: extract it with \
                    `openssl pkey -in FILE -pubout -out PUBLIC.pem` and keep the private key \
                    with the token issuer"
                .to_owned(),
        );
    }
    if text.contains("-----BEGIN CERTIFICATE-----") {
        return Err("holds a certificate; give its public key instead: \
                    `openssl x509 -in FILE -pubkey -noout > PUBLIC.pem`"
            .to_owned());
    }
    parse(bytes).map_err(|_| {
        format!(
            "is not {expected} in PEM format (-----BEGIN PUBLIC KEY-----), which {} needs",
            algorithm.as_str()
        )
    })
}

/// An uncompressed (65-byte) or compressed (33-byte) SEC1 point of P-256's size.
fn is_p256_point(point: &[u8]) -> bool {
    matches!(
        (point.len(), point.first()),
        (65, Some(0x04)) | (33, Some(0x02 | 0x03))
    )
}

/// Path of a test key under `hub/tests/data/jwt` (see the README there).
#[cfg(test)]
pub(crate) fn fixture(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/jwt")
        .join(name)
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn config(algorithm: JwtAlgorithm, key: &str) -> JwtConfig {
        JwtConfig {
            algorithm,
            key_file: fixture(key),
            issuer: None,
            audience: None,
            identity_claim: default_identity_claim(),
            role_claim: Some("role".to_owned()),
            leeway: default_leeway(),
        }
    }

    fn verifier(config: &JwtConfig) -> JwtVerifier {
        JwtVerifier::new(config).expect("verifier")
    }

    fn read(name: &str) -> Vec<u8> {
        std::fs::read(fixture(name)).expect("fixture")
    }

    fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, key).expect("sign")
    }

    fn hs(name: &str) -> EncodingKey {
        EncodingKey::from_secret(&read(name))
    }

    fn rs(name: &str) -> EncodingKey {
        EncodingKey::from_rsa_pem(&read(name)).expect("rsa key")
    }

    fn es(name: &str) -> EncodingKey {
        EncodingKey::from_ec_pem(&read(name)).expect("ec key")
    }

    fn claims(exp: u64) -> Value {
        json!({ "sub": "dashboard-1", "role": "dashboard", "exp": exp })
    }

    /// A token with a header of our choosing and the given signature text.
    fn unsigned(header: &Value, claims: &Value, signature: &str) -> String {
        format!(
            "{}.{}.{signature}",
            b64url(header.to_string().as_bytes()),
            b64url(claims.to_string().as_bytes())
        )
    }

    /// Base64url without padding (RFC 4648 §5), enough for test tokens.
    fn b64url(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
            }
        }
        out
    }

    #[test]
    fn valid_tokens_of_each_algorithm_are_accepted() {
        let cases = [
            (
                JwtAlgorithm::Hs256,
                "hs256.secret",
                Algorithm::HS256,
                hs("hs256.secret"),
            ),
            (
                JwtAlgorithm::Rs256,
                "rsa.pub.pem",
                Algorithm::RS256,
                rs("rsa.key"),
            ),
            (
                JwtAlgorithm::Es256,
                "ec.pub.pem",
                Algorithm::ES256,
                es("ec.key"),
            ),
        ];
        for (algorithm, key_file, alg, signing_key) in cases {
            let v = verifier(&config(algorithm, key_file));
            let token = sign(alg, &signing_key, &claims(NOW + 600));
            let got = v.verify(&token, at(NOW)).expect("valid token");
            assert_eq!(
                got,
                Claims {
                    identity: "dashboard-1".into(),
                    role: Some("dashboard".into()),
                    expires_at: at(NOW + 630),
                },
                "{algorithm:?}"
            );
        }
    }

    #[test]
    fn tokens_signed_with_another_key_are_refused() {
        let cases = [
            (
                JwtAlgorithm::Hs256,
                "hs256.secret",
                Algorithm::HS256,
                hs("hs256-other.secret"),
            ),
            (
                JwtAlgorithm::Rs256,
                "rsa.pub.pem",
                Algorithm::RS256,
                rs("rsa-other.key"),
            ),
            (
                JwtAlgorithm::Es256,
                "ec.pub.pem",
                Algorithm::ES256,
                es("ec-other.key"),
            ),
        ];
        for (algorithm, key_file, alg, forger) in cases {
            let v = verifier(&config(algorithm, key_file));
            let token = sign(alg, &forger, &claims(NOW + 600));
            assert_eq!(
                v.verify(&token, at(NOW)),
                Err(AuthError::BadSignature),
                "{algorithm:?}"
            );
        }
    }

    #[test]
    fn expiry_is_enforced_with_the_leeway() {
        let v = verifier(&config(JwtAlgorithm::Es256, "ec.pub.pem"));
        let token = sign(Algorithm::ES256, &es("ec.key"), &claims(NOW));
        assert!(v.verify(&token, at(NOW)).is_ok(), "within leeway");
        assert!(v.verify(&token, at(NOW + 29)).is_ok(), "within leeway");
        assert_eq!(v.verify(&token, at(NOW + 30)), Err(AuthError::Expired));
        assert_eq!(v.verify(&token, at(NOW + 86_400)), Err(AuthError::Expired));

        let mut strict = config(JwtAlgorithm::Es256, "ec.pub.pem");
        strict.leeway = Duration::ZERO;
        assert_eq!(
            verifier(&strict).verify(&token, at(NOW)),
            Err(AuthError::Expired)
        );
    }

    #[test]
    fn a_token_without_exp_is_refused() {
        let v = verifier(&config(JwtAlgorithm::Hs256, "hs256.secret"));
        let token = sign(
            Algorithm::HS256,
            &hs("hs256.secret"),
            &json!({ "sub": "x" }),
        );
        assert_eq!(
            v.verify(&token, at(NOW)),
            Err(AuthError::MissingClaim("exp".into()))
        );
        let token = sign(
            Algorithm::HS256,
            &hs("hs256.secret"),
            &json!({ "sub": "x", "exp": "soon" }),
        );
        assert!(v.verify(&token, at(NOW)).is_err());
        let token = sign(
            Algorithm::HS256,
            &hs("hs256.secret"),
            &json!({ "sub": "x", "exp": -5 }),
        );
        assert!(v.verify(&token, at(NOW)).is_err());
    }

    #[test]
    fn non_integer_exp_and_future_nbf_are_handled() {
        let v = verifier(&config(JwtAlgorithm::Hs256, "hs256.secret"));
        let key = hs("hs256.secret");
        let token = sign(
            Algorithm::HS256,
            &key,
            &json!({ "sub": "x", "exp": NOW as f64 + 100.5 }),
        );
        assert!(v.verify(&token, at(NOW)).is_ok());
        let token = sign(
            Algorithm::HS256,
            &key,
            &json!({ "sub": "x", "exp": NOW + 900, "nbf": NOW + 60 }),
        );
        assert_eq!(v.verify(&token, at(NOW)), Err(AuthError::NotYetValid));
        assert!(v.verify(&token, at(NOW + 30)).is_ok(), "nbf within leeway");
    }

    #[test]
    fn alg_none_is_refused() {
        let v = verifier(&config(JwtAlgorithm::Rs256, "rsa.pub.pem"));
        for alg in ["none", "None", "NONE"] {
            let token = unsigned(&json!({ "alg": alg, "typ": "JWT" }), &claims(NOW + 600), "");
            assert_eq!(
                v.verify(&token, at(NOW)),
                Err(AuthError::Malformed),
                "{alg}"
            );
        }
    }

    #[test]
    fn hs256_signed_with_the_public_key_is_refused_by_an_rs256_hub() {
        for (algorithm, key_file) in [
            (JwtAlgorithm::Rs256, "rsa.pub.pem"),
            (JwtAlgorithm::Es256, "ec.pub.pem"),
        ] {
            let v = verifier(&config(algorithm, key_file));
            let public_pem = read(key_file);
            let token = sign(
                Algorithm::HS256,
                &EncodingKey::from_secret(&public_pem),
                &claims(NOW + 600),
            );
            assert_eq!(
                v.verify(&token, at(NOW)),
                Err(AuthError::AlgorithmNotAllowed(algorithm.as_str()))
            );
        }
    }

    #[test]
    fn a_token_of_another_asymmetric_algorithm_is_refused() {
        let v = verifier(&config(JwtAlgorithm::Rs256, "rsa.pub.pem"));
        let token = sign(Algorithm::ES256, &es("ec.key"), &claims(NOW + 600));
        assert_eq!(
            v.verify(&token, at(NOW)),
            Err(AuthError::AlgorithmNotAllowed("RS256"))
        );
        let token = sign(Algorithm::PS256, &rs("rsa.key"), &claims(NOW + 600));
        assert_eq!(
            v.verify(&token, at(NOW)),
            Err(AuthError::AlgorithmNotAllowed("RS256"))
        );
    }

    #[test]
    fn issuer_and_audience_are_required_when_configured() {
        let mut c = config(JwtAlgorithm::Hs256, "hs256.secret");
        c.issuer = Some("https://login.example".into());
        c.audience = Some("edgehub".into());
        let v = verifier(&c);
        let key = hs("hs256.secret");
        let with = |extra: Value| {
            let mut claims = claims(NOW + 600);
            if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
                claims.extend(extra.clone());
            }
            sign(Algorithm::HS256, &key, &claims)
        };
        let good = with(json!({ "iss": "https://login.example", "aud": "edgehub" }));
        assert!(v.verify(&good, at(NOW)).is_ok());
        let aud_list = with(json!({ "iss": "https://login.example", "aud": ["x", "edgehub"] }));
        assert!(v.verify(&aud_list, at(NOW)).is_ok());
        let wrong_iss = with(json!({ "iss": "https://evil.example", "aud": "edgehub" }));
        assert_eq!(v.verify(&wrong_iss, at(NOW)), Err(AuthError::WrongIssuer));
        let wrong_aud = with(json!({ "iss": "https://login.example", "aud": "other" }));
        assert_eq!(v.verify(&wrong_aud, at(NOW)), Err(AuthError::WrongAudience));
        let no_aud = with(json!({ "iss": "https://login.example" }));
        assert_eq!(
            v.verify(&no_aud, at(NOW)),
            Err(AuthError::MissingClaim("aud".into()))
        );
        let no_iss = with(json!({ "aud": "edgehub" }));
        assert_eq!(
            v.verify(&no_iss, at(NOW)),
            Err(AuthError::MissingClaim("iss".into()))
        );

        let open = verifier(&config(JwtAlgorithm::Hs256, "hs256.secret"));
        assert_eq!(
            open.verify(&good, at(NOW)),
            Err(AuthError::UnexpectedAudience)
        );
    }

    #[test]
    fn identity_and_role_come_from_the_configured_claims() {
        let mut c = config(JwtAlgorithm::Hs256, "hs256.secret");
        c.identity_claim = "preferred_username".into();
        c.role_claim = Some("edgehub_role".into());
        let v = verifier(&c);
        let key = hs("hs256.secret");
        let token = sign(
            Algorithm::HS256,
            &key,
            &json!({ "preferred_username": "ann", "edgehub_role": "admin", "exp": NOW + 60 }),
        );
        let got = v.verify(&token, at(NOW)).expect("valid");
        assert_eq!(
            (got.identity.as_str(), got.role.as_deref()),
            ("ann", Some("admin"))
        );

        let token = sign(
            Algorithm::HS256,
            &key,
            &json!({ "preferred_username": "ann", "exp": NOW + 60 }),
        );
        assert_eq!(v.verify(&token, at(NOW)).map(|c| c.role), Ok(None));
        let token = sign(
            Algorithm::HS256,
            &key,
            &json!({ "sub": "ann", "exp": NOW + 60 }),
        );
        assert_eq!(
            v.verify(&token, at(NOW)),
            Err(AuthError::MissingClaim("preferred_username".into()))
        );
        let token = sign(
            Algorithm::HS256,
            &key,
            &json!({ "preferred_username": 7, "exp": NOW + 60 }),
        );
        assert_eq!(
            v.verify(&token, at(NOW)),
            Err(AuthError::InvalidClaim("preferred_username".into()))
        );
        let token = sign(
            Algorithm::HS256,
            &key,
            &json!({ "preferred_username": "ann", "edgehub_role": ["admin"], "exp": NOW + 60 }),
        );
        assert_eq!(
            v.verify(&token, at(NOW)),
            Err(AuthError::InvalidClaim("edgehub_role".into()))
        );
        for bad in ["", "a/b", "+", "#", "x\0"] {
            let token = sign(
                Algorithm::HS256,
                &key,
                &json!({ "preferred_username": bad, "exp": NOW + 60 }),
            );
            assert_eq!(
                v.verify(&token, at(NOW)),
                Err(AuthError::UnusableIdentity("preferred_username".into())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn garbage_is_malformed_and_errors_never_echo_the_token() {
        let v = verifier(&config(JwtAlgorithm::Hs256, "hs256.secret"));
        for garbage in ["", "abc", "a.b", "a.b.c", "...."] {
            let error = v.verify(garbage, at(NOW)).expect_err(garbage);
            assert_eq!(error, AuthError::Malformed, "{garbage:?}");
        }
        // A good header over junk fails on the signature, which is checked first.
        assert_eq!(
            v.verify("eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.sig", at(NOW)),
            Err(AuthError::BadSignature)
        );
        let token = sign(
            Algorithm::HS256,
            &hs("hs256-other.secret"),
            &claims(NOW + 600),
        );
        let message = v.verify(&token, at(NOW)).expect_err("forged").to_string();
        assert!(!message.contains(&token[..20]), "{message}");
    }

    #[test]
    fn unusable_key_files_are_refused_with_a_hint() {
        let problem =
            |algorithm: JwtAlgorithm, key: &str| match JwtVerifier::new(&config(algorithm, key)) {
                Err(AuthSetupError::Key { problem, .. }) => problem,
                Err(other) => panic!("{key}: unexpected {other}"),
                Ok(_) => panic!("{key}: accepted"),
            };
        assert!(problem(JwtAlgorithm::Rs256, "rsa.key").contains("private key"));
        assert!(problem(JwtAlgorithm::Es256, "ec.key").contains("openssl pkey"));
        assert!(problem(JwtAlgorithm::Rs256, "ec.pub.pem").contains("RSA public key"));
        assert!(problem(JwtAlgorithm::Es256, "rsa.pub.pem").contains("P-256"));
        assert!(problem(JwtAlgorithm::Es256, "ec-p384.pub.pem").contains("another curve"));
        let dir = tempfile::tempdir().expect("tempdir");
        let short = dir.path().join("short.secret");
        std::fs::write(&short, b"secret\n").expect("write");
        let mut c = config(JwtAlgorithm::Hs256, "x");
        c.key_file = short;
        match JwtVerifier::new(&c) {
            Err(AuthSetupError::Key { problem, .. }) => {
                assert!(problem.contains("at least 32"), "{problem}");
            }
            _ => panic!("short secret accepted"),
        }
        c.key_file = dir.path().join("missing");
        assert!(matches!(
            JwtVerifier::new(&c),
            Err(AuthSetupError::Read {
                key: "auth.jwt.key_file",
                ..
            })
        ));
    }

    #[test]
    fn the_section_parses_with_defaults() {
        let c: JwtConfig =
            toml::from_str("algorithm = \"RS256\"\nkey_file = \"/etc/edgehub/jwt.pem\"\n")
                .expect("parses");
        assert_eq!(c.algorithm, JwtAlgorithm::Rs256);
        assert_eq!(c.identity_claim, "sub");
        assert_eq!(c.role_claim, None);
        assert_eq!(c.leeway, Duration::from_secs(30));
        let error = toml::from_str::<JwtConfig>("algorithm = \"HS512\"\nkey_file = \"k\"\n")
            .expect_err("unsupported");
        assert!(error.to_string().contains("`HS256`, `RS256`"), "{error}");
        let error =
            toml::from_str::<JwtConfig>("algorithm = \"HS256\"\nkey_file = \"k\"\nleeway = 30\n")
                .expect_err("needs units");
        assert!(error.to_string().contains("1m 30s"), "{error}");
    }
}
