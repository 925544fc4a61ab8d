-- Bookkeeping of the storage maintenance (sinks/maintenance.py): who runs it, what each
-- run did, and what was done to each raw chunk.

-- One run at a time, across workers and the `maintenance` command: a run holds this lease
-- (renewed between steps) and gives it back at the end; a crashed holder's lease expires.
CREATE TABLE IF NOT EXISTS storage.maintenance_lease (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    holder     text        NOT NULL,
    expires_at timestamptz NOT NULL
);

-- The reports of the latest runs (the leader runs again when the newest is older than
-- MAINTENANCE_INTERVAL).
CREATE TABLE IF NOT EXISTS storage.maintenance_runs (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    holder      text        NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    report      jsonb       NOT NULL
);
CREATE INDEX IF NOT EXISTS maintenance_runs_finished ON storage.maintenance_runs (finished_at);

-- Raw chunks whose index was rebuilt packed once closed (compacted_at) and whose rows of
-- devices without a longer retention were removed once past RETENTION_DAYS (trimmed_at).
CREATE TABLE IF NOT EXISTS storage.chunk_maintenance (
    chunk        text        PRIMARY KEY,  -- schema-qualified chunk table name
    compacted_at timestamptz,
    trimmed_at   timestamptz
);
