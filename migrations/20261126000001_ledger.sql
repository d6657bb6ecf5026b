-- The ledger: one row per request, one per attempt. Portable SQL: the same file migrates SQLite
-- and PostgreSQL. Money is whole picodollars (10^-12 USD); times are Unix milliseconds; flags are 0/1.
CREATE TABLE IF NOT EXISTS requests (
    id               TEXT PRIMARY KEY,
    ts_ms            BIGINT NOT NULL,
    endpoint         TEXT NOT NULL,
    route            TEXT,
    tier             TEXT,
    provider         TEXT,
    model            TEXT,
    status           INTEGER NOT NULL,
    error_kind       TEXT,
    fallback         TEXT,
    stream           INTEGER NOT NULL,
    tokens_in        BIGINT NOT NULL,
    tokens_cached    BIGINT NOT NULL,
    tokens_out       BIGINT NOT NULL,
    tokens_estimated INTEGER NOT NULL,
    latency_us       BIGINT NOT NULL,
    ttfb_us          BIGINT,
    cost_pusd        BIGINT,
    baseline_pusd    BIGINT,
    local            INTEGER NOT NULL,
    client_key       TEXT,
    contract         TEXT,
    prompt           TEXT,
    answer           TEXT
);
CREATE INDEX IF NOT EXISTS requests_ts ON requests (ts_ms);
CREATE INDEX IF NOT EXISTS requests_route_ts ON requests (route, ts_ms);

CREATE TABLE IF NOT EXISTS attempts (
    request_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    tier       TEXT NOT NULL,
    provider   TEXT NOT NULL,
    model      TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    latency_us BIGINT NOT NULL,
    PRIMARY KEY (request_id, seq)
);
