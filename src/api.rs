//! The SQL API. Every function lives in schema `cow`, which the extension
//! script creates (and so `DROP EXTENSION` removes). Functions here are thin:
//! they check arguments and privileges, then call the module that owns the
//! concept.

use pgrx::prelude::*;

#[pg_schema]
mod cow {
    use pgrx::prelude::*;

    use crate::preload;

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
}

extension_sql!(
    r#"
SELECT cow._require_preloaded();
REVOKE ALL ON FUNCTION cow._require_preloaded() FROM PUBLIC;
COMMENT ON SCHEMA cow IS 'cowclone: instant zero-copy clones of a live database';
"#,
    name = "require_preloaded_at_create",
    requires = [cow::require_preloaded_at_create],
);
