-- 0006: drift monitoring (mlcloud.monitor.alerts): per endpoint, when it was last checked and
-- the drift episode it is in (the firing that episode started, so one episode starts one
-- retraining), and every scheduled check's outcome.
CREATE TABLE IF NOT EXISTS monitor_state (
    endpoint TEXT NOT NULL,
    provider TEXT NOT NULL,
    last_check REAL,
    model TEXT,
    drifting INTEGER NOT NULL DEFAULT 0,
    episode_started REAL,
    last_fired REAL,
    fired_pipeline TEXT,
    fired_id TEXT,
    PRIMARY KEY (endpoint, provider)
);
CREATE TABLE IF NOT EXISTS monitor_checks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint TEXT NOT NULL,
    provider TEXT NOT NULL,
    checked_at REAL NOT NULL,
    model TEXT,
    rows INTEGER NOT NULL,
    drifted TEXT NOT NULL,
    action TEXT NOT NULL,
    message TEXT
);
CREATE INDEX IF NOT EXISTS monitor_checks_by_endpoint ON monitor_checks (endpoint, provider, checked_at);
