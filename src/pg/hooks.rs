//! Hook plumbing: passing calls on to the next hook, or to PostgreSQL's
//! standard function, *without* pgrx's error boundary.
//!
//! A hook sees every statement of every database. If an error raised by the
//! statement itself crossed a pgrx boundary, pgrx would catch it and raise it
//! again, and PostgreSQL's error context ("COPY t, line 3", "SQL function f
//! statement 1") would be lost: a visible change to PostgreSQL's behaviour
//! everywhere (found by running PostgreSQL's regression suite with cowclone
//! loaded). So each hook is a plain function: its own checks run in
//! `#[pg_guard]` functions, and the pass-on below is a direct call that an
//! error leaves by longjmp, over frames that hold only plain values
//! (nothing to drop, unlock or free).

use pgrx::pg_sys;

unsafe extern "C-unwind" {
    #[link_name = "standard_ProcessUtility"]
    fn standard_process_utility(
        pstmt: *mut pg_sys::PlannedStmt,
        query_string: *const std::ffi::c_char,
        read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        query_env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    );
    #[link_name = "standard_ExecutorStart"]
    fn standard_executor_start(query: *mut pg_sys::QueryDesc, eflags: std::ffi::c_int);
    #[link_name = "standard_ExecutorEnd"]
    fn standard_executor_end(query: *mut pg_sys::QueryDesc);
}

/// The arguments of one ProcessUtility call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UtilityCall {
    pub pstmt: *mut pg_sys::PlannedStmt,
    pub query_string: *const std::ffi::c_char,
    pub read_only_tree: bool,
    pub context: pg_sys::ProcessUtilityContext::Type,
    pub params: pg_sys::ParamListInfo,
    pub query_env: *mut pg_sys::QueryEnvironment,
    pub dest: *mut pg_sys::DestReceiver,
    pub qc: *mut pg_sys::QueryCompletion,
}

/// Runs the statement: the previous hook if there was one, else PostgreSQL's own.
///
/// # Safety
/// Must be called from a ProcessUtility hook with the arguments it got; the
/// caller's frames must hold nothing that needs dropping.
#[allow(ffi_unwind_calls)]
pub unsafe fn pass_on_utility(previous: pg_sys::ProcessUtility_hook_type, c: UtilityCall) {
    // SAFETY: guaranteed by the caller; PostgreSQL reports errors by
    // longjmp, never by unwinding, so no Rust unwinding crosses these calls.
    unsafe {
        match previous {
            Some(next) => next(
                c.pstmt,
                c.query_string,
                c.read_only_tree,
                c.context,
                c.params,
                c.query_env,
                c.dest,
                c.qc,
            ),
            None => standard_process_utility(
                c.pstmt,
                c.query_string,
                c.read_only_tree,
                c.context,
                c.params,
                c.query_env,
                c.dest,
                c.qc,
            ),
        }
    }
}

/// Starts the executor: the previous hook if there was one, else PostgreSQL's own.
///
/// # Safety
/// As for `pass_on_utility`, from an ExecutorStart hook.
#[allow(ffi_unwind_calls)]
pub unsafe fn pass_on_executor_start(
    previous: pg_sys::ExecutorStart_hook_type,
    query: *mut pg_sys::QueryDesc,
    eflags: std::ffi::c_int,
) {
    // SAFETY: as in pass_on_utility.
    unsafe {
        match previous {
            Some(next) => next(query, eflags),
            None => standard_executor_start(query, eflags),
        }
    }
}

/// Ends the executor: the previous hook if there was one, else PostgreSQL's own.
///
/// # Safety
/// As for `pass_on_utility`, from an ExecutorEnd hook.
#[allow(ffi_unwind_calls)]
pub unsafe fn pass_on_executor_end(
    previous: pg_sys::ExecutorEnd_hook_type,
    query: *mut pg_sys::QueryDesc,
) {
    // SAFETY: as in pass_on_utility.
    unsafe {
        match previous {
            Some(next) => next(query),
            None => standard_executor_end(query),
        }
    }
}
