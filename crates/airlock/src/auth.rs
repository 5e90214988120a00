//! API keys: created once and shown once, stored as SHA-256 hashes (the keys are 256-bit random,
//! so a fast hash is enough), looked up by hash, revocable. The [`Tenant`] extractor turns a
//! `Authorization: Bearer` header into the tenant every management route is scoped to.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::Engine;
use sha2::{Digest, Sha256};
use sqlx::SqlitePool;

use crate::app::App;
use crate::error::ApiError;

/// The tenant of an authenticated request.
#[derive(Debug, Clone)]
pub struct Tenant(pub String);

/// `hex(sha256(key))`.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// 32 bytes from the operating system's CSPRNG, base64url.
///
/// # Errors
/// If the OS has no randomness to give.
pub fn random_token() -> Result<String, getrandom::Error> {
    let mut buf = [0u8; 32];
    getrandom::fill(&mut buf)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buf))
}

/// A tenant name: lowercase letters, digits, `_` and `-`, 1–64 characters (it becomes part of
/// object keys).
pub fn valid_tenant(t: &str) -> bool {
    !t.is_empty() && t.len() <= 64 && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Creates an API key for `tenant`; returns `(id, key)`. The key is not stored and cannot be
/// shown again.
///
/// # Errors
/// Database failures or an invalid tenant name.
pub async fn create_key(pool: &SqlitePool, tenant: &str, name: Option<&str>) -> anyhow::Result<(String, String)> {
    anyhow::ensure!(valid_tenant(tenant), "tenant `{tenant}`: use 1-64 lowercase letters, digits, '_' or '-'");
    let key = format!("ak_{}", random_token()?);
    let id = uuid::Uuid::now_v7().to_string();
    sqlx::query("INSERT INTO api_keys (id, tenant, name, key_hash, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(&id)
        .bind(tenant)
        .bind(name)
        .bind(hash_key(&key))
        .bind(crate::files::ms(time::OffsetDateTime::now_utc()))
        .execute(pool)
        .await?;
    Ok((id, key))
}

/// Revokes a key by id; returns whether it existed and was active.
///
/// # Errors
/// Database failures.
pub async fn revoke_key(pool: &SqlitePool, id: &str) -> anyhow::Result<bool> {
    let n = sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
        .bind(id)
        .bind(crate::files::ms(time::OffsetDateTime::now_utc()))
        .execute(pool)
        .await?
        .rows_affected();
    Ok(n > 0)
}

/// A secret generated on first use and kept in the database (e.g. the URL signing key).
///
/// # Errors
/// Database failures.
pub async fn stored_secret(pool: &SqlitePool, name: &str) -> anyhow::Result<String> {
    let fresh = random_token()?;
    sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING").bind(name).bind(&fresh).execute(pool).await?;
    Ok(sqlx::query_scalar("SELECT value FROM settings WHERE key = $1").bind(name).fetch_one(pool).await?)
}

impl FromRequestParts<App> for Tenant {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).ok_or_else(ApiError::unauthorized)?;
        let key = header.strip_prefix("Bearer ").map(str::trim).filter(|k| !k.is_empty()).ok_or_else(ApiError::unauthorized)?;
        let hash = hash_key(key);
        let tenant = if app.bootstrap_key_hash.as_deref().is_some_and(|boot| constant_time_eq(boot.as_bytes(), hash.as_bytes())) {
            "default".to_owned()
        } else {
            let tenant: Option<String> = sqlx::query_scalar("SELECT tenant FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL")
                .bind(&hash)
                .fetch_optional(app.bus.pool())
                .await?;
            tenant.ok_or_else(ApiError::unauthorized)?
        };
        if let Err(wait) = app.limiter.check(&hash) {
            let mut e = ApiError::new(axum::http::StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many requests for this API key; slow down");
            e.retry_after = Some(wait);
            return Err(e);
        }
        Ok(Tenant(tenant))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
