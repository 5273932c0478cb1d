-- 0005: pipelines (mlcloud.pipelines): runs and their steps, the step cache, the scheduled
-- pipelines with their triggers' state, and every firing of a trigger.
CREATE TABLE IF NOT EXISTS pipeline_runs (
    id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    spec TEXT NOT NULL,
    provider TEXT,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    no_cache INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    runner TEXT,
    message TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    ended_at REAL
);
CREATE INDEX IF NOT EXISTS pipeline_runs_by_pipeline ON pipeline_runs (pipeline, created_at);
CREATE TABLE IF NOT EXISTS pipeline_steps (
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    provider TEXT,
    job_id TEXT,
    digest TEXT,
    cached INTEGER NOT NULL DEFAULT 0,
    outputs TEXT NOT NULL DEFAULT '{}',
    message TEXT,
    started_at REAL,
    ended_at REAL,
    PRIMARY KEY (run_id, step)
);
-- A step's outputs by the digest of its spec and inputs: an unchanged step is not run again.
CREATE TABLE IF NOT EXISTS pipeline_cache (
    digest TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    outputs TEXT NOT NULL,
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pipeline_schedules (
    name TEXT PRIMARY KEY,
    file TEXT,
    spec TEXT NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
-- One row per trigger of a scheduled pipeline: what it last saw (a cron time, a digest, an
-- alias history seq), updated in the transaction that records its firing.
CREATE TABLE IF NOT EXISTS pipeline_trigger_state (
    pipeline TEXT NOT NULL,
    idx INTEGER NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (pipeline, idx)
);
-- Every firing, with its reason; `fkey` makes a firing unique (a cron time, a digest, an alias
-- move), so a scheduler killed and restarted never records one twice.
CREATE TABLE IF NOT EXISTS pipeline_firings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline TEXT NOT NULL,
    fkey TEXT NOT NULL,
    kind TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    state TEXT NOT NULL,
    run_id TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS pipeline_firings_unique ON pipeline_firings (pipeline, fkey);
CREATE INDEX IF NOT EXISTS pipeline_firings_by_state ON pipeline_firings (state, pipeline);
