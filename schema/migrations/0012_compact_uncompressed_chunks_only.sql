-- Index compaction rebuilds the unique index of an uncompressed raw chunk only, and says
-- whether it did. The compression policy may compress a chunk between maintenance listing
-- it and the rebuild: the rows then live in the compressed chunk, and TimescaleDB
-- decompresses them all to rebuild the index (undoing the compression, or failing at
-- max_tuples_decompressed_per_dml_transaction). Checked under the lock the rebuild needs,
-- which compress_chunk waits for.
DROP FUNCTION storage.compact_index(regclass);

CREATE FUNCTION storage.compact_index(index regclass) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    chunk regclass := (SELECT i.indrelid FROM pg_index i WHERE i.indexrelid = index);
BEGIN
    IF chunk IS NULL OR storage.storage_hypertable_of(chunk) <> 'storage.readings'::regclass
       OR chunk = 'storage.readings'::regclass THEN
        RAISE EXCEPTION '% is not an index of a chunk of storage.readings', index;
    END IF;
    EXECUTE format('LOCK TABLE %s IN SHARE MODE', chunk);
    IF EXISTS (SELECT FROM timescaledb_information.chunks c
               WHERE format('%I.%I', c.chunk_schema, c.chunk_name)::regclass = chunk
                 AND c.is_compressed) THEN
        RETURN false;
    END IF;
    EXECUTE format('ALTER INDEX %s SET (fillfactor = 100)', index);
    EXECUTE format('REINDEX INDEX %s', index);
    RETURN true;
END $$;

REVOKE ALL ON FUNCTION storage.compact_index(regclass) FROM PUBLIC;
