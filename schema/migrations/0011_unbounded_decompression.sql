-- Writes to compressed chunks (Timescale license) decompress the batches they touch, and
-- TimescaleDB aborts a transaction that decompresses more than
-- timescaledb.max_tuples_decompressed_per_dml_transaction tuples (100,000 by default).
-- A per-device retention DELETE (or a chunk trim) over a compressed chunk decompresses
-- the device's batches, easily millions of rows, and a sink batch whose unique check
-- decompresses the batches it touches can pass the limit too; the sink would then retry
-- it forever. Decompressed tuples go to the chunk's own table, not memory: the limit
-- only guards against large transactions. Applies to sessions that start after it.
DO $$
BEGIN
    EXECUTE format(
        'ALTER DATABASE %I SET timescaledb.max_tuples_decompressed_per_dml_transaction = 0',
        current_database());
END $$;
