-- Downsampled readings: one row per device, metric and event-time bucket (time_bucket
-- alignment). The ingest sink folds each batch's newly inserted points into both tables in
-- the same transaction as the raw insert (count and sum add up, min and max widen), so a
-- row always equals what SQL computes from `readings` for its bucket, whatever the order,
-- lateness or repetition of the readings.
CREATE TABLE IF NOT EXISTS readings_1m (
    bucket    timestamptz      NOT NULL,
    device_id text             NOT NULL,
    metric    text             NOT NULL,
    count     bigint           NOT NULL,
    sum       double precision NOT NULL,
    min       double precision NOT NULL,
    max       double precision NOT NULL
);
SELECT create_hypertable('readings_1m', 'bucket', chunk_time_interval => interval '7 days',
                         create_default_indexes => false, if_not_exists => true);
CREATE UNIQUE INDEX IF NOT EXISTS readings_1m_device_metric_bucket
    ON readings_1m (device_id, metric, bucket DESC);

CREATE TABLE IF NOT EXISTS readings_1h (
    bucket    timestamptz      NOT NULL,
    device_id text             NOT NULL,
    metric    text             NOT NULL,
    count     bigint           NOT NULL,
    sum       double precision NOT NULL,
    min       double precision NOT NULL,
    max       double precision NOT NULL
);
SELECT create_hypertable('readings_1h', 'bucket', chunk_time_interval => interval '30 days',
                         create_default_indexes => false, if_not_exists => true);
CREATE UNIQUE INDEX IF NOT EXISTS readings_1h_device_metric_bucket
    ON readings_1h (device_id, metric, bucket DESC);

-- Aggregates of readings stored before this migration.
INSERT INTO readings_1m (bucket, device_id, metric, count, sum, min, max)
SELECT time_bucket('1 minute', time), device_id, metric, count(*), sum(value), min(value), max(value)
FROM readings GROUP BY 1, 2, 3
ON CONFLICT DO NOTHING;
INSERT INTO readings_1h (bucket, device_id, metric, count, sum, min, max)
SELECT time_bucket('1 hour', time), device_id, metric, count(*), sum(value), min(value), max(value)
FROM readings GROUP BY 1, 2, 3
ON CONFLICT DO NOTHING;
