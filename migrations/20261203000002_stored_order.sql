-- The order rows were stored in, which only grows: the quality monitor's window is the latest
-- scored samples by this order, not by ts_ms, so that rows a clock dated in the future (a clock
-- that jumped ahead, then back) are not "the latest" until that future comes. SQLite numbers every
-- row already (rowid), and tierwise reads that there; PostgreSQL numbers them in this column. One
-- file for both databases: SQLite accepts the type name and leaves this column empty.
ALTER TABLE requests ADD COLUMN stored_seq BIGSERIAL;
