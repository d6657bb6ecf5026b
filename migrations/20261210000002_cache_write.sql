-- Input written to a provider's prompt cache (Anthropic's cache_creation_input_tokens), which is
-- billed at its own price: kept beside tokens_cached (cache reads) so that a row's cost can be
-- checked against its tokens. Counted in tokens_in, as cache reads are.
ALTER TABLE requests ADD COLUMN tokens_cache_write BIGINT NOT NULL DEFAULT 0;
