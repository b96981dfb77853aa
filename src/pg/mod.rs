//! The PostgreSQL boundary: what any stage needs of the server and nothing
//! of cowclone's own stages. `compat` (every version difference) uses only
//! pgrx; the rest may use `compat` and each other.
//!
//! May use: nothing above it (pin, state, write, read, create, lifecycle).

pub mod compat;
pub mod datum;
pub mod error;
pub mod failpoint;
pub mod hooks;
pub mod page;
pub mod page_file;
pub mod preload;
pub mod relation;
pub mod relcopy;
