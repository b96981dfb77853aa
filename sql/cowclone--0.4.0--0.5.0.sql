-- cowclone 0.4.0 -> 0.5.0: clones as of a point in time.
--
-- New: cow.set_retention(db, keep) and the view cow.retention (a source's
-- history window); cow.clone gains as_of (timestamptz) and as_of_lsn
-- (pg_lsn), and cow.clone_database(source, target, as_of_lsn) is the same
-- under the design's name. cow.clone becomes a SQL wrapper of cow._clone
-- (pgrx has no pg_lsn), so the two-argument cow.clone of 0.4.0 is replaced.

\echo Use "ALTER EXTENSION cowclone UPDATE TO '0.5.0'" to load this file. \quit

DROP FUNCTION cow.clone(text, text);

CREATE  FUNCTION cow."_clone"(
	"source" TEXT, /* Option < & str > */
	"target" TEXT, /* Option < & str > */
	"as_of" timestamp with time zone, /* Option < TimestampWithTimeZone > */
	"as_of_lsn" TEXT /* Option < & str > */
) RETURNS TABLE (
	"clone" TEXT,  /* String */
	"clone_oid" oid,  /* pg_sys :: Oid */
	"source" TEXT,  /* String */
	"clone_point_lsn" TEXT,  /* String */
	"clone_point_time" timestamp with time zone,  /* TimestampWithTimeZone */
	"catalog_relations" bigint,  /* i64 */
	"shadowed_relations" bigint,  /* i64 */
	"elapsed_ms" double precision  /* f64 */
)
VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'clone_as_of_wrapper';

CREATE  FUNCTION cow."_retention"() RETURNS TABLE (
	"database_oid" oid,  /* pg_sys :: Oid */
	"keep_seconds" double precision,  /* f64 */
	"window_start_lsn" TEXT,  /* Option < String > */
	"window_start_time" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"newest_mark_lsn" TEXT,  /* Option < String > */
	"newest_mark_time" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"marks" bigint,  /* i64 */
	"wal_kept_bytes" bigint,  /* Option < i64 > */
	"slot_name" TEXT  /* String */
)
STRICT VOLATILE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'retention_rows_wrapper';

CREATE  FUNCTION cow."set_retention"(
	"db" TEXT, /* Option < & str > */
	"keep" interval /* Option < pgrx :: datum :: Interval > */
) RETURNS bool /* bool */
VOLATILE PARALLEL UNSAFE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'set_retention_wrapper';

CREATE FUNCTION cow.clone(
    source text,
    target text,
    as_of timestamptz DEFAULT NULL,
    as_of_lsn pg_lsn DEFAULT NULL
) RETURNS TABLE (
    clone text,
    clone_oid oid,
    source text,
    clone_point_lsn text,
    clone_point_time timestamptz,
    catalog_relations bigint,
    shadowed_relations bigint,
    elapsed_ms double precision
)
LANGUAGE sql VOLATILE PARALLEL UNSAFE
AS $$ SELECT * FROM cow._clone($1, $2, $3, $4::text) $$;
COMMENT ON FUNCTION cow.clone(text, text, timestamptz, pg_lsn) IS 'Creates database target as a clone of source: as of now, or as of a past instant (as_of) or WAL position (as_of_lsn) inside source''s history window (cow.set_retention)';

CREATE FUNCTION cow.clone_database(source text, target text, as_of_lsn pg_lsn)
RETURNS TABLE (
    clone text,
    clone_oid oid,
    source text,
    clone_point_lsn text,
    clone_point_time timestamptz,
    catalog_relations bigint,
    shadowed_relations bigint,
    elapsed_ms double precision
)
LANGUAGE sql VOLATILE PARALLEL UNSAFE
AS $$ SELECT * FROM cow._clone($1, $2, NULL, $3::text) $$;
COMMENT ON FUNCTION cow.clone_database(text, text, pg_lsn) IS 'cow.clone as of a WAL position, under the design''s name';

CREATE VIEW cow.retention AS
SELECT r.database_oid,
       d.datname AS database,
       make_interval(secs => r.keep_seconds) AS keep,
       r.window_start_lsn::pg_lsn AS window_start_lsn,
       r.window_start_time,
       r.newest_mark_lsn::pg_lsn AS newest_mark_lsn,
       r.newest_mark_time,
       r.marks,
       r.wal_kept_bytes,
       r.slot_name
  FROM cow._retention() r
  LEFT JOIN pg_database d ON d.oid = r.database_oid;
COMMENT ON VIEW cow.retention IS 'One row per database with history retention (cow.set_retention): the window asked for, where the window starts (the earliest point that can be cloned), its newest mark, and the WAL its slot keeps';
