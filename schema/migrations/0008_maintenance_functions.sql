-- Least privilege (docs/security.md#roles): the workers' role owns no table, so it cannot run the
-- DDL that storage maintenance needs (drop_chunks, policies, TRUNCATE of a chunk being
-- trimmed, REINDEX, CLUSTER, ANALYZE). These functions run it as their owner, the role
-- that runs the migrations, each limited to the storage hypertables and their chunks.
-- `migrate` grants EXECUTE on them to the workers' role only (schema/roles.py).

-- The hypertable a relation is, or whose chunk it is; an error for anything else.
CREATE FUNCTION storage.storage_hypertable_of(relation regclass) RETURNS regclass
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    found regclass;
BEGIN
    SELECT format('%I.%I', h.hypertable_schema, h.hypertable_name)::regclass INTO found
    FROM timescaledb_information.hypertables h
    WHERE h.hypertable_schema = 'storage'
      AND format('%I.%I', h.hypertable_schema, h.hypertable_name)::regclass = relation;
    IF found IS NULL THEN
        SELECT format('%I.%I', c.hypertable_schema, c.hypertable_name)::regclass INTO found
        FROM timescaledb_information.chunks c
        WHERE c.hypertable_schema = 'storage'
          AND format('%I.%I', c.chunk_schema, c.chunk_name)::regclass = relation;
    END IF;
    IF found IS NULL THEN
        RAISE EXCEPTION 'maintenance refused: % is not a storage hypertable or one of its chunks',
            relation USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN found;
END $$;

CREATE FUNCTION storage.drop_chunks(hypertable regclass, older_than timestamptz,
                                    newer_than timestamptz DEFAULT NULL) RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    IF storage.storage_hypertable_of(hypertable) <> hypertable THEN
        RAISE EXCEPTION '% is a chunk, not a hypertable', hypertable;
    END IF;
    IF newer_than IS NULL THEN
        RETURN QUERY SELECT public.drop_chunks(hypertable, older_than => older_than);
    ELSE
        RETURN QUERY SELECT public.drop_chunks(hypertable, older_than => older_than,
                                               newer_than => newer_than);
    END IF;
END $$;

-- Timescale license: the hypertable's retention policy set to drop_after (NULL: removed).
CREATE FUNCTION storage.replace_retention_policy(hypertable regclass, drop_after interval)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    PERFORM storage.storage_hypertable_of(hypertable);
    PERFORM public.remove_retention_policy(hypertable, if_exists => true);
    IF drop_after IS NOT NULL THEN
        PERFORM public.add_retention_policy(hypertable, drop_after => drop_after);
    END IF;
END $$;

-- Timescale license: compression on (segment by series_id, newest first) and the policy at
-- compress_after.
CREATE FUNCTION storage.replace_compression_policy(hypertable regclass,
                                                   compress_after interval) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    time_column text := CASE WHEN hypertable = 'storage.readings'::regclass THEN 'time'
                             ELSE 'bucket' END;
BEGIN
    PERFORM storage.storage_hypertable_of(hypertable);
    IF NOT (SELECT h.compression_enabled FROM timescaledb_information.hypertables h
            WHERE format('%I.%I', h.hypertable_schema, h.hypertable_name)::regclass = hypertable) THEN
        EXECUTE format('ALTER TABLE %s SET (timescaledb.compress, '
                       'timescaledb.compress_segmentby = %L, timescaledb.compress_orderby = %L)',
                       hypertable, 'series_id', time_column || ' DESC');
    END IF;
    PERFORM public.remove_compression_policy(hypertable, if_exists => true);
    PERFORM public.add_compression_policy(hypertable, compress_after => compress_after);
END $$;

-- Trim of an uncompressed raw chunk: only the rows of the series in keep stay. The caller
-- holds the chunk's ACCESS EXCLUSIVE lock (LOCK TABLE, taken before it re-checks that the
-- chunk is not compressed). Returns the rows kept.
CREATE FUNCTION storage.trim_chunk(chunk regclass, keep integer[]) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    kept bigint;
BEGIN
    IF storage.storage_hypertable_of(chunk) <> 'storage.readings'::regclass
       OR chunk = 'storage.readings'::regclass THEN
        RAISE EXCEPTION '% is not a chunk of storage.readings', chunk;
    END IF;
    DROP TABLE IF EXISTS pg_temp.trim_keep;
    CREATE TEMP TABLE trim_keep (LIKE storage.readings) ON COMMIT DROP;
    EXECUTE format('INSERT INTO pg_temp.trim_keep SELECT * FROM %s WHERE series_id = ANY($1)',
                   chunk) USING keep;
    GET DIAGNOSTICS kept = ROW_COUNT;
    EXECUTE format('TRUNCATE %s', chunk);
    IF kept > 0 THEN
        EXECUTE format('INSERT INTO %s SELECT * FROM pg_temp.trim_keep ORDER BY series_id, time',
                       chunk);
    END IF;
    RETURN kept;
