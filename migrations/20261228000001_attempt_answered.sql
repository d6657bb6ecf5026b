-- Whether the server an attempt called answered it (1) or failed it (0), as the servers table
-- counts the call: a 4xx or a 429 is the server's answer about the request or the tier's rate,
-- not its failure. NULL for a tier passed over without a call, and on rows written before this
-- column, which the report classifies by their stored reason.
ALTER TABLE attempts ADD COLUMN answered INTEGER;
