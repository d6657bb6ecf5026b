-- A budget alert is announced once per level and month — and once more after each correction
-- (`tierwise budget reset|adjust`) that takes the month's spend back under the level: an operator
-- who reset a mispriced month wants to hear when the real spend crosses it again. `armed_after`
-- is how many of the month's corrections of that budget the level was armed again after (0: none),
-- and part of the key. The table is made again, as SQLite cannot change a primary key.
CREATE TABLE budget_alerts_rearmed (
    month       TEXT NOT NULL,
    scope       TEXT NOT NULL,
    name        TEXT NOT NULL,
    level       TEXT NOT NULL,
    ts_ms       BIGINT NOT NULL,
    spent_pusd  BIGINT NOT NULL,
    limit_pusd  BIGINT NOT NULL,
    armed_after BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (month, scope, name, level, armed_after)
);
INSERT INTO budget_alerts_rearmed (month, scope, name, level, ts_ms, spent_pusd, limit_pusd, armed_after)
    SELECT month, scope, name, level, ts_ms, spent_pusd, limit_pusd, 0 FROM budget_alerts;
DROP TABLE budget_alerts;
ALTER TABLE budget_alerts_rearmed RENAME TO budget_alerts;
