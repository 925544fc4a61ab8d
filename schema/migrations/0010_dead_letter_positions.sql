-- Where each dead letter landed on device-data.dlq (recorded with published_at), so that a
-- letter a crash left unconfirmed is looked for on the DLQ from there on instead of being
-- published twice (sinks/dead_letter_outbox.py, sinks/dead_letter_search.py).
ALTER TABLE dead_letters
    ADD COLUMN IF NOT EXISTS dlq_partition integer,
    ADD COLUMN IF NOT EXISTS dlq_offset    bigint;
CREATE INDEX IF NOT EXISTS dead_letters_published ON dead_letters (published_at)
    WHERE published_at IS NOT NULL;
