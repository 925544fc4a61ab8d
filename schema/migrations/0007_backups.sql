-- The backups taken of this database, as the backup tools record them after each success
-- (stack/backup.sh, deploy/pgbackrest/backup-daily.sh). The worker reads the newest one for
-- /pipeline/db and the devicestream_db_last_backup_timestamp_seconds metric, so a backup
-- that stopped happening alerts (BackupTooOld). pgBackRest's repository stays the truth of
-- what can be restored: a row outlives the expiry of its backup.
CREATE TABLE IF NOT EXISTS storage.backups (
    label          text        PRIMARY KEY,  -- pgBackRest's backup label
    type           text        NOT NULL CHECK (type IN ('full', 'diff', 'incr')),
    started_at     timestamptz NOT NULL,
    finished_at    timestamptz NOT NULL,
    database_bytes bigint      NOT NULL,     -- size of the cluster backed up
    stored_bytes   bigint      NOT NULL      -- what this backup added to the repository
);
CREATE INDEX IF NOT EXISTS backups_finished ON storage.backups (finished_at);
