-- Responses kept for their next turn (`store`, `previous_response_id`) and for
-- `GET /v1/responses/{id}`, with `[responses] store = true`. One row per response: `scope` is the
-- client key's fingerprint ('' with no client keys), so one key never reads another's; `input` is
-- every input item the response answered (the turns before it expanded), `response` the response
-- object as kept, both JSON text. Rows older than `responses.retention` are deleted in the
-- background.
CREATE TABLE responses (
    id TEXT PRIMARY KEY,
    scope TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    request_id TEXT NOT NULL,
    input TEXT NOT NULL,
    response TEXT NOT NULL
);
CREATE INDEX responses_created ON responses (created_ms);
