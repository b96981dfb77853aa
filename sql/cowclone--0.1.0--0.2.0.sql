-- cowclone 0.1.0 -> 0.2.0: pins per source database.
--
-- The library pins each source once (a holder process connected to it, a
-- replication slot as the durable record) instead of each clone with its
-- own slot; clones made by 0.1.0 are taken over by their source's holder,
-- which drops their per-clone slots. The SQL side gains cow.pins, and
-- cow.clones' pin columns now describe the source's pin.

\echo Use "ALTER EXTENSION cowclone UPDATE TO '0.2.0'" to load this file. \quit

CREATE FUNCTION cow."_pins"() RETURNS TABLE (
	"source_oid" oid,
	"source_name" TEXT,
	"clones" bigint,
	"scope" TEXT,
	"holder_pid" INT,
	"horizon_clone_oid" oid,
	"horizon_xmin" bigint,
	"horizon_age" bigint,
	"slot_name" TEXT
)
STRICT VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'pins_wrapper';

CREATE VIEW cow.pins AS
SELECT p.source_oid,
       coalesce(s.datname, p.source_name::name) AS source,
       p.clones,
       p.scope,
       p.holder_pid,
       h.datname AS horizon_clone,
       p.horizon_xmin::text::xid AS horizon_xmin,
       p.horizon_age,
       p.slot_name
  FROM cow._pins() p
  LEFT JOIN pg_database s ON s.oid = p.source_oid
  LEFT JOIN pg_database h ON h.oid = p.horizon_clone_oid;
COMMENT ON VIEW cow.pins IS 'One row per source with clones: whether its pin holds back only the source (source-only, its holder connected) or every database (cluster-wide, no holder running), the holder''s pid, the clone whose clone point holds the horizon, and its age';

COMMENT ON VIEW cow.clones IS 'Every clone in the cluster: source, clone point, status, and the age and state (source-only, cluster-wide, warning past cow.pin_warn_age, missing) of its pin';
