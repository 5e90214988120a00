//! The upload domain's state: a file's record, its status machine and quarantine reasons, and
//! the SQL that reads and changes it (always inside a caller's transaction when it writes, so
//! the change and its events commit together).

use serde::Serialize;
use serde_json::Value;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use time::OffsetDateTime;
use uuid::Uuid;

/// Where a file is in its life. `pending → uploaded → validating → promoted | quarantined`;
/// `pending → expired`; any → `deleted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pending,
    Uploaded,
    Validating,
    Promoted,
    Quarantined,
    Expired,
    Deleted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Uploaded => "uploaded",
            Status::Validating => "validating",
            Status::Promoted => "promoted",
            Status::Quarantined => "quarantined",
            Status::Expired => "expired",
            Status::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Some(match s {
            "pending" => Status::Pending,
            "uploaded" => Status::Uploaded,
            "validating" => Status::Validating,
            "promoted" => Status::Promoted,
            "quarantined" => Status::Quarantined,
            "expired" => Status::Expired,
            "deleted" => Status::Deleted,
            _ => return None,
        })
    }

    /// The statuses a file may move to `self` from.
    pub fn allowed_from(self) -> &'static [Status] {
        use Status::*;
        match self {
            Pending => &[],
            Uploaded => &[Pending],
            Validating => &[Uploaded],
            Promoted | Quarantined => &[Validating],
            Expired => &[Pending],
            Deleted => &[Pending, Uploaded, Validating, Promoted, Quarantined, Expired],
        }
    }
}

/// Why a file was quarantined: stable codes (CONTRACT §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuarantineReason {
    TooLarge,
    TypeNotAllowed,
    TypeMismatch,
    Infected,
    Corrupt,
    DimensionsExceeded,
    ActiveContent,
    ScanFailed,
    ProcessingTimeout,
}

impl QuarantineReason {
    pub fn code(self) -> &'static str {
        match self {
            QuarantineReason::TooLarge => "too_large",
            QuarantineReason::TypeNotAllowed => "type_not_allowed",
            QuarantineReason::TypeMismatch => "type_mismatch",
            QuarantineReason::Infected => "infected",
            QuarantineReason::Corrupt => "corrupt",
            QuarantineReason::DimensionsExceeded => "dimensions_exceeded",
            QuarantineReason::ActiveContent => "active_content",
            QuarantineReason::ScanFailed => "scan_failed",
            QuarantineReason::ProcessingTimeout => "processing_timeout",
        }
    }
}

