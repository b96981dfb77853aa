-- cowclone 0.5.0 -> 0.6.0: clones of clones.
--
-- cow.clone of a clone makes a clone of it (nested up to 8 levels). New:
-- cow._parents() and the view cow.clones' columns parent_oid and parent;
-- cow.lineage(db) now returns the whole chain, oldest first (level 0 is the
-- root source), from cow._lineage(oid), so its result type changes.

\echo Use "ALTER EXTENSION cowclone UPDATE TO '0.6.0'" to load this file. \quit

DROP FUNCTION cow.lineage(name);

CREATE  FUNCTION cow."_parents"() RETURNS TABLE (
	"clone_oid" oid,  /* pg_sys :: Oid */
	"parent_oid" oid,  /* pg_sys :: Oid */
	"parent_name" TEXT  /* String */
)
STRICT VOLATILE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'parents_wrapper';

CREATE  FUNCTION cow."_lineage"(
	"db" oid /* pg_sys :: Oid */
) RETURNS TABLE (
	"level" INT,  /* i32 */
	"database_oid" oid,  /* pg_sys :: Oid */
	"database" TEXT,  /* String */
	"status" TEXT,  /* & '_ str */
	"clone_point_lsn" TEXT,  /* Option < String > */
	"clone_point_time" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"created_at" timestamp with time zone  /* Option < TimestampWithTimeZone > */
)
STRICT VOLATILE 
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'lineage_of_wrapper';

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
       c.materialized_at,
       p.parent_oid,
       coalesce(pd.datname, p.parent_name::name) AS parent
  FROM cow._clones() c
  JOIN pg_database d ON d.oid = c.clone_oid
  LEFT JOIN pg_database s ON s.oid = c.source_oid
  LEFT JOIN cow._parents() p ON p.clone_oid = c.clone_oid
  LEFT JOIN pg_database pd ON pd.oid = p.parent_oid;
COMMENT ON VIEW cow.clones IS 'Every clone in the cluster, and every database that was one: source (the root of a chain of clones), depth, parent (the database it was cloned from), clone point (when it was cut from its parent), status (shadowed, materializing, materialized), progress of a running materialization, and the age and state (source-only, cluster-wide, warning past cow.pin_warn_age, missing, or standby on a server in recovery, where the primary holds it) of its pin';

CREATE FUNCTION cow.lineage(db name)
RETURNS TABLE (
    level integer,
    database_oid oid,
    database name,
    status text,
    clone_point_lsn pg_lsn,
    clone_point_time timestamptz,
    created_at timestamptz
)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    target oid;
BEGIN
    SELECT d.oid INTO target FROM pg_database d WHERE d.datname = db;
    IF target IS NULL THEN
        RAISE EXCEPTION 'database "%" does not exist', db USING ERRCODE = 'invalid_catalog_name';
    END IF;
    RETURN QUERY
    SELECT l.level, l.database_oid, l.database::name, l.status, l.clone_point_lsn::pg_lsn,
           l.clone_point_time, l.created_at
      FROM cow._lineage(target) l ORDER BY l.level;
END
$$;
COMMENT ON FUNCTION cow.lineage(name) IS 'A database''s ancestry, oldest first: its root source (level 0), then each clone down to itself, with its status (source, shadowed, materializing, materialized, dropped) and the point it was cut from the level above at (empty if it never was a clone)';
