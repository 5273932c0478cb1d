-- 0002: the model registry (issue 11). Separate from 0001's `models` table, which stays the
-- deploy log (one row per deploy of an endpoint, written by the providers).
-- One row per registered model name: the version counter (numbers are never reused, even after
-- a version is deleted) and the count of versions kept, both updated inside the transaction that
-- adds or deletes a version (so `models list` reads 100 rows, not 10,000).
CREATE TABLE IF NOT EXISTS registered_models (
    name TEXT PRIMARY KEY,
    last_version INTEGER NOT NULL DEFAULT 0,
    versions INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS model_versions (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    uri TEXT NOT NULL,
    sha256 TEXT,
    framework TEXT,
    source_job TEXT,
    provider TEXT,
    created_by TEXT,
    created_at REAL NOT NULL,
    details TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (name, version)
);
-- deploy-time trust and lineage look a version up by its content or location
CREATE INDEX IF NOT EXISTS model_versions_by_sha256 ON model_versions (sha256);
CREATE INDEX IF NOT EXISTS model_versions_by_uri ON model_versions (uri);
CREATE TABLE IF NOT EXISTS model_aliases (
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (name, alias)
);
CREATE INDEX IF NOT EXISTS model_aliases_by_version ON model_aliases (name, version);
-- Append-only: the registry inserts here and never updates or deletes (kind: move, rollback,
-- note, create).
CREATE TABLE IF NOT EXISTS alias_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    from_version INTEGER,
    to_version INTEGER,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    reason TEXT,
    kind TEXT NOT NULL DEFAULT 'move'
);
CREATE INDEX IF NOT EXISTS alias_history_by_alias ON alias_history (name, alias, seq);
-- Endpoints deployed with --follow-alias: a move of NAME@ALIAS redeploys them.
CREATE TABLE IF NOT EXISTS model_followers (
    endpoint TEXT NOT NULL,
    provider TEXT NOT NULL,
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    PRIMARY KEY (endpoint, provider)
);
CREATE INDEX IF NOT EXISTS model_followers_by_alias ON model_followers (name, alias);
