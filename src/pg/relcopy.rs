//! Copies of a relation descriptor, handed to PostgreSQL code in place of
//! the real one: a wrapper index pointed at the source's index file, or a
//! cowclone table seen with heapam as its table AM.
//!
//! A copy lives in its own memory context and borrows the relcache entry's
//! descriptor arrays (valid while the relation is open: relcache rebuilds
//! open relations in place). The storage handle it may come to own is given
//! up when the context goes, on error paths too, so no handle ever points
//! into freed memory: handed to a long-lived owner field, or left unowned.

use std::ffi::CStr;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::pg::compat;

pub struct RelationCopy {
    pub rel: pg_sys::Relation,
    pub context: pg_sys::MemoryContext,
}

/// Registered on the copy's memory context.
#[repr(C)]
struct GiveUpSmgr {
    callback: pg_sys::MemoryContextCallback,
    copy: pg_sys::Relation,
    /// Where the handle goes: a long-lived owner field, or null (unowned).
    home: *mut pg_sys::SMgrRelation,
}

#[pg_guard]
unsafe extern "C-unwind" fn give_up_smgr(arg: *mut std::ffi::c_void) {
    // SAFETY: registered with a GiveUpSmgr living in the context being
    // reset, whose copy's rd_smgr field is still readable; a home field
    // lives for the process.
    unsafe {
        let give_up = arg as *mut GiveUpSmgr;
        let owner: *mut pg_sys::SMgrRelation = &mut (*(*give_up).copy).rd_smgr;
        if (*give_up).home.is_null() {
            compat::let_go_of_smgr(owner);
        } else {
            compat::hand_smgr_to(owner, (*give_up).home);
        }
    }
}

impl RelationCopy {
    /// A copy of `rel` with no storage handle and no statistics of its own.
    ///
    /// # Safety
    /// `rel` must be a valid, open relation, open for as long as the copy
    /// is used; `home` null or an owner field that lives for the process.
    pub unsafe fn new(
        rel: pg_sys::Relation,
        name: &'static CStr,
        home: *mut pg_sys::SMgrRelation,
    ) -> Self {
        // SAFETY: guaranteed by the caller.
        unsafe {
            let context = pg_sys::AllocSetContextCreateInternal(
                pg_sys::CurrentMemoryContext,
                name.as_ptr(),
                0,
                1024,
                8 * 1024,
            );
            let copy = pg_sys::MemoryContextAllocZero(
                context,
                std::mem::size_of::<pg_sys::RelationData>(),
            ) as pg_sys::Relation;
            std::ptr::copy_nonoverlapping(rel, copy, 1);
            (*copy).rd_smgr = std::ptr::null_mut();
            // A copy must never become the relation's statistics entry's
            // back pointer, which would outlive it.
            (*copy).pgstat_info = std::ptr::null_mut();
            (*copy).pgstat_enabled = false;
            let give_up = pg_sys::MemoryContextAllocZero(context, std::mem::size_of::<GiveUpSmgr>())
                as *mut GiveUpSmgr;
            (*give_up).callback.func = Some(give_up_smgr);
            (*give_up).callback.arg = give_up.cast();
            (*give_up).copy = copy;
            (*give_up).home = home;
            pg_sys::MemoryContextRegisterResetCallback(context, &mut (*give_up).callback);
            Self { rel: copy, context }
        }
    }

    pub fn close(self) {
        // SAFETY: nothing refers to the copy once the code it was handed to
        // has returned (or its scan has ended).
        unsafe { pg_sys::MemoryContextDelete(self.context) };
    }
}