/// A file's record.
#[derive(Debug, Clone)]
pub struct FileRecord {
    pub id: Uuid,
    pub tenant: String,
    pub kind: String,
    pub status: Status,
    pub filename: String,
    pub declared_type: Option<String>,
    pub declared_size: Option<i64>,
    pub detected_type: Option<String>,
    pub bytes: Option<i64>,
    pub sha256: Option<String>,
    pub user_id: Option<String>,
    pub metadata: Value,
    pub scan: Option<Value>,
    pub reason: Option<String>,
    pub reason_detail: Option<String>,
    pub variants: Value,
    /// Object key of the uploaded bytes while in quarantine.
    pub quarantine_key: Option<String>,
    /// Object key of the promoted bytes.
    pub object_key: Option<String>,
    pub max_bytes: i64,
    pub expires_at: OffsetDateTime,
    pub correlation_id: String,
    pub traceparent: Option<String>,
    /// The `upload.requested` event: the cause of `file.uploaded`.
    pub requested_event_id: Uuid,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

pub(crate) fn ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

pub(crate) fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn uuid(s: &str) -> Result<Uuid, sqlx::Error> {
    Uuid::parse_str(s).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn json(s: Option<String>) -> Result<Option<Value>, sqlx::Error> {
    s.map(|s| serde_json::from_str(&s)).transpose().map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

impl FileRecord {
    fn from_row(r: &SqliteRow) -> Result<FileRecord, sqlx::Error> {
        let status: String = r.try_get("status")?;
        Ok(FileRecord {
            id: uuid(r.try_get("id")?)?,
            tenant: r.try_get("tenant")?,
            kind: r.try_get("kind")?,
            status: Status::parse(&status).ok_or_else(|| sqlx::Error::Decode(format!("unknown status {status}").into()))?,
            filename: r.try_get("filename")?,
            declared_type: r.try_get("declared_type")?,
            declared_size: r.try_get("declared_size")?,
            detected_type: r.try_get("detected_type")?,
            bytes: r.try_get("bytes")?,
            sha256: r.try_get("sha256")?,
            user_id: r.try_get("user_id")?,
            metadata: json(r.try_get("metadata")?)?.unwrap_or(Value::Null),
            scan: json(r.try_get("scan")?)?,
            reason: r.try_get("reason")?,
            reason_detail: r.try_get("reason_detail")?,
            variants: json(r.try_get("variants")?)?.unwrap_or(Value::Array(vec![])),
            quarantine_key: r.try_get("quarantine_key")?,
            object_key: r.try_get("object_key")?,
            max_bytes: r.try_get("max_bytes")?,
            expires_at: from_ms(r.try_get("expires_at")?),
            correlation_id: r.try_get("correlation_id")?,
            traceparent: r.try_get("traceparent")?,
            requested_event_id: uuid(r.try_get("requested_event_id")?)?,
            created_at: from_ms(r.try_get("created_at")?),
            updated_at: from_ms(r.try_get("updated_at")?),
        })
    }

    /// The record as the API shows it (CONTRACT §3 `GET /v1/files/{id}`).
    pub fn to_api(&self) -> Value {
        let mut v = serde_json::json!({
            "file_id": self.id, "kind": self.kind, "status": self.status, "filename": self.filename,
            "declared_type": self.declared_type, "detected_type": self.detected_type, "bytes": self.bytes,
            "sha256": self.sha256, "user_id": self.user_id, "metadata": self.metadata,
            "scan": self.scan.clone().unwrap_or(Value::Null), "variants": self.variants,
            "created_at": airlock_events::envelope::format_rfc3339(self.created_at),
            "updated_at": airlock_events::envelope::format_rfc3339(self.updated_at),
            "expires_at": airlock_events::envelope::format_rfc3339(self.expires_at),
            "correlation_id": self.correlation_id,
        });
        if let Some(reason) = &self.reason {
            v["reason"] = reason.clone().into();
            v["reason_detail"] = self.reason_detail.clone().into();
        }
        v
    }
}

/// A new pending file.
pub struct NewFile<'a> {
    pub id: Uuid,
    pub tenant: &'a str,
    pub kind: &'a str,
    pub filename: &'a str,
    pub declared_type: Option<&'a str>,
    pub declared_size: Option<i64>,
    pub user_id: Option<&'a str>,
    pub metadata: &'a Value,
    pub max_bytes: i64,
    pub expires_at: OffsetDateTime,
    pub correlation_id: &'a str,
    pub traceparent: Option<&'a str>,
    pub requested_event_id: Uuid,
}

/// Inserts a pending file.
///
/// # Errors
/// Database failures.
pub async fn insert(conn: &mut SqliteConnection, f: &NewFile<'_>) -> Result<(), sqlx::Error> {
    let now = ms(OffsetDateTime::now_utc());
    sqlx::query(
        "INSERT INTO files (id, tenant, kind, status, filename, declared_type, declared_size, user_id, metadata, max_bytes,
                            expires_at, correlation_id, traceparent, requested_event_id, created_at, updated_at)
         VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14)",
    )
    .bind(f.id.to_string())
    .bind(f.tenant)
    .bind(f.kind)
    .bind(f.filename)
    .bind(f.declared_type)
    .bind(f.declared_size)
    .bind(f.user_id)
    .bind(f.metadata.to_string())
    .bind(f.max_bytes)
    .bind(ms(f.expires_at))
    .bind(f.correlation_id)
    .bind(f.traceparent)
    .bind(f.requested_event_id.to_string())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// A file by id, in any tenant (for signed-URL routes and workers).
///
/// # Errors
/// Database failures.
pub async fn get<'c, E: sqlx::SqliteExecutor<'c>>(exec: E, id: Uuid) -> Result<Option<FileRecord>, sqlx::Error> {
    let row = sqlx::query("SELECT * FROM files WHERE id = $1").bind(id.to_string()).fetch_optional(exec).await?;
    row.as_ref().map(FileRecord::from_row).transpose()
}

/// A file by id within a tenant: another tenant's file does not exist.
///
/// # Errors
/// Database failures.
pub async fn get_for_tenant<'c, E: sqlx::SqliteExecutor<'c>>(exec: E, tenant: &str, id: Uuid) -> Result<Option<FileRecord>, sqlx::Error> {
    let row = sqlx::query("SELECT * FROM files WHERE id = $1 AND tenant = $2").bind(id.to_string()).bind(tenant).fetch_optional(exec).await?;
    row.as_ref().map(FileRecord::from_row).transpose()
}

/// Filters of the file list.
#[derive(Debug, Default)]
pub struct ListQuery {
    pub user_id: Option<String>,
    pub status: Option<String>,
    pub kind: Option<String>,
    /// Only files with an id below this one (newest first).
    pub before: Option<Uuid>,
    pub limit: i64,
}

/// A tenant's files, newest first.
///
/// # Errors
/// Database failures.
pub async fn list<'c, E: sqlx::SqliteExecutor<'c>>(exec: E, tenant: &str, q: &ListQuery) -> Result<Vec<FileRecord>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT * FROM files WHERE tenant = $1 AND ($2 IS NULL OR user_id = $2) AND ($3 IS NULL OR status = $3)
           AND ($4 IS NULL OR kind = $4) AND ($5 IS NULL OR id < $5)
         ORDER BY id DESC LIMIT $6",
    )
    .bind(tenant)
    .bind(q.user_id.as_deref())
    .bind(q.status.as_deref())
    .bind(q.kind.as_deref())
    .bind(q.before.map(|u| u.to_string()))
    .bind(q.limit)
    .fetch_all(exec)
    .await?;
    rows.iter().map(FileRecord::from_row).collect()
}

