//! The source's index, opened through a copy of the clone's descriptor
//! pointed at the source's storage.

use super::*;

/// A copy of a clone's index descriptor that reads the source's index file.
///
/// The wrapped AM caches metapages and support functions in the copy's
/// memory context (never in the clone's relcache entry, whose caches
/// describe the local file); the storage handle goes back to the backend's
/// owner field for the source file when the copy goes. The wrapped AM's
/// routine is shared and long-lived.
pub(super) struct SourceIndex {
    pub(super) copy: RelationCopy,
}

impl SourceIndex {
    /// None when the index does not shadow source storage.
    ///
    /// # Safety
    /// `index` must be a valid, open index relation using a wrapper AM.
    pub(super) unsafe fn open(index: pg_sys::Relation) -> Option<Self> {
        // SAFETY: guaranteed by the caller; the fields replaced below are
        // the ones that describe the storage and its caches.
        unsafe {
            let view = clone_view::for_cow_relation(index)?;
            let locator = view.source_locator(compat::relfilenode_of(index))?;
            let home = clone_view::smgr_home(locator);
            let copy = RelationCopy::new(index, c"cowclone source index", home);
            let rel = copy.rel;
            compat::set_relation_locator(rel, locator);
            make_wrapped_index(&copy, index);
            let support =
                (*(*rel).rd_indam).amsupport as usize * (*(*index).rd_rel).relnatts as usize;
            (*rel).rd_supportinfo = pg_sys::MemoryContextAllocZero(
                copy.context,
                support.max(1) * std::mem::size_of::<pg_sys::FmgrInfo>(),
            ) as *mut pg_sys::FmgrInfo;
            compat::own_smgr(home, locator);
            compat::hand_smgr_to(home, &mut (*rel).rd_smgr);
            Some(Self { copy })
        }
    }

    pub(super) fn rel(&self) -> pg_sys::Relation {
        self.copy.rel
    }

    pub(super) fn routine(&self) -> &pg_sys::IndexAmRoutine {
        // SAFETY: set in open() to the wrapped AM's routine, which lives for the process.
        unsafe { &*(*self.copy.rel).rd_indam }
    }

    pub(super) fn close(self) {
        self.copy.close();
    }
}