END $$;

-- Index compaction of a closed raw chunk: its unique index rebuilt packed (fillfactor 100).
-- Not CONCURRENTLY (that cannot run in a function): the chunk's writes and the queries
-- planned on it wait for the rebuild.
CREATE FUNCTION storage.compact_index(index regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    chunk regclass := (SELECT i.indrelid FROM pg_index i WHERE i.indexrelid = index);
BEGIN
    IF chunk IS NULL OR storage.storage_hypertable_of(chunk) <> 'storage.readings'::regclass
       OR chunk = 'storage.readings'::regclass THEN
        RAISE EXCEPTION '% is not an index of a chunk of storage.readings', index;
    END IF;
    EXECUTE format('ALTER INDEX %s SET (fillfactor = 100)', index);
    EXECUTE format('REINDEX INDEX %s', index);
END $$;

-- CLUSTER of a closed storage.readings_1h chunk on its unique index, then ANALYZE.
CREATE FUNCTION storage.cluster_chunk(chunk regclass, index regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    IF storage.storage_hypertable_of(chunk) <> 'storage.readings_1h'::regclass
       OR chunk = 'storage.readings_1h'::regclass
       OR NOT EXISTS (SELECT FROM pg_index i WHERE i.indexrelid = index AND i.indrelid = chunk) THEN
        RAISE EXCEPTION '% is not a chunk of storage.readings_1h with index %', chunk, index;
    END IF;
    EXECUTE format('CLUSTER %s USING %I', chunk,
                   (SELECT relname FROM pg_class WHERE oid = index));
    EXECUTE format('ANALYZE %s', chunk);
END $$;

-- ANALYZE of a storage hypertable or chunk, storage.series or devices.
CREATE FUNCTION storage.analyze(relation regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    IF relation NOT IN ('storage.series'::regclass, 'public.devices'::regclass) THEN
        PERFORM storage.storage_hypertable_of(relation);
    END IF;
    EXECUTE format('ANALYZE %s', relation);
END $$;

REVOKE ALL ON FUNCTION storage.storage_hypertable_of(regclass),
    storage.drop_chunks(regclass, timestamptz, timestamptz),
    storage.replace_retention_policy(regclass, interval),
    storage.replace_compression_policy(regclass, interval),
    storage.trim_chunk(regclass, integer[]),
    storage.compact_index(regclass),
    storage.cluster_chunk(regclass, regclass),
    storage.analyze(regclass)
FROM PUBLIC;

-- Rebuilds are no longer CONCURRENTLY: the invalid "_ccnew" copies an interrupted one left
-- would stay forever.
DO $$
DECLARE
    leftover text;
BEGIN
    FOR leftover IN
        SELECT format('%I.%I', n.nspname, ic.relname)
        FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = ic.relnamespace
        JOIN timescaledb_information.chunks c
          ON i.indrelid = format('%I.%I', c.chunk_schema, c.chunk_name)::regclass
        WHERE c.hypertable_schema = 'storage' AND NOT i.indisvalid
          AND ic.relname LIKE '%\_ccnew%'
    LOOP
        EXECUTE 'DROP INDEX ' || leftover;
    END LOOP;
END $$;
