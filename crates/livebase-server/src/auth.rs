//! Who is calling: the admin key, a verified JWT, or nobody.
//!
//! Tokens are verified with an HS256 secret and/or RS256/ES256 public keys (a PEM file or a
//! JWKS file). The algorithm must be one a configured key is for: `alg: none`, an HS256 token
//! when only public keys are configured, or an RS256 token signed with a shared secret are all
//! refused. `exp` is required.

use crate::error::ApiError;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{Map, Value};
use std::sync::Arc;

/// A caller's identity: its claims, with `role` always present.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub claims: Map<String, Value>,
    /// Expiry (seconds since the epoch), when the token had one.
    pub exp: Option<u64>,
}

impl Identity {
    pub fn sub(&self) -> Option<&str> {
        self.claims.get("sub").and_then(Value::as_str)
    }

    pub fn role(&self) -> &str {
        self.claims.get("role").and_then(Value::as_str).unwrap_or("anon")
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Principal {
    /// The service credential: bypasses rules and rate limits.
    Admin,
    User(Arc<Identity>),
    Anonymous(Arc<Identity>),
}

impl Principal {
    /// The actor recorded on change events: the token's `sub`, `admin`, or none.
    pub fn actor(&self) -> Option<String> {
        match self {
            Principal::Admin => Some("admin".into()),
            Principal::User(i) => i.sub().map(str::to_string),
            Principal::Anonymous(_) => None,
        }
    }

    /// A stable scope for idempotency keys and rate limits.
    pub fn scope(&self) -> String {
        match self {
            Principal::Admin => "admin".into(),
            Principal::User(i) => format!("u:{}", i.sub().unwrap_or_default()),
            Principal::Anonymous(_) => "anon".into(),
        }
    }

    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Admin)
    }

    /// The claims rules see as `auth.*` (empty map for admin, which bypasses rules).
    pub fn claims(&self) -> &Map<String, Value> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        match self {
            Principal::Admin => EMPTY.get_or_init(Map::new),
            Principal::User(i) | Principal::Anonymous(i) => &i.claims,
        }
    }

    pub fn expires_at(&self) -> Option<u64> {
        match self {
            Principal::User(i) => i.exp,
            _ => None,
        }
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenError {
    Expired,
    Invalid(String),
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> ApiError {
        match e {
            TokenError::Expired => ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "token_expired",
                "the token has expired; get a fresh one",
            ),
            TokenError::Invalid(m) => ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                "invalid_token",
                format!("invalid token: {m}"),
            ),
        }
    }
}

/// Verifies tokens against the configured keys.
pub struct Verifier {
    admin_key: String,
    secret: Option<DecodingKey>,
    /// Public keys: (key id, algorithm, key).
    public: Vec<(Option<String>, Algorithm, DecodingKey)>,
    anon: Arc<Identity>,
}

pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Verifier {
    pub fn new(
        admin_key: String,
        secret: Option<&str>,
        public_pem: Option<&[u8]>,
        jwks: Option<&str>,
        anon_role: &str,
    ) -> anyhow::Result<Verifier> {
        let mut public = Vec::new();
        if let Some(pem) = public_pem {
            let text = String::from_utf8_lossy(pem);
            let (alg, key) = if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
                (Algorithm::RS256, k)
            } else if let Ok(k) = DecodingKey::from_ec_pem(pem) {
                (Algorithm::ES256, k)
            } else {
                anyhow::bail!("the public key is neither an RSA nor an EC PEM key ({} bytes)", text.len());
            };
            public.push((None, alg, key));
        }
        if let Some(jwks) = jwks {
            let set: JwkSet = serde_json::from_str(jwks).map_err(|e| anyhow::anyhow!("invalid JWKS: {e}"))?;
            for k in &set.keys {
                let alg = match &k.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    _ => continue,
                };
                let key = DecodingKey::from_jwk(k).map_err(|e| anyhow::anyhow!("invalid JWK: {e}"))?;
                public.push((k.common.key_id.clone(), alg, key));
            }
        }
        let mut anon = Map::new();
        anon.insert("role".into(), Value::String(anon_role.to_string()));
        Ok(Verifier {
            admin_key,
            secret: secret.filter(|s| !s.is_empty()).map(|s| DecodingKey::from_secret(s.as_bytes())),
            public,
            anon: Arc::new(Identity { claims: anon, exp: None }),
        })
    }

    pub fn anonymous(&self) -> Principal {
        Principal::Anonymous(self.anon.clone())
    }

    /// The principal for a bearer credential (or its absence).
    pub fn principal(&self, token: Option<&str>) -> Result<Principal, TokenError> {
        let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(self.anonymous());
        };
        if same(token.as_bytes(), self.admin_key.as_bytes()) {
            return Ok(Principal::Admin);
        }
        self.verify(token).map(|i| Principal::User(Arc::new(i)))
    }

    fn verify(&self, token: &str) -> Result<Identity, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let key = match header.alg {
            Algorithm::HS256 => self.secret.as_ref(),
            alg @ (Algorithm::RS256 | Algorithm::ES256) => self
                .public
                .iter()
                .find(|(kid, a, _)| {
                    *a == alg && (header.kid.is_none() || kid.is_none() || *kid == header.kid)
                })
                .map(|(_, _, k)| k),
            other => return Err(TokenError::Invalid(format!("algorithm {other:?} is not accepted"))),
        };
        let Some(key) = key else {
            return Err(TokenError::Invalid(format!("no key is configured for {:?} tokens", header.alg)));
        };
        let mut v = Validation::new(header.alg);
        v.leeway = 0;
        v.validate_aud = false;
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, key, &v).map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid(e.to_string()),
            })?;
        let mut claims = data.claims;
        let exp = claims.get("exp").and_then(Value::as_u64);
        if !claims.get("role").is_some_and(Value::is_string) {
            claims.insert("role".into(), Value::String("authenticated".into()));
        }
        Ok(Identity { claims, exp })
    }
}

