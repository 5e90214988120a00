-- The upload domain. Times are unix milliseconds.
CREATE TABLE files (
    id                 TEXT    PRIMARY KEY,      -- UUIDv7: time-ordered, the list cursor
    tenant             TEXT    NOT NULL,
    kind               TEXT    NOT NULL,
    status             TEXT    NOT NULL,
    filename           TEXT    NOT NULL,         -- sanitised; never a storage path
    declared_type      TEXT,
    declared_size      INTEGER,
    detected_type      TEXT,
    bytes              INTEGER,
    sha256             TEXT,
    user_id            TEXT,
    metadata           TEXT    NOT NULL DEFAULT '{}',
    scan               TEXT,
    reason             TEXT,
    reason_detail      TEXT,
    variants           TEXT    NOT NULL DEFAULT '[]',
    quarantine_key     TEXT,
    object_key         TEXT,
    max_bytes          INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,
    correlation_id     TEXT    NOT NULL,
    traceparent        TEXT,
    requested_event_id TEXT    NOT NULL,
    created_at         INTEGER NOT NULL,
    updated_at         INTEGER NOT NULL
);
CREATE INDEX files_tenant ON files (tenant, id);
CREATE INDEX files_tenant_user ON files (tenant, user_id, id);

-- API keys, stored as SHA-256 of the (high-entropy) key: a leaked table grants nothing.
CREATE TABLE api_keys (
    id         TEXT    PRIMARY KEY,
    tenant     TEXT    NOT NULL,
    name       TEXT,
    key_hash   TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

-- Generated secrets and other process-wide settings.
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
