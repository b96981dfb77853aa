//! cowclone's hooks see every statement in every database; they must not
//! change how PostgreSQL reports errors. (Passing statements on through
//! pgrx's error boundary once dropped every error's CONTEXT; PostgreSQL's
//! own regression suite found it.)

use std::io::Write;

mod common;

use common::{cloned_source, sqlstate};

/// The CONTEXT PostgreSQL reported with an error.
fn context_of(error: &postgres::Error) -> String {
    error
        .as_db_error()
        .and_then(|e| e.where_())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn errors_keep_their_context_in_sources_clones_and_other_databases() {
    let cluster = cloned_source("CREATE TABLE t (i int PRIMARY KEY); INSERT INTO t VALUES (1)");
    for db in ["postgres", "prod", "staging"] {
        let mut client = cluster.connect(db).unwrap();
        // A utility statement (DO) whose error comes from deep inside it.
        let error = client
            .batch_execute("DO $$ BEGIN PERFORM 1 / 0; END $$")
            .unwrap_err();
        assert_eq!(sqlstate(&error), "22012", "{db}: {error}");
        let context = context_of(&error);
        assert!(
            context.contains("PL/pgSQL function inline_code_block line 1 at PERFORM"),
            "{db}: {context:?}"
        );
        // COPY, another utility statement, reports the failing line.
        client
            .batch_execute("CREATE TABLE numbers (n int)")
            .unwrap();
        let mut writer = client.copy_in("COPY numbers FROM STDIN").unwrap();
        writer.write_all(b"1\nnot a number\n").unwrap();
        let error = writer.finish().unwrap_err();
        assert_eq!(sqlstate(&error), "22P02", "{db}: {error}");
        let context = context_of(&error);
        assert!(
            context.contains("COPY numbers, line 2"),
            "{db}: {context:?}"
        );
        // A query through a SQL function (executor hooks).
        client
            .batch_execute(
                "CREATE FUNCTION boom() RETURNS int LANGUAGE plpgsql AS 'BEGIN RETURN 1 / 0; END'",
            )
            .unwrap();
        let error = client.batch_execute("SELECT boom()").unwrap_err();
        let context = context_of(&error);
        assert!(
            context.contains("PL/pgSQL function boom() line 1 at RETURN"),
            "{db}: {context:?}"
        );
    }
}
