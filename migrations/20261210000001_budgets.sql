-- Budgets. A month's spend is read from `requests` (cost_pusd of every call, every purpose, by the
-- tier that answered, at the price it was recorded with); these tables hold what an operator
-- changed and what was announced.
--
-- One row per correction of a month's spend (`tierwise budget reset|adjust`, or
-- `POST /admin/api/budgets/adjust`): what was added (negative lowers it), what the spend was just
-- before, why and by whom. Rows are only ever added: the audit trail of every change.
CREATE TABLE IF NOT EXISTS budget_adjustments (
    id                TEXT PRIMARY KEY,
    ts_ms             BIGINT NOT NULL,
    month             TEXT NOT NULL,
    scope             TEXT NOT NULL,
    name              TEXT NOT NULL,
    kind              TEXT NOT NULL,
    delta_pusd        BIGINT NOT NULL,
    spent_before_pusd BIGINT NOT NULL,
    reason            TEXT NOT NULL,
    actor             TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS budget_adjustments_month ON budget_adjustments (month, scope, name);

-- The alerts announced, one per budget, month and level (`alert_at` or `spent`): the replica that
-- stores the row announces it, so a budget alerts once a month whatever the replicas or restarts.
CREATE TABLE IF NOT EXISTS budget_alerts (
    month       TEXT NOT NULL,
    scope       TEXT NOT NULL,
    name        TEXT NOT NULL,
    level       TEXT NOT NULL,
    ts_ms       BIGINT NOT NULL,
    spent_pusd  BIGINT NOT NULL,
    limit_pusd  BIGINT NOT NULL,
    PRIMARY KEY (month, scope, name, level)
);
