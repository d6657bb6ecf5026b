-- The server of a provider that a request and each attempt went to (a provider may have several,
-- `providers.NAME.servers`): its name as `x-tierwise-provider` gives it, the provider's own name
-- for a provider of one server. NULL on rows written before servers existed, and for attempts
-- passed over without a call.
ALTER TABLE requests ADD COLUMN server TEXT;
ALTER TABLE attempts ADD COLUMN server TEXT;
