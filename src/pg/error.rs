//! Raising errors through PostgreSQL's error system.
//!
//! Every user-facing failure carries a SQLSTATE, and a hint when there is
//! something the user can do about it. Raising is a non-local exit handled by
//! pgrx's guard, so no Rust panic ever crosses the FFI boundary unannounced.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// A user-facing error, built up and then raised with [`CowError::raise`].
#[must_use = "an error does nothing until it is raised"]
pub struct CowError {
    code: PgSqlErrorCode,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

impl CowError {
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// A state cowclone's own logic rules out (XX000).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, message)
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Reports at level WARNING: sent to the client and written to the
    /// server log; execution goes on.
    pub fn warn(self) {
        self.report(PgLogLevel::WARNING);
    }

    /// Reports at level FATAL: the process exits (in the postmaster, the
    /// server does not start).
    #[track_caller]
    pub fn fatal(self) -> ! {
        self.report(PgLogLevel::FATAL);
        unreachable!("a FATAL report does not return")
    }

    /// Raises the error at level ERROR: the current transaction is aborted
    /// and control never comes back.
    #[track_caller]
    pub fn raise(self) -> ! {
        self.report(PgLogLevel::ERROR);
        unreachable!("an ERROR report does not return")
    }

    #[track_caller]
    fn report(self, level: PgLogLevel) {
        let mut report = ErrorReport::new(self.code, self.message, "cowclone");
        if let Some(detail) = self.detail {
            report = report.set_detail(detail);
        }
        if let Some(hint) = self.hint {
            report = report.set_hint(hint);
        }
        report.report(level);
    }
}
