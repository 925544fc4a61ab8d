-- Raw readings: one row per data point, a hypertable in 1-day chunks.
-- The unique index is both the dedupe key (the same device, metric and time is stored once)
-- and the access path for latest-value and time-range queries; TimescaleDB's default
-- time-only index is not created: it costs space and no query of ours needs it.
CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE IF NOT EXISTS readings (
    time      timestamptz      NOT NULL,
    device_id text             NOT NULL,
    metric    text             NOT NULL,
    value     double precision NOT NULL
);

SELECT create_hypertable(
    'readings', 'time',
    chunk_time_interval => interval '1 day',
    create_default_indexes => false,
    if_not_exists => true
);

CREATE UNIQUE INDEX IF NOT EXISTS readings_device_metric_time
    ON readings (device_id, metric, time DESC);

-- One row per device that ever stored a reading; first_seen/last_seen are the event times
-- of its oldest and newest stored readings. retention_days NULL means RETENTION_DAYS.
CREATE TABLE IF NOT EXISTS devices (
    device_id      text        PRIMARY KEY,
    first_seen     timestamptz NOT NULL,
    last_seen      timestamptz NOT NULL,
    retention_days integer     CHECK (retention_days IS NULL OR retention_days > 0)
);
