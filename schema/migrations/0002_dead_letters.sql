-- Outbox of dead letters. A dead letter is recorded here before it is published to
-- device-data.dlq and marked once the broker has it, so a message consumed twice (after a
-- rebalance or a crash) is dead-lettered once. The key is the reading's place in Kafka;
-- the message's timestamp tells a redelivery from a new message at a reused offset (a topic
-- deleted and created again, or the local broker restarted with memory storage).
CREATE TABLE IF NOT EXISTS dead_letters (
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    index        integer     NOT NULL,  -- position in an array message, -1 for the whole message
    message_ms   bigint      NOT NULL,  -- the Kafka message's timestamp, milliseconds
    key          bytea,
    record       bytea       NOT NULL,  -- the JSON published to device-data.dlq
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    PRIMARY KEY (topic, partition, "offset", index, message_ms)
);

CREATE INDEX IF NOT EXISTS dead_letters_unpublished
    ON dead_letters (created_at) WHERE published_at IS NULL;
