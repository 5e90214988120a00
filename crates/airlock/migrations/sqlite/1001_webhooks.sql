-- Webhook subscriptions of other teams. Each is backed by a bus subscription named
-- `webhook:<id>` whose filter pins it to its tenant.
CREATE TABLE webhooks (
    id              TEXT    PRIMARY KEY,
    tenant          TEXT    NOT NULL,
    name            TEXT    NOT NULL,
    url             TEXT    NOT NULL,
    event_types     TEXT    NOT NULL,  -- JSON array of `<type>.v<N>`
    filter          TEXT    NOT NULL,  -- JSON object
    secrets         TEXT    NOT NULL,  -- JSON array of whsec_ secrets, newest first (rotation)
    timeout_ms      INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    disabled_at     INTEGER,
    disabled_reason TEXT
);
CREATE INDEX webhooks_tenant ON webhooks (tenant, id);
