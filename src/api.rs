//! The SQL API. Every function lives in schema `cow`, which the extension
//! script creates (and so `DROP EXTENSION` removes). Functions here are thin:
//! they convert arguments and results, and call the module that owns the
//! concept.

use pgrx::prelude::*;

#[pg_schema]
pub mod cow {
    use pgrx::datum::TimestampWithTimeZone;
    use pgrx::prelude::*;

    use pgrx::PgSqlErrorCode;

    use crate::create::clone;
    use crate::create::point::PointRequest;
    use crate::lifecycle::materialize::request;
    use crate::lifecycle::{reconcile, retention, workers};
    use crate::pg::error::CowError;
    use crate::pg::preload;
    use crate::pin::age::{self, Scope};
    use crate::pin::slot;
    use crate::state::{lineage, record};

    fn timestamp(raw: i64) -> TimestampWithTimeZone {
        TimestampWithTimeZone::try_from(raw).expect("timestamps cowclone records are finite")
    }

    /// The version of the loaded library, which is also the extension version.
    #[pg_extern(immutable, parallel_safe)]
    fn version() -> &'static str {
        env!("CARGO_PKG_VERSION")
    }

    /// Whether the server loaded cowclone through `shared_preload_libraries`,
    /// which every clone operation requires.
    #[pg_extern(stable, parallel_safe)]
    fn preloaded() -> bool {
        preload::is_preloaded()
    }

    /// Run by the extension script: `CREATE EXTENSION` fails, and leaves
    /// nothing behind, in a server that did not preload the library.
    #[pg_extern(name = "_require_preloaded")]
    fn require_preloaded_at_create() {
        preload::require_preloaded();
    }

    /// 0.1.0 to 0.4.0's `cow.clone(source, target)`, kept for their scripts
    /// (an install of an older release runs against this library until it
    /// is updated); 0.5.0's `cow.clone` is `_clone` behind a SQL wrapper.
    #[pg_extern(volatile, parallel_unsafe, name = "clone", sql = false)]
    #[allow(clippy::type_complexity)]
    fn clone_database(
        source: Option<&str>,
        target: Option<&str>,
    ) -> TableIterator<
        'static,
        (
            name!(clone, String),
            name!(clone_oid, pg_sys::Oid),
            name!(source, String),
            name!(clone_point_lsn, String),
            name!(clone_point_time, TimestampWithTimeZone),
            name!(catalog_relations, i64),
            name!(shadowed_relations, i64),
            name!(elapsed_ms, f64),
        ),
    > {
        let (source, target) = clone_names(source, target);
        TableIterator::once(clone_at(source, target, PointRequest::Now))
    }

    fn clone_names<'a>(source: Option<&'a str>, target: Option<&'a str>) -> (&'a str, &'a str) {
        let (Some(source), Some(target)) = (source, target) else {
            CowError::new(
                PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                "cow.clone needs a source and a target database name",
            )
            .raise()
        };
        (source, target)
    }

    /// One row of `cow.clone`: clone, its OID, source, clone point LSN and
    /// time, catalog relations copied, relations shadowed, elapsed ms.
    type CloneRow = (
        String,
        pg_sys::Oid,
        String,
        String,
        TimestampWithTimeZone,
        i64,
        i64,
        f64,
    );

    fn clone_at(source: &str, target: &str, request: PointRequest) -> CloneRow {
        clone::refuse_unless_callable();
        reconcile::remove_interrupted_clones();
        let outcome = clone::clone_database(source, target, request);
        workers::ensure_holder(outcome.source_oid, &outcome.source_name);
        (
            target.to_string(),
            pg_sys::Oid::from(outcome.clone_oid),
            source.to_string(),
            outcome.clone_point_lsn,
            timestamp(outcome.clone_point_time),
            outcome.catalog_relations,
            outcome.shadowed_relations,
            outcome.elapsed_ms,
        )
    }

    /// `cow.clone(source, target, as_of, as_of_lsn)` and
    /// `cow.clone_database(source, target, as_of_lsn)` (SQL wrappers: pgrx
    /// has no pg_lsn, so the LSN arrives as text). Without a point, the
    /// clone is of now, and its exact LSN is reported.
    #[pg_extern(volatile, parallel_unsafe, name = "_clone")]
    #[allow(clippy::type_complexity)]
    fn clone_as_of(
        source: Option<&str>,
        target: Option<&str>,
        as_of: Option<TimestampWithTimeZone>,
        as_of_lsn: Option<&str>,
    ) -> TableIterator<
        'static,
        (
            name!(clone, String),
            name!(clone_oid, pg_sys::Oid),
            name!(source, String),
            name!(clone_point_lsn, String),
            name!(clone_point_time, TimestampWithTimeZone),
            name!(catalog_relations, i64),
            name!(shadowed_relations, i64),
            name!(elapsed_ms, f64),
        ),
    > {
        let (source, target) = clone_names(source, target);
        let request = match (as_of, as_of_lsn) {
            (None, None) => PointRequest::Now,
            (Some(time), None) => PointRequest::Time(time.into_inner()),
            (None, Some(lsn)) => PointRequest::Lsn(record::parse_lsn(lsn).unwrap_or_else(|| {
                CowError::new(
                    PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
                    format!("invalid WAL position \"{lsn}\""),
                )
                .raise()
            })),
            (Some(_), Some(_)) => CowError::new(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                "give as_of or as_of_lsn, not both",
            )
            .raise(),
        };
        TableIterator::once(clone_at(source, target, request))
    }

    /// `cow.set_retention(db, keep)`: keep every point of the last `keep`
    /// of `db` clonable (NULL or zero: off). True when retention is on.
    #[pg_extern(volatile, parallel_unsafe, name = "set_retention")]
    fn set_retention(db: Option<&str>, keep: Option<pgrx::datum::Interval>) -> bool {
        retention::set_retention(db, keep)
    }

    #[pg_extern(volatile, name = "_retention")]
    #[allow(clippy::type_complexity)]
    fn retention_rows() -> TableIterator<
        'static,
        (
            name!(database_oid, pg_sys::Oid),
            name!(keep_seconds, f64),
            name!(window_start_lsn, Option<String>),
            name!(window_start_time, Option<TimestampWithTimeZone>),
            name!(newest_mark_lsn, Option<String>),
            name!(newest_mark_time, Option<TimestampWithTimeZone>),
            name!(marks, i64),
            name!(wal_kept_bytes, Option<i64>),
            name!(slot_name, String),
        ),
    > {
        let rows: Vec<_> = retention::rows()
            .into_iter()
            .map(|r| {
                (
                    pg_sys::Oid::from(r.database),
                    r.keep_micros as f64 / 1e6,
                    r.start.as_ref().map(|m| record::format_lsn(m.point.lsn)),
                    r.start.as_ref().map(|m| timestamp(m.point.taken_at)),
                    r.newest.as_ref().map(|m| record::format_lsn(m.point.lsn)),
                    r.newest.as_ref().map(|m| timestamp(m.point.taken_at)),
                    r.marks,
                    r.wal_kept_bytes,
                    r.slot_name,
                )
            })
            .collect();
        TableIterator::new(rows)
    }

    /// The raw lineage records; `cow.clones` is the view to use. A clone
    /// whose pin is older than `cow.pin_warn_age` is also reported with a
    /// WARNING, so looking at the clones is enough to be told.
    #[pg_extern(volatile, name = "_clone_records")]
    #[allow(clippy::type_complexity)]
    fn clone_records() -> TableIterator<
        'static,
        (
            name!(clone_oid, pg_sys::Oid),
            name!(source_oid, pg_sys::Oid),
            name!(source_name, String),
            name!(depth, i32),
            name!(clone_point_lsn, String),
            name!(clone_point_time, TimestampWithTimeZone),
            name!(created_at, TimestampWithTimeZone),
            name!(pin, String),
            name!(pin_age, Option<i64>),
            name!(pin_state, &'static str),
        ),
    > {
        let rows: Vec<_> = record::all_records()
            .into_iter()
            .filter_map(|r| {
                let clone = pg_sys::Oid::from(r.clone);
                let name = database_name(clone)?;
                let source = pg_sys::Oid::from(r.source);
                let (branch_lsn, branch_time) = r.branch_point();
                let (pin_age, state) = age::pin_age(source, r.point.xmin);
                if let (age::PinState::Old, Some(pin_age)) = (state, pin_age) {
                    age::warn_if_old(&r.source_name, &name, pin_age);
                }
                Some((
                    clone,
                    pg_sys::Oid::from(r.source),
                    r.source_name,
                    r.depth as i32,
                    record::format_lsn(branch_lsn),
                    timestamp(branch_time),
                    timestamp(r.created_at),
                    slot::source_slot_name(source),
                    pin_age,
                    state.label(),
                ))
            })
            .collect();
        TableIterator::new(rows)
    }

    fn required<'a>(value: Option<&'a str>, what: &str) -> &'a str {
        value.unwrap_or_else(|| {
            CowError::new(
                PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                format!("{what} needs a database name"),
            )
            .raise()
        })
    }

    /// Makes a clone an ordinary database that no longer reads its source.
    #[pg_extern(volatile, parallel_unsafe, name = "materialize")]
    #[allow(clippy::type_complexity)]
    fn materialize(
        clone: Option<&str>,
        wait: default!(bool, true),
    ) -> TableIterator<
        'static,
        (
            name!(clone, String),
            name!(status, &'static str),
            name!(tables, i64),
            name!(bytes_copied, i64),
            name!(elapsed_ms, f64),
        ),
    > {
        let name = required(clone, "cow.materialize");
        let outcome = request::materialize(name, wait);
        TableIterator::once((
            name.to_string(),
            outcome.status,
            outcome.tables,
            outcome.bytes,
            outcome.elapsed_ms,
        ))
    }

    /// Cancels a clone's materialization (running or queued): the tables
    /// already materialized stay the clone's own.
    #[pg_extern(volatile, parallel_unsafe, name = "cancel_materialize")]
    fn cancel_materialize(clone: Option<&str>) -> bool {
        request::cancel(required(clone, "cow.cancel_materialize"))
    }

    /// DROP DATABASE; with `force`, every clone of the database is
    /// materialized first.
    #[pg_extern(volatile, parallel_unsafe, name = "drop_database")]
    fn drop_database(db: Option<&str>, force: default!(bool, false)) {
        request::drop_database(required(db, "cow.drop_database"), force);
    }

    /// Materializations running or ended since the server started.
    #[pg_extern(volatile, name = "_materialize_progress")]
    #[allow(clippy::type_complexity)]
    fn materialize_progress() -> TableIterator<
        'static,
        (
            name!(clone_oid, pg_sys::Oid),
            name!(pid, Option<i32>),
            name!(phase, &'static str),
            name!(relation, Option<String>),
            name!(blocks_done, i64),
            name!(blocks_total, i64),
            name!(bytes_done, i64),
            name!(bytes_total, i64),
            name!(tables_done, i64),
            name!(tables_total, i64),
            name!(started_at, TimestampWithTimeZone),
            name!(rate_mb_per_s, Option<f64>),
            name!(seconds_left, Option<f64>),
            name!(error, Option<String>),
        ),
    > {
        let rows: Vec<_> = request::progress()
            .into_iter()
            .map(|p| {
                (
                    p.clone,
                    p.pid,
                    p.phase,
                    p.relation,
                    p.blocks_done,
                    p.blocks_total,
                    p.bytes_done,
                    p.bytes_total,
                    p.relations_done,
                    p.relations_total,
                    timestamp(p.started_at),
                    p.rate_mb_s,
                    p.seconds_left,
                    p.error,
                )
            })
            .collect();
        TableIterator::new(rows)
    }

    /// Every clone and every materialized former clone, with its status:
    /// `cow.clones` is the view to use.
    #[pg_extern(volatile, name = "_clones")]
    #[allow(clippy::type_complexity)]
    fn clones() -> TableIterator<
        'static,
        (
            name!(clone_oid, pg_sys::Oid),
            name!(source_oid, pg_sys::Oid),
            name!(source_name, String),
            name!(depth, i32),
            name!(status, &'static str),
            name!(clone_point_lsn, String),
            name!(clone_point_time, TimestampWithTimeZone),
            name!(created_at, TimestampWithTimeZone),
            name!(pin, Option<String>),
            name!(pin_age, Option<i64>),
            name!(pin_state, Option<&'static str>),
            name!(progress, Option<f64>),
            name!(materialized_at, Option<TimestampWithTimeZone>),
        ),
    > {
        let mut rows: Vec<_> = clone_records()
            .map(
                |(clone, source, source_name, depth, lsn, time, created, pin, pin_age, state)| {
                    let job = crate::state::jobs::get(u32::from(clone))
                        .filter(|j| j.is_running() && j.bytes_total > 0);
                    let queued = lineage::job(clone).is_some();
                    (
                        clone,
                        source,
                        source_name,
                        depth,
                        if queued { "materializing" } else { "shadowed" },
                        lsn,
                        time,
                        created,
                        Some(pin),
                        pin_age,
                        Some(state),
                        job.map(|j| (j.bytes_done as f64 / j.bytes_total as f64).min(1.0)),
                        None,
                    )
                },
            )
            .collect();
        for l in lineage::all() {
            rows.push((
                pg_sys::Oid::from(l.clone),
                pg_sys::Oid::from(l.source),
                l.source_name,
                l.depth as i32,
                "materialized",
                record::format_lsn(l.point.lsn),
                timestamp(l.point.taken_at),
                timestamp(l.created_at),
                None,
                None,
                None,
                Some(1.0),
                Some(timestamp(l.materialized_at)),
            ));
        }
        TableIterator::new(rows)
    }

    /// The database each clone (or materialized former clone) was made
    /// from: its source, or for a clone of a clone the clone before it.
    #[pg_extern(volatile, name = "_parents")]
    fn parents() -> TableIterator<
        'static,
        (
            name!(clone_oid, pg_sys::Oid),
            name!(parent_oid, pg_sys::Oid),
            name!(parent_name, String),
        ),
    > {
        let mut rows: Vec<_> = record::all_records()
            .into_iter()
            .map(|r| {
                let (oid, name) = r.parent();
                (pg_sys::Oid::from(r.clone), pg_sys::Oid::from(oid), name)
            })
            .collect();
        for l in lineage::all() {
            let (oid, name) = l.parent();
            rows.push((pg_sys::Oid::from(l.clone), pg_sys::Oid::from(oid), name));
        }
        TableIterator::new(rows)
    }

    /// A database's ancestry, oldest first: its root source (level 0), then
    /// every clone down to itself, each with its status and the point it
    /// was cut from the level above at. Empty for a database that never was
    /// a clone. `cow.lineage(name)` is the function to use.
    #[pg_extern(volatile, name = "_lineage")]
    #[allow(clippy::type_complexity)]
    fn lineage_of(
        db: pg_sys::Oid,
    ) -> TableIterator<
        'static,
        (
            name!(level, i32),
            name!(database_oid, pg_sys::Oid),
            name!(database, String),
            name!(status, &'static str),
            name!(clone_point_lsn, Option<String>),
            name!(clone_point_time, Option<TimestampWithTimeZone>),
            name!(created_at, Option<TimestampWithTimeZone>),
        ),
    > {
        let name = database_name(db).unwrap_or_default();
        let (root, root_name, chain) = if let Some(r) = record::read_record(db) {
            (r.source, r.source_name.clone(), r.levels(&name))
        } else if let Some(l) = lineage::all()
            .into_iter()
            .find(|l| l.clone == u32::from(db))
        {
            (l.source, l.source_name.clone(), l.levels(&name))
        } else {
            return TableIterator::new(Vec::new());
        };
        let root_oid = pg_sys::Oid::from(root);
        let root_now = database_name(root_oid);
        let mut rows = vec![(
            0,
            root_oid,
            root_now.clone().unwrap_or(root_name),
            if root_now.is_some() {
                "source"
            } else {
                "dropped"
            },
            None,
            None,
            None,
        )];
        for (level, l) in chain.into_iter().enumerate() {
            let oid = pg_sys::Oid::from(l.oid);
            let now = database_name(oid);
            let status = match now {
                None => "dropped",
                Some(_) if record::read_record(oid).is_some() => {
                    if lineage::job(oid).is_some() {
                        "materializing"
                    } else {
                        "shadowed"
                    }
                }
                Some(_) => "materialized",
            };
            rows.push((
                level as i32 + 1,
                oid,
                now.unwrap_or(l.name),
                status,
                Some(record::format_lsn(l.point_lsn)),
                Some(timestamp(l.point_time)),
                Some(timestamp(l.created_at)),
            ));
        }
        TableIterator::new(rows)
    }

    fn database_name(oid: pg_sys::Oid) -> Option<String> {
        // SAFETY: a catalog lookup inside a transaction; null when the
        // database does not exist.
        let name = unsafe { pg_sys::get_database_name(oid) };
        // SAFETY: a palloc'd NUL-terminated name when not null.
        (!name.is_null()).then(|| {
            unsafe { std::ffi::CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned()
        })
    }

    /// One row per source with live clones (or a slot left to release):
    /// which clone holds its horizon, how old it is, and where it is in force.
    #[pg_extern(volatile, name = "_pins")]
    #[allow(clippy::type_complexity)]
    fn pins() -> TableIterator<
        'static,
        (
            name!(source_oid, pg_sys::Oid),
            name!(source_name, String),
            name!(clones, i64),
            name!(scope, &'static str),
            name!(holder_pid, Option<i32>),
            name!(horizon_clone_oid, Option<pg_sys::Oid>),
            name!(horizon_xmin, Option<i64>),
            name!(horizon_age, Option<i64>),
            name!(slot_name, String),
        ),
    > {
        let records = record::all_records();
        let mut sources: Vec<pg_sys::Oid> = records
            .iter()
            .map(|r| pg_sys::Oid::from(r.source))
            .chain(slot::source_slots().into_iter().map(|(s, _)| s))
            .collect();
        sources.sort_unstable_by_key(|s| u32::from(*s));
        sources.dedup();
        let rows: Vec<_> = sources
            .into_iter()
            .map(|source| {
                let clones: Vec<_> = records
                    .iter()
                    .filter(|r| r.source == u32::from(source))
                    .collect();
                let state = slot::source_slot(source);
                let scope = Scope::current(source);
                let horizon = record::oldest_clone_point(clones.iter().copied());
                let name = clones
                    .first()
                    .map(|r| r.source_name.clone())
                    .unwrap_or_else(|| u32::from(source).to_string());
                (
                    source,
                    name,
                    clones.len() as i64,
                    scope.label(),
                    state.and_then(|s| (s.active_pid != 0).then_some(s.active_pid)),
                    horizon.map(|r| pg_sys::Oid::from(r.clone)),
                    state.map(|s| s.xmin as i64),
                    state.map(|s| age::age_of(s.xmin)),
                    slot::source_slot_name(source),
                )
            })
            .collect();
        TableIterator::new(rows)
    }
}

extension_sql!(
    r#"
SELECT cow._require_preloaded();
REVOKE ALL ON FUNCTION cow._require_preloaded() FROM PUBLIC;
-- cow.clone checks its caller's privileges itself (CREATEDB and CONNECT).
GRANT USAGE ON SCHEMA cow TO PUBLIC;
COMMENT ON SCHEMA cow IS 'cowclone: instant zero-copy clones of a live database';
"#,
    name = "require_preloaded_at_create",
    requires = [cow::require_preloaded_at_create],
);

extension_sql!(
    r#"
CREATE VIEW cow.clones AS
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
"#,
    name = "lineage_views",
    requires = [cow::clones, cow::parents, cow::lineage_of],
);

extension_sql!(
    r#"
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
"#,
    name = "materialize_progress_view",
    requires = [cow::materialize_progress],
);

extension_sql!(
    r#"
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
"#,
    name = "point_in_time",
    requires = [cow::clone_as_of, cow::retention_rows],
);

extension_sql!(
    r#"
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
COMMENT ON VIEW cow.pins IS 'One row per source with clones: whether its pin holds back only the source (source-only, its holder connected), every database (cluster-wide, no holder running) or is the primary''s (standby: this server is in recovery), the holder''s pid, the clone whose clone point holds the horizon, and its age';
"#,
    name = "pins_view",
    requires = [cow::pins],
);
