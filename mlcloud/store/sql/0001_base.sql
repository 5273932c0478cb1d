-- 0001: jobs, their events, endpoints and the model versions deploys recorded.
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    provider TEXT NOT NULL,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    native_id TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    exit_code INTEGER,
    message TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    outputs TEXT NOT NULL DEFAULT '{}',
    details TEXT NOT NULL DEFAULT '{}',
    spec TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS jobs_by_provider ON jobs (provider, created_at);
CREATE TABLE IF NOT EXISTS job_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    ts REAL NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER,
    exit_code INTEGER,
    message TEXT
);
CREATE INDEX IF NOT EXISTS events_by_job ON job_events (job_id, seq);
CREATE TABLE IF NOT EXISTS endpoints (
    name TEXT NOT NULL,
    provider TEXT NOT NULL,
    type TEXT NOT NULL,
    state TEXT NOT NULL,
    url TEXT,
    model TEXT,
    model_sha256 TEXT,
    source_job TEXT,
    native_id TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    message TEXT,
    details TEXT NOT NULL DEFAULT '{}',
    spec TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (name, provider)
);
CREATE TABLE IF NOT EXISTS models (
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    uri TEXT NOT NULL,
    sha256 TEXT,
    framework TEXT,
    source_job TEXT,
    created_at REAL NOT NULL,
    details TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (name, version)
);
