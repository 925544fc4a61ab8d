-- pg_stat_statements (the top statements of /pipeline/db), where the server preloads it.
-- It is not a trusted extension: only a superuser may create it, so the servers' bootstrap
-- does (stack/up.sh, deploy/timescaledb/roles.sh) and this creates it where the migrating
-- role may, saying so where it may not. A server that does not preload the library gets
-- no extension (its view would only raise). The workers' role reads every statement
-- through pg_read_all_stats (pg_monitor).
DO $$
DECLARE
    existed boolean := EXISTS (SELECT FROM pg_extension WHERE extname = 'pg_stat_statements');
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
    BEGIN
        PERFORM 1 FROM pg_stat_statements LIMIT 1;
    EXCEPTION WHEN object_not_in_prerequisite_state THEN
        IF NOT existed THEN
            DROP EXTENSION pg_stat_statements;
        END IF;
        RAISE NOTICE 'pg_stat_statements is not in shared_preload_libraries: not created';
    END;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'pg_stat_statements not created: %', SQLERRM;
END $$;
