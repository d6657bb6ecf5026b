-- The name of the client key a request came with (`[keys.NAME]`), for `tierwise report --by key`;
-- the key itself is never stored, and `client_key` keeps its fingerprint. One file for both
-- databases.
ALTER TABLE requests ADD COLUMN key_name TEXT;