/// Signs an HS256 token (for `livebase token` and tests).
pub fn sign(
    secret: &str,
    sub: &str,
    role: &str,
    ttl_secs: u64,
    extra: Map<String, Value>,
) -> anyhow::Result<String> {
    sign_role(secret, Some(sub), role, ttl_secs, extra)
}

/// Signs an HS256 token with or without a subject: a role key (`anon`, `service_role`) has
/// none, a user token has one.
pub fn sign_role(
    secret: &str,
    sub: Option<&str>,
    role: &str,
    ttl_secs: u64,
    extra: Map<String, Value>,
) -> anyhow::Result<String> {
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = extra;
    if let Some(sub) = sub {
        claims.insert("sub".into(), Value::String(sub.into()));
    }
    claims.insert("role".into(), Value::String(role.into()));
    claims.insert("iat".into(), Value::from(now));
    claims.insert("exp".into(), Value::from(now + ttl_secs));
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// Parses `90`, `45s`, `30m`, `1h`, `7d` into seconds.
pub fn parse_ttl(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 =
        num.parse().map_err(|_| anyhow::anyhow!("invalid duration '{s}': use e.g. 45s, 30m, 1h, 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => anyhow::bail!("invalid duration unit in '{s}': use s, m, h or d"),
    };
    Ok(n * mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier() -> Verifier {
        Verifier::new("admin-k".into(), Some("s3cret"), None, None, "anon").unwrap()
    }

    #[test]
    fn valid_tokens_carry_their_claims() {
        let mut extra = Map::new();
        extra.insert("team".into(), Value::String("blue".into()));
        let t = sign("s3cret", "u1", "editor", 60, extra).unwrap();
        let Principal::User(i) = verifier().principal(Some(&t)).unwrap() else { panic!() };
        assert_eq!((i.sub(), i.role()), (Some("u1"), "editor"));
        assert_eq!(i.claims["team"], "blue");
        assert!(i.exp.is_some());
    }

    #[test]
    fn forged_expired_and_unsigned_tokens_are_refused() {
        let v = verifier();
        let forged = sign("other", "u1", "admin", 60, Map::new()).unwrap();
        assert!(matches!(v.principal(Some(&forged)), Err(TokenError::Invalid(_))));
        let mut claims = Map::new();
        claims.insert("sub".into(), "u1".into());
        claims.insert("exp".into(), Value::from(jsonwebtoken::get_current_timestamp() - 10));
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert_eq!(v.principal(Some(&expired)), Err(TokenError::Expired));
        // alg: none, hand-made.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJ1MSIsInJvbGUiOiJhZG1pbiIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(matches!(v.principal(Some(none)), Err(TokenError::Invalid(_))));
        assert_eq!(v.principal(Some("admin-k")), Ok(Principal::Admin));
        assert!(matches!(v.principal(None), Ok(Principal::Anonymous(_))));
    }

    #[test]
    fn ttl_parses_units() {
        assert_eq!(parse_ttl("1h").unwrap(), 3600);
        assert_eq!(parse_ttl("90").unwrap(), 90);
        assert!(parse_ttl("1y").is_err());
    }
}
