-- Quality checks. A shadow or eval call is a request row of its own, priced like any other, with a
-- purpose that keeps it apart from product traffic; the row of a shadow check that was scored holds
-- the product request it checked, the candidate tier judged and the agreement in parts per million.
ALTER TABLE requests ADD COLUMN purpose TEXT NOT NULL DEFAULT 'product';
ALTER TABLE requests ADD COLUMN sample_of TEXT;
ALTER TABLE requests ADD COLUMN candidate TEXT;
ALTER TABLE requests ADD COLUMN agreement_ppm BIGINT;
CREATE INDEX IF NOT EXISTS requests_samples ON requests (route, candidate, ts_ms);

-- Each route's monitor episodes and tier switches, in order: the state replicas share. Two replicas
-- that see the same change both write sequence number n; the one that lands announces it.
CREATE TABLE IF NOT EXISTS quality_events (
    route         TEXT NOT NULL,
    candidate     TEXT NOT NULL,
    seq           BIGINT NOT NULL,
    ts_ms         BIGINT NOT NULL,
    event         TEXT NOT NULL,
    model         TEXT NOT NULL,
    agreement_ppm BIGINT NOT NULL,
    low_ppm       BIGINT NOT NULL,
    high_ppm      BIGINT NOT NULL,
    samples       BIGINT NOT NULL,
    PRIMARY KEY (route, candidate, seq)
);

-- Ground truth sent by the application for a request it was answered (`POST /v1/feedback`).
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT PRIMARY KEY,
    ts_ms      BIGINT NOT NULL,
    truth      TEXT NOT NULL
);
