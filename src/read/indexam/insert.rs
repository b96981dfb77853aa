//! Inserts into the local part, and unique checks of a new key against the
//! source rows the clone still sees.

use super::*;

/// What the source's part of a unique index says about a new key.
pub(super) enum Probe {
    Clear,
    Conflict,
    /// A running transaction is changing a source row with the key.
    Wait(pg_sys::TransactionId, pg_sys::ItemPointerData),
}

/// Looks up a key in the source's part of a unique btree index and judges
/// each row found as a unique check does: visible to a dirty snapshot
/// (T sees it and no committed or own tombstone hides it).
///
/// # Safety
/// `index` a valid, open shadowed unique index of `heap`; `values` and
/// `isnull` hold its key columns.
pub(super) unsafe fn probe_source(
    index: pg_sys::Relation,
    heap: pg_sys::Relation,
    values: *mut pg_sys::Datum,
    isnull: *mut bool,
) -> Probe {
    // SAFETY: guaranteed by the caller; the inner scan ends and the copy is
    // closed before returning.
    unsafe {
        let form = (*index).rd_index;
        let natts = (*form).indnkeyatts as usize;
        let mut keys: Vec<pg_sys::ScanKeyData> = vec![std::mem::zeroed(); natts];
        for (i, key) in keys.iter_mut().enumerate() {
            let attno = (i + 1) as i16;
            if *isnull.add(i) {
                if !(*form).indnullsnotdistinct {
                    return Probe::Clear;
                }
                pg_sys::ScanKeyEntryInitialize(
                    key,
                    (pg_sys::SK_ISNULL | pg_sys::SK_SEARCHNULL) as i32,
                    attno,
                    0,
                    pg_sys::InvalidOid,
                    pg_sys::InvalidOid,
                    pg_sys::InvalidOid,
                    pg_sys::Datum::from(0),
                );
                continue;
            }
            let family = *(*index).rd_opfamily.add(i);
            let input = *(*index).rd_opcintype.add(i);
            let equal = pg_sys::BTEqualStrategyNumber as i16;
            let operator = pg_sys::get_opfamily_member(family, input, input, equal);
            pg_sys::ScanKeyEntryInitialize(
                key,
                0,
                attno,
                equal as u16,
                input,
                *(*index).rd_indcollation.add(i),
                pg_sys::get_opcode(operator),
                *values.add(i),
            );
        }
        let Some(source) = SourceIndex::open(index) else {
            return Probe::Clear;
        };
        let routine = source.routine();
        let begin = routine.ambeginscan.expect("every AM begins scans");
        let inner = pg_call!(begin(source.rel(), natts as i32, 0));
        prepare_inner(inner, heap, &raw mut pg_sys::SnapshotAnyData, false);
        let rescan = routine.amrescan.expect("every AM rescans");
        pg_call!(rescan(
            inner,
            keys.as_mut_ptr(),
            natts as i32,
            std::ptr::null_mut(),
            0
        ));
        let get = routine.amgettuple.expect("btree returns tuples");
        let mut probe = Probe::Clear;
        while pg_call!(get(inner, pg_sys::ScanDirection::ForwardScanDirection)) {
            let found = (*inner).xs_heaptid;
            let mut tid = source_tid(block_of(&found), found.ip_posid);
            let mut dirty: pg_sys::SnapshotData = std::mem::zeroed();
            dirty.snapshot_type = pg_sys::SnapshotType::SNAPSHOT_DIRTY;
            let mut all_dead = false;
            if pg_sys::table_index_fetch_tuple_check(heap, &mut tid, &mut dirty, &mut all_dead) {
                probe = if dirty.xmax != pg_sys::InvalidTransactionId {
                    Probe::Wait(dirty.xmax, tid)
                } else {
                    Probe::Conflict
                };
                break;
            }
        }
        let end = routine.amendscan.expect("every AM ends scans");
        pg_call!(end(inner));
        source.close();
        probe
    }
}

/// # Safety
/// As for `probe_source`.
pub(super) unsafe fn unique_violation(
    index: pg_sys::Relation,
    values: *mut pg_sys::Datum,
    isnull: *mut bool,
) -> ! {
    // SAFETY: guaranteed by the caller.
    unsafe {
        let name = relation_name(index);
        let description = pg_sys::BuildIndexValueDescription(index, values, isnull);
        let mut error = CowError::new(
            PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
            format!("duplicate key value violates unique constraint \"{name}\""),
        );
        if !description.is_null() {
            let key = std::ffi::CStr::from_ptr(description).to_string_lossy();
            error = error.detail(format!("Key {key} already exists."));
        }
        error.raise()
    }
}

#[pg_guard]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe extern "C-unwind" fn aminsert(
    index: pg_sys::Relation,
    values: *mut pg_sys::Datum,
    isnull: *mut bool,
    heap_tid: pg_sys::ItemPointer,
    heap: pg_sys::Relation,
    check_unique: pg_sys::IndexUniqueCheck::Type,
    index_unchanged: bool,
    info: *mut pg_sys::IndexInfo,
) -> bool {
    // SAFETY: as above.
    unsafe {
        let shadowed = is_shadowed(index);
        let checks = shadowed && check_unique != pg_sys::IndexUniqueCheck::UNIQUE_CHECK_NO;
        let partial = check_unique == pg_sys::IndexUniqueCheck::UNIQUE_CHECK_PARTIAL;
        let mut maybe_duplicate = false;
        if shadowed {
            ensure_local_part(index, heap);
        }
        // Checked before the entry goes in, waiting as a unique check waits,
        // so no writer of the source row ever waits for this inserter.
        if checks {
            loop {
                match probe_source(index, heap, values, isnull) {
                    Probe::Clear => break,
                    Probe::Conflict if partial => {
                        maybe_duplicate = true;
                        break;
                    }
                    Probe::Conflict => unique_violation(index, values, isnull),
                    Probe::Wait(_, _) if partial => {
                        maybe_duplicate = true;
                        break;
                    }
                    Probe::Wait(xid, mut tid) => pg_sys::XactLockTableWait(
                        xid,
                        heap,
                        &mut tid,
                        pg_sys::XLTW_Oper::XLTW_InsertIndex,
                    ),
                }
            }
        }
        let insert = wrapped_routine(index).aminsert.expect("every AM inserts");
        let unique = as_wrapped!(
            index,
            pg_call!(insert(
                index,
                values,
                isnull,
                heap_tid,
                heap,
                check_unique,
                index_unchanged,
                info
            ))
        );
        unique && !maybe_duplicate
    }
}
