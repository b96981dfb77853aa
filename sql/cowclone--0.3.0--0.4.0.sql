-- cowclone 0.3.0 -> 0.4.0: materializing a clone into an ordinary database.
--
-- New: cow.materialize(clone, wait), cow.cancel_materialize(clone),
-- cow.drop_database(db, force), the view cow.materialize_progress, and in
-- cow.clones the status of a materialization (shadowed, materializing,
-- materialized), its progress and when it ended; materialized databases
-- stay listed there (their lineage). cow._clone_records stays for older
-- releases' scripts; the views now read cow._clones.

\echo Use "ALTER EXTENSION cowclone UPDATE TO '0.4.0'" to load this file. \quit

CREATE  FUNCTION cow."materialize"(
	"clone" TEXT, /* Option < & str > */
	"wait" bool DEFAULT true /* bool */
) RETURNS TABLE (
	"clone" TEXT,  /* String */
	"status" TEXT,  /* & '_ str */
	"tables" bigint,  /* i64 */
	"bytes_copied" bigint,  /* i64 */
	"elapsed_ms" double precision  /* f64 */
)
VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'materialize_wrapper';

CREATE  FUNCTION cow."cancel_materialize"(
	"clone" TEXT /* Option < & str > */
) RETURNS bool /* bool */
VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'cancel_materialize_wrapper';

CREATE  FUNCTION cow."drop_database"(
	"db" TEXT, /* Option < & str > */
	"force" bool DEFAULT false /* bool */
) RETURNS void
VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'drop_database_wrapper';

CREATE  FUNCTION cow."_clones"() RETURNS TABLE (
	"clone_oid" oid,  /* pg_sys :: Oid */
	"source_oid" oid,  /* pg_sys :: Oid */
	"source_name" TEXT,  /* String */
	"depth" INT,  /* i32 */
	"status" TEXT,  /* & '_ str */
	"clone_point_lsn" TEXT,  /* String */
	"clone_point_time" timestamp with time zone,  /* TimestampWithTimeZone */
	"created_at" timestamp with time zone,  /* TimestampWithTimeZone */
	"pin" TEXT,  /* Option < String > */
	"pin_age" bigint,  /* Option < i64 > */
	"pin_state" TEXT,  /* Option < & '_ str > */
	"progress" double precision,  /* Option < f64 > */
	"materialized_at" timestamp with time zone  /* Option < TimestampWithTimeZone > */
)
STRICT VOLATILE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'clones_wrapper';

CREATE OR REPLACE VIEW cow.clones AS
SELECT c.clone_oid,
       d.datname AS clone,
       c.source_oid,
       coalesce(s.datname, c.source_name::name) AS source,
       c.depth,
       c.status,
       c.clone_point_time,
       c.clone_point_lsn::pg_lsn AS clone_point_lsn,
       c.created_at,
       c.pin,
       c.pin_age,
       c.pin_state,
       c.progress,
       c.materialized_at
  FROM cow._clones() c
  JOIN pg_database d ON d.oid = c.clone_oid
  LEFT JOIN pg_database s ON s.oid = c.source_oid;
COMMENT ON VIEW cow.clones IS 'Every clone in the cluster, and every database that was one: source, clone point, status (shadowed, materializing, materialized), progress of a running materialization, and the age and state (source-only, cluster-wide, warning past cow.pin_warn_age, missing, or standby on a server in recovery, where the primary holds it) of its pin';

CREATE OR REPLACE FUNCTION cow.lineage(db name) RETURNS SETOF cow.clones
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = db) THEN
        RAISE EXCEPTION 'database "%" does not exist', db USING ERRCODE = 'invalid_catalog_name';
    END IF;
    RETURN QUERY
    WITH RECURSIVE chain AS (
        SELECT c.*, 0 AS hop FROM cow.clones c WHERE c.clone = db
        UNION ALL
        SELECT p.*, chain.hop + 1 FROM cow.clones p JOIN chain ON p.clone_oid = chain.source_oid
    )
    SELECT clone_oid, clone, source_oid, source, depth, status, clone_point_time,
           clone_point_lsn, created_at, pin, pin_age, pin_state, progress, materialized_at
      FROM chain ORDER BY hop;
END
$$;
COMMENT ON FUNCTION cow.lineage(name) IS 'A database''s ancestry: itself, its source, and so on up the chain (empty if it is not a clone)';

CREATE  FUNCTION cow."_materialize_progress"() RETURNS TABLE (
	"clone_oid" oid,  /* pg_sys :: Oid */
	"pid" INT,  /* Option < i32 > */
	"phase" TEXT,  /* & '_ str */
	"relation" TEXT,  /* Option < String > */
	"blocks_done" bigint,  /* i64 */
	"blocks_total" bigint,  /* i64 */
	"bytes_done" bigint,  /* i64 */
	"bytes_total" bigint,  /* i64 */
	"tables_done" bigint,  /* i64 */
	"tables_total" bigint,  /* i64 */
	"started_at" timestamp with time zone,  /* TimestampWithTimeZone */
	"rate_mb_per_s" double precision,  /* Option < f64 > */
	"seconds_left" double precision,  /* Option < f64 > */
	"error" TEXT  /* Option < String > */
)
STRICT VOLATILE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'materialize_progress_wrapper';

CREATE VIEW cow.materialize_progress AS
SELECT p.clone_oid,
       d.datname AS clone,
       p.pid,
       p.phase,
       p.relation,
       p.blocks_done,
       p.blocks_total,
       p.bytes_done,
       p.bytes_total,
       p.tables_done,
       p.tables_total,
       p.started_at,
       p.rate_mb_per_s,
       p.seconds_left,
       p.error
  FROM cow._materialize_progress() p
  LEFT JOIN pg_database d ON d.oid = p.clone_oid;
COMMENT ON VIEW cow.materialize_progress IS 'One row per materialization since the server started: its phase, the table being copied (source blocks done of total), source bytes copied of about how many, the rate and an estimate of the time left';
