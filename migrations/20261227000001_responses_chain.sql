-- Kept responses as a chain: each row keeps only its own turn — `input` the items its request
-- sent, `response` its answer — and `previous_id` the response it continued (in the same scope),
-- so a conversation of n turns keeps n turns, not n²/2. A next turn walks the chain back from the
-- response it names. Rows kept before this column existed hold their whole conversation in
-- `input` and have no `previous_id`: they are the start of their chain, and read as before.
ALTER TABLE responses ADD COLUMN previous_id TEXT;
