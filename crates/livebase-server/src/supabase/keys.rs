//! Supabase keys and roles: which credential a request carries and who that makes it.
//!
//! The credential is `Authorization: Bearer <token>` when present, else the `apikey` header,
//! else the `apikey` URL parameter (the realtime socket's only option). It is verified by the
//! server's [`Verifier`](crate::auth::Verifier): the admin key, or a JWT signed with the
//! configured secret or keys. The JWT's `role` claim decides the principal:
//!
//! - `service_role` — the service credential ([`Principal::Admin`]): rules do not apply.
//! - the anonymous role (`--anon-role`, `anon` by default) — [`Principal::Anonymous`] with the
//!   token's claims: the public "anon key" every browser holds is not a login, so it gets what
//!   callers without a token get (rate limited by address, channels closed by default) while
//!   rules still see `auth.role == 'anon'`.
//! - any other role (`authenticated`, custom) — [`Principal::User`]; rules see every claim as
//!   `auth.*` (`auth.sub`, `auth.role`, …).
//!
//! Unlike the native API, a request without any credential is refused (401), as Supabase's
//! gateway does.

use crate::app::App;
use crate::auth::{Principal, TokenError};
use axum::http::HeaderMap;

/// The role whose verified tokens act as the service credential.
pub const SERVICE_ROLE: &str = "service_role";

/// Why a request's credential was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KeyError {
    /// No `Authorization`, no `apikey` header, no `apikey` parameter.
    #[error("No API key found in request")]
    Missing,
    /// A credential that is not well formed (e.g. `Authorization: Basic …`).
    #[error("{0}")]
    Malformed(String),
    #[error("JWT expired")]
    Expired,
    #[error("invalid JWT: {0}")]
    Invalid(String),
}

/// The credential a request carries, by precedence: bearer token, `apikey` header, `apikey`
/// parameter. Empty values count as absent.
pub fn credential<'a>(headers: &'a HeaderMap, apikey_param: Option<&'a str>) -> Result<&'a str, KeyError> {
    if let Some(v) = headers.get(axum::http::header::AUTHORIZATION) {
        let v = v.to_str().map_err(|_| KeyError::Malformed("the Authorization header is not text".into()))?;
        let (scheme, token) = v.trim().split_once(' ').unwrap_or((v.trim(), ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(KeyError::Malformed("Authorization must be 'Bearer <key or JWT>'".into()));
        }
        let token = token.trim();
        if !token.is_empty() {
            return Ok(token);
        }
    }
    if let Some(v) = headers.get("apikey") {
        let v = v.to_str().map_err(|_| KeyError::Malformed("the apikey header is not text".into()))?.trim();
        if !v.is_empty() {
            return Ok(v);
        }
    }
    apikey_param.map(str::trim).filter(|v| !v.is_empty()).ok_or(KeyError::Missing)
}

/// Who a verified token is (see the module docs for the role mapping). Also for tokens that
/// arrive later on a connection (a realtime `access_token`).
pub fn principal_for_token(app: &App, token: &str) -> Result<Principal, KeyError> {
    let p = app.verifier.principal(Some(token)).map_err(|e| match e {
        TokenError::Expired => KeyError::Expired,
        TokenError::Invalid(m) => KeyError::Invalid(m),
    })?;
    Ok(match p {
        Principal::User(i) if i.role() == SERVICE_ROLE => Principal::Admin,
        Principal::User(i) if i.role() == app.config.anon_role => Principal::Anonymous(i),
        p => p,
    })
}

/// The caller of a Supabase-compatible request.
pub fn principal(app: &App, headers: &HeaderMap, apikey_param: Option<&str>) -> Result<Principal, KeyError> {
    principal_for_token(app, credential(headers, apikey_param)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn bearer_wins_over_the_apikey_header_which_wins_over_the_parameter() {
        let h = headers(&[("authorization", "Bearer user-jwt"), ("apikey", "anon-key")]);
        assert_eq!(credential(&h, Some("param")), Ok("user-jwt"));
        let h = headers(&[("apikey", "anon-key")]);
        assert_eq!(credential(&h, Some("param")), Ok("anon-key"));
        assert_eq!(credential(&HeaderMap::new(), Some("param")), Ok("param"));
        assert_eq!(credential(&HeaderMap::new(), Some("")), Err(KeyError::Missing));
        assert_eq!(credential(&HeaderMap::new(), None), Err(KeyError::Missing));
        let h = headers(&[("authorization", "Basic abc")]);
        assert!(matches!(credential(&h, None), Err(KeyError::Malformed(_))));
    }
}
