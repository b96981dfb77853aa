-- cowclone 0.2.0 -> 0.3.0: clones survive replication, failover and backups.
--
-- The library keeps each clone's record in the catalog (a security label
-- of provider cowclone on the clone's database, in pg_shseclabel) instead
-- of a file in $PGDATA/pg_cowclone, WAL-logs the clone's witness file
-- through its resource manager (ID 150), and puts every pin in force at
-- the end of recovery. Each source's pin holder moves 0.2.0's record files
-- into the catalog when the new library starts. The SQL side only documents the
-- pin state a standby shows.

\echo Use "ALTER EXTENSION cowclone UPDATE TO '0.3.0'" to load this file. \quit

COMMENT ON VIEW cow.clones IS 'Every clone in the cluster: source, clone point, status, and the age and state (source-only, cluster-wide, warning past cow.pin_warn_age, missing, or standby on a server in recovery, where the primary holds it) of its pin';
COMMENT ON VIEW cow.pins IS 'One row per source with clones: whether its pin holds back only the source (source-only, its holder connected), every database (cluster-wide, no holder running) or is the primary''s (standby: this server is in recovery), the holder''s pid, the clone whose clone point holds the horizon, and its age';
