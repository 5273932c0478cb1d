-- 0004: canary rollouts (mlcloud.rollouts): one row per rollout with the state its controller
-- resumes from, and every decision it took with the numbers it took it on.
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    model_uri TEXT,
    registry_name TEXT,
    registry_version TEXT,
    canary INTEGER NOT NULL,
    steps TEXT NOT NULL,
    step INTEGER NOT NULL,
    bake_s REAL NOT NULL,
    gate TEXT NOT NULL,
    min_requests INTEGER NOT NULL,
    state TEXT NOT NULL,
    stable_version TEXT,
    canary_version TEXT,
    step_started REAL,
    baseline TEXT,
    last_check TEXT,
    controller TEXT,
    message TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rollouts_by_endpoint ON rollouts (endpoint, provider);
CREATE TABLE IF NOT EXISTS rollout_decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id INTEGER NOT NULL,
    at REAL NOT NULL,
    action TEXT NOT NULL,
    reason TEXT NOT NULL,
    numbers TEXT
);
CREATE INDEX IF NOT EXISTS rollout_decisions_by_rollout ON rollout_decisions (rollout_id, id);
