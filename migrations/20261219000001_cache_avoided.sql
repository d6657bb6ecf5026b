-- A request answered from a route's response cache (purpose 'cache_hit') costs nothing; this is
-- what the call that filled the cache cost, which the hit did not pay again. Reports show it as
-- "saved by the cache", apart from routing's savings against the baseline. NULL on every other row.
ALTER TABLE requests ADD COLUMN avoided_pusd BIGINT;