/// What a status change also sets.
#[derive(Debug, Default)]
pub struct Changes<'a> {
    pub bytes: Option<i64>,
    pub sha256: Option<&'a str>,
    pub detected_type: Option<&'a str>,
    pub scan: Option<&'a Value>,
    pub reason: Option<(&'a str, &'a str)>,
    pub quarantine_key: Option<&'a str>,
    pub object_key: Option<&'a str>,
}

/// Moves a file to `to` if it is in a status `to` may follow; returns whether it moved.
/// The guard makes every worker's transition safe against races and redeliveries.
///
/// # Errors
/// Database failures.
pub async fn transition(conn: &mut SqliteConnection, id: Uuid, to: Status, c: &Changes<'_>) -> Result<bool, sqlx::Error> {
    let from: Vec<&str> = to.allowed_from().iter().map(|s| s.as_str()).collect();
    let n = sqlx::query(
        "UPDATE files SET status = $2, updated_at = $3,
            bytes = COALESCE($4, bytes), sha256 = COALESCE($5, sha256), detected_type = COALESCE($6, detected_type),
            scan = COALESCE($7, scan), reason = COALESCE($8, reason), reason_detail = COALESCE($9, reason_detail),
            quarantine_key = COALESCE($10, quarantine_key), object_key = COALESCE($11, object_key)
         WHERE id = $1 AND status IN (SELECT value FROM json_each($12))",
    )
    .bind(id.to_string())
    .bind(to.as_str())
    .bind(ms(OffsetDateTime::now_utc()))
    .bind(c.bytes)
    .bind(c.sha256)
    .bind(c.detected_type)
    .bind(c.scan.map(Value::to_string))
    .bind(c.reason.map(|r| r.0))
    .bind(c.reason.map(|r| r.1))
    .bind(c.quarantine_key)
    .bind(c.object_key)
    .bind(serde_json::to_string(&from).unwrap_or_default())
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n > 0)
}

/// Applies the upload domain's migrations (versions 1000 and up).
///
/// # Errors
/// Migration failures.
pub async fn migrate(pool: &sqlx::SqlitePool) -> Result<(), airlock_events::EventError> {
    airlock_events::db::migrator(&[
        (1000, "files", include_str!("../migrations/sqlite/1000_files.sql")),
        (1001, "webhooks", include_str!("../migrations/sqlite/1001_webhooks.sql")),
    ])
    .run(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_machine_allows_only_the_contract_moves() {
        assert_eq!(Status::Uploaded.allowed_from(), &[Status::Pending]);
        assert!(Status::Promoted.allowed_from() == [Status::Validating]);
        assert!(!Status::Promoted.allowed_from().contains(&Status::Quarantined));
        assert!(Status::Deleted.allowed_from().contains(&Status::Promoted));
        assert!(!Status::Deleted.allowed_from().contains(&Status::Deleted));
        for s in ["pending", "uploaded", "validating", "promoted", "quarantined", "expired", "deleted"] {
            assert_eq!(Status::parse(s).map(Status::as_str), Some(s));
        }
    }
}
