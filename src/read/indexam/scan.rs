//! Scans over both parts: the source's index read with the wrapped AM's
//! code and its TIDs moved to the source TID space, the local part as is;
//! ordered and distance-ordered scans merge the two in order.

use super::*;

/// One part's scan and the item it has found but not yet returned.
pub(super) struct Side {
    pub(super) scan: pg_sys::IndexScanDesc,
    /// Whether TIDs it returns are source TIDs (moved into the source TID space).
    pub(super) from_source: bool,
    pub(super) pending: bool,
    pub(super) exhausted: bool,
    pub(super) item: Item,
}

/// A found index entry, copied out of the part's scan (which overwrites its
/// own at its next call) into the outer scan's memory.
#[derive(Clone, Copy)]
pub(super) struct Item {
    pub(super) tid: pg_sys::ItemPointerData,
    pub(super) itup: pg_sys::IndexTuple,
    pub(super) itupdesc: pg_sys::TupleDesc,
    pub(super) hitup: pg_sys::HeapTuple,
    pub(super) hitupdesc: pg_sys::TupleDesc,
    pub(super) recheck: bool,
    pub(super) recheck_order_by: bool,
    /// Distances of a KNN scan (float8), with nulls.
    pub(super) distances: [f64; MAX_ORDER_BYS],
    pub(super) distance_nulls: [bool; MAX_ORDER_BYS],
}

pub(super) const MAX_ORDER_BYS: usize = 4;

impl Item {
    pub(super) fn empty() -> Self {
        // SAFETY: an all-zero Item is a valid empty one (null pointers, false, 0.0).
        unsafe { std::mem::zeroed() }
    }

    /// Copies what `scan` just returned.
    ///
    /// # Safety
    /// `scan`'s last amgettuple returned true.
    pub(super) unsafe fn take(
        scan: pg_sys::IndexScanDesc,
        from_source: bool,
        orderbys: usize,
    ) -> Self {
        // SAFETY: guaranteed by the caller; copies go to the current context.
        unsafe {
            let tid = (*scan).xs_heaptid;
            let mut item = Item {
                tid: if from_source {
                    source_tid(block_of(&tid), tid.ip_posid)
                } else {
                    tid
                },
                itup: std::ptr::null_mut(),
                itupdesc: (*scan).xs_itupdesc,
                hitup: std::ptr::null_mut(),
                hitupdesc: (*scan).xs_hitupdesc,
                recheck: (*scan).xs_recheck,
                recheck_order_by: (*scan).xs_recheckorderby,
                distances: [0.0; MAX_ORDER_BYS],
                distance_nulls: [true; MAX_ORDER_BYS],
            };
            if !(*scan).xs_itup.is_null() {
                item.itup = pg_sys::CopyIndexTuple((*scan).xs_itup);
            }
            if !(*scan).xs_hitup.is_null() {
                item.hitup = pg_sys::heap_copytuple((*scan).xs_hitup);
            }
            for i in 0..orderbys.min(MAX_ORDER_BYS) {
                item.distance_nulls[i] = *(*scan).xs_orderbynulls.add(i);
                if !item.distance_nulls[i] {
                    item.distances[i] =
                        f64::from_bits((*(*scan).xs_orderbyvals.add(i)).value() as u64);
                }
            }
            item
        }
    }

    /// Frees the item's copies.
    ///
    /// # Safety
    /// No one uses them any more.
    pub(super) unsafe fn free(&mut self) {
        // SAFETY: guaranteed by the caller; both were palloc'd by take or duplicate.
        unsafe {
            if !self.itup.is_null() {
                pg_sys::pfree(self.itup.cast());
            }
            if !self.hitup.is_null() {
                pg_sys::pfree(self.hitup.cast());
            }
        }
        self.itup = std::ptr::null_mut();
        self.hitup = std::ptr::null_mut();
    }

    /// A deep copy, for a mark.
    ///
    /// # Safety
    /// The item's tuples are valid.
    pub(super) unsafe fn duplicate(&self) -> Self {
        // SAFETY: guaranteed by the caller.
        unsafe {
            let mut copy = *self;
            if !self.itup.is_null() {
                copy.itup = pg_sys::CopyIndexTuple(self.itup);
            }
            if !self.hitup.is_null() {
                copy.hitup = pg_sys::heap_copytuple(self.hitup);
            }
            copy
        }
    }
}

/// How a scan combines its parts.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Combine {
    /// One part only: the source's (local part not built) or the index itself.
    Single,
    /// Source part, then local part.
    Concatenate,
    /// Both in index order (btree).
    KeyOrder,
    /// Both in distance order (KNN).
    DistanceOrder,
}

/// The state of a wrapper index scan, in the outer scan's `opaque`.
pub(super) struct CowIndexScan {
    pub(super) source: Option<SourceIndex>,
    /// sides[0]: the source's part (or the index itself); sides[1]: the local part.
    pub(super) sides: Vec<Side>,
    pub(super) routine: &'static pg_sys::IndexAmRoutine,
    pub(super) combine: Combine,
    pub(super) orderbys: usize,
    /// The side the last returned item came from.
    pub(super) last: usize,
    /// Side states at the last mark (merge joins).
    pub(super) marked: Vec<(bool, bool, Item)>,
    /// KNN distances handed to the executor.
    pub(super) distances: *mut pg_sys::Datum,
    pub(super) distance_nulls: *mut bool,
    pub(super) memory: pg_sys::MemoryContext,
}

/// # Safety
/// `scan` must be a scan begun by `ambeginscan`.
pub(super) unsafe fn state<'a>(scan: pg_sys::IndexScanDesc) -> &'a mut CowIndexScan {
    // SAFETY: guaranteed by the caller.
    unsafe { &mut *((*scan).opaque as *mut CowIndexScan) }
}

/// Fields index_beginscan_internal would set on a scan begun by hand.
///
/// # Safety
/// `inner` is a freshly begun scan.
pub(super) unsafe fn prepare_inner(
    inner: pg_sys::IndexScanDesc,
    heap: pg_sys::Relation,
    snapshot: pg_sys::Snapshot,
    want_itup: bool,
) {
    // SAFETY: guaranteed by the caller.
    unsafe {
        (*inner).parallel_scan = std::ptr::null_mut();
        (*inner).xs_heapfetch = std::ptr::null_mut();
        (*inner).xs_temp_snap = false;
        (*inner).heapRelation = heap;
        (*inner).xs_snapshot = snapshot;
        (*inner).xs_want_itup = want_itup;
        (*inner).kill_prior_tuple = false;
        (*inner).ignore_killed_tuples = true;
    }
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn ambeginscan(
    index: pg_sys::Relation,
    nkeys: std::ffi::c_int,
    norderbys: std::ffi::c_int,
) -> pg_sys::IndexScanDesc {
    // SAFETY: PostgreSQL passes a valid, open index. The parts' scans are
    // begun by hand; their remaining fields are set in amrescan.
    unsafe {
        let scan = pg_sys::RelationGetIndexScan(index, nkeys, norderbys);
        let routine = wrapped_routine(index);
        let source = SourceIndex::open(index);
        let begin = routine.ambeginscan.expect("every AM begins scans");
        let mut sides = Vec::with_capacity(2);
        let first = source.as_ref().map_or(index, SourceIndex::rel);
        sides.push(Side {
            scan: as_wrapped!(first, pg_call!(begin(first, nkeys, norderbys))),
            from_source: source.is_some(),
            pending: false,
            exhausted: false,
            item: Item::empty(),
        });
        let with_local = source.is_some() && local_part_ready(index);
        if with_local {
            sides.push(Side {
                scan: as_wrapped!(index, pg_call!(begin(index, nkeys, norderbys))),
                from_source: false,
                pending: false,
                exhausted: false,
                item: Item::empty(),
            });
        }
        let orderbys = norderbys.max(0) as usize;
        let combine = if !with_local {
            Combine::Single
        } else if orderbys > 0 {
            if orderbys > MAX_ORDER_BYS {
                CowError::new(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    "ordered index scans of shadowed indexes take at most 4 ORDER BY distances",
                )
                .raise();
            }
            Combine::DistanceOrder
        } else if routine.amcanorder {
            Combine::KeyOrder
        } else {
            Combine::Concatenate
        };
        let memory = pg_sys::AllocSetContextCreateInternal(
            pg_sys::CurrentMemoryContext,
            c"cowclone index scan items".as_ptr(),
            0,
            8 * 1024,
            8 * 1024 * 1024,
        );
        let state = pg_sys::palloc0(std::mem::size_of::<CowIndexScan>()) as *mut CowIndexScan;
        std::ptr::write(
            state,
            CowIndexScan {
                source,
                sides,
                routine,
                combine,
                orderbys,
                last: 0,
                marked: Vec::new(),
                distances: pg_sys::palloc0(std::mem::size_of::<pg_sys::Datum>() * orderbys.max(1))
                    as *mut pg_sys::Datum,
                distance_nulls: pg_sys::palloc0(orderbys.max(1)) as *mut bool,
                memory,
            },
        );
        (*scan).opaque = state.cast();
        scan
    }
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn amrescan(
    scan: pg_sys::IndexScanDesc,
    keys: pg_sys::ScanKey,
    nkeys: std::ffi::c_int,
    orderbys: pg_sys::ScanKey,
    norderbys: std::ffi::c_int,
) {
    // SAFETY: a scan begun by ambeginscan; keys are the executor's.
    unsafe {
        let state = state(scan);
        if state.combine == Combine::DistanceOrder {
            for i in 0..state.orderbys {
                let function = (*orderbys.add(i)).sk_func.fn_oid;
                if pg_sys::get_func_rettype(function) != pg_sys::FLOAT8OID {
                    CowError::new(
                        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                        "distance-ordered scans of a shadowed index the clone has written to need float8 distances",
                    )
                    .raise();
                }
            }
        }
        let merging = matches!(state.combine, Combine::KeyOrder);
        let rescan = state.routine.amrescan.expect("every AM rescans");
        for side in state.sides.iter_mut() {
            let snapshot = if side.from_source {
                &raw mut pg_sys::SnapshotAnyData
            } else {
                (*scan).xs_snapshot
            };
            prepare_inner(
                side.scan,
                (*scan).heapRelation,
                snapshot,
                (*scan).xs_want_itup || merging,
            );
            if !side.from_source {
                (*side.scan).ignore_killed_tuples = (*scan).ignore_killed_tuples;
            }
            compat::share_scan_instrumentation(side.scan, scan);
            side.pending = false;
            side.exhausted = false;
            side.item = Item::empty();
            as_wrapped!(
                (*side.scan).indexRelation,
                pg_call!(rescan(side.scan, keys, nkeys, orderbys, norderbys))
            );
        }
        if state.source.is_some()
            && !(*scan).xs_snapshot.is_null()
            && (*(*scan).xs_snapshot).snapshot_type == pg_sys::SnapshotType::SNAPSHOT_MVCC
        {
            // The source's part takes no predicate locks on its own pages:
            // a serializable reader locks the whole index instead, which
            // every insert into the local part checks.
            compat::predicate_lock_relation((*scan).indexRelation, (*scan).xs_snapshot);
        }
        state.marked.clear();
        pg_sys::MemoryContextReset(state.memory);
    }
}

/// Compares two btree index tuples in index order (per-column DESC and
/// NULLS FIRST options honoured).
///
/// # Safety
/// Both tuples belong to `index`, described by `desc`.
pub(super) unsafe fn key_order(
    index: pg_sys::Relation,
    desc: pg_sys::TupleDesc,
    a: pg_sys::IndexTuple,
    b: pg_sys::IndexTuple,
) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    // SAFETY: guaranteed by the caller.
    unsafe {
        let natts = (*(*index).rd_index).indnkeyatts as usize;
        let mut va = [pg_sys::Datum::from(0); pg_sys::INDEX_MAX_KEYS as usize];
        let mut na = [false; pg_sys::INDEX_MAX_KEYS as usize];
        let mut vb = va;
        let mut nb = na;
        pg_sys::index_deform_tuple(a, desc, va.as_mut_ptr(), na.as_mut_ptr());
        pg_sys::index_deform_tuple(b, desc, vb.as_mut_ptr(), nb.as_mut_ptr());
        for i in 0..natts {
            let option = *(*index).rd_indoption.add(i) as u32;
            let descending = option & pg_sys::INDOPTION_DESC != 0;
            let nulls_first = option & pg_sys::INDOPTION_NULLS_FIRST != 0;
            let order = match (na[i], nb[i]) {
                (true, true) => Ordering::Equal,
                (true, false) if nulls_first => Ordering::Less,
                (true, false) => Ordering::Greater,
                (false, true) if nulls_first => Ordering::Greater,
                (false, true) => Ordering::Less,
                (false, false) => {
                    let compare = pg_sys::index_getprocinfo(index, (i + 1) as i16, BTORDER_PROC);
                    let collation = *(*index).rd_indcollation.add(i);
                    let result =
                        pg_sys::FunctionCall2Coll(compare, collation, va[i], vb[i]).value() as i32;
                    let order = result.cmp(&0);
                    if descending {
                        order.reverse()
                    } else {
                        order
                    }
                }
            };
            if order != Ordering::Equal {
                return order;
            }
        }
        Ordering::Equal
    }
}

/// nbtree.h's support function 1: three-way comparison.
pub(super) const BTORDER_PROC: u16 = 1;

pub(super) fn distance_order(a: &Item, b: &Item, count: usize) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    for i in 0..count {
        let order = match (a.distance_nulls[i], b.distance_nulls[i]) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            (false, false) => a.distances[i].total_cmp(&b.distances[i]),
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    Ordering::Equal
}

impl CowIndexScan {
    /// Makes sure `side` has a pending item unless it is exhausted.
    ///
    /// # Safety
    /// The scan has been rescanned.
    pub(super) unsafe fn fill(
        &mut self,
        side: usize,
        direction: pg_sys::ScanDirection::Type,
        kill: bool,
    ) {
        // SAFETY: guaranteed by the caller; items are copied into the
        // scan's memory context.
        unsafe {
            let s = &mut self.sides[side];
            if s.pending || s.exhausted {
                return;
            }
            // Killed-item hints are the clone's idea of deadness: never for
            // the source's index, as heapam gives them for the index itself.
            (*s.scan).kill_prior_tuple = kill && !s.from_source;
            let get = self
                .routine
                .amgettuple
                .expect("amgettuple is only called when the AM has it");
            if !as_wrapped!((*s.scan).indexRelation, pg_call!(get(s.scan, direction))) {
                s.exhausted = true;
                return;
            }
            // The previous item was returned at the last call, and the
            // executor is done with it.
            s.item.free();
            let old = pg_sys::MemoryContextSwitchTo(self.memory);
            s.item = Item::take(s.scan, s.from_source, self.orderbys);
            pg_sys::MemoryContextSwitchTo(old);
            s.pending = true;
        }
    }

    /// The side whose pending item comes next.
    ///
    /// # Safety
    /// Pending items are valid.
    pub(super) unsafe fn next_side(&self, index: pg_sys::Relation, forward: bool) -> Option<usize> {
        let pending: Vec<usize> = (0..self.sides.len())
            .filter(|&i| self.sides[i].pending)
            .collect();
        match pending.as_slice() {
            [] => None,
            [one] => Some(*one),
            _ => {
                let (a, b) = (&self.sides[0].item, &self.sides[1].item);
                let order = match self.combine {
                    // SAFETY: guaranteed by the caller.
                    Combine::KeyOrder => unsafe { key_order(index, a.itupdesc, a.itup, b.itup) },
                    Combine::DistanceOrder => distance_order(a, b, self.orderbys),
                    _ => std::cmp::Ordering::Less,
                };
                let order = if forward { order } else { order.reverse() };
                Some(if order == std::cmp::Ordering::Greater {
                    1
                } else {
                    0
                })
            }
        }
    }
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn amgettuple(
    scan: pg_sys::IndexScanDesc,
    direction: pg_sys::ScanDirection::Type,
) -> bool {
    // SAFETY: a scan begun by ambeginscan and rescanned; the item returned
    // stays valid until the next call, as the outer scan's must.
    unsafe {
        let state = state(scan);
        let kill = (*scan).kill_prior_tuple;
        let forward = direction != pg_sys::ScanDirection::BackwardScanDirection;
        let chosen = if state.combine == Combine::Single || state.combine == Combine::Concatenate {
            let mut chosen = None;
            for side in 0..state.sides.len() {
                state.fill(side, direction, kill && side == state.last);
                if state.sides[side].pending {
                    chosen = Some(side);
                    break;
                }
            }
            chosen
        } else {
            for side in 0..state.sides.len() {
                state.fill(side, direction, kill && side == state.last);
            }
            state.next_side((*scan).indexRelation, forward)
        };
        let Some(side) = chosen else {
            return false;
        };
        state.last = side;
        let s = &mut state.sides[side];
        s.pending = false;
        let item = s.item;
        (*scan).xs_heaptid = item.tid;
        (*scan).xs_recheck = item.recheck;
        (*scan).xs_itup = item.itup;
        (*scan).xs_itupdesc = item.itupdesc;
        (*scan).xs_hitup = item.hitup;
        (*scan).xs_hitupdesc = item.hitupdesc;
        (*scan).xs_recheckorderby = item.recheck_order_by;
        for i in 0..state.orderbys.min(MAX_ORDER_BYS) {
            *state.distance_nulls.add(i) = item.distance_nulls[i];
            *state.distances.add(i) = pg_sys::Datum::from(item.distances[i].to_bits() as usize);
        }
        (*scan).xs_orderbyvals = state.distances;
        (*scan).xs_orderbynulls = state.distance_nulls;
        true
    }
}

/// The source's part fills a private bitmap with its TIDs, moved into the
/// source TID space page by page (lossy pages stay lossy); the local part
/// adds its own directly.
#[pg_guard]
pub(super) unsafe extern "C-unwind" fn amgetbitmap(
    scan: pg_sys::IndexScanDesc,
    tbm: *mut pg_sys::TIDBitmap,
) -> i64 {
    // SAFETY: a scan begun by ambeginscan and rescanned; the private bitmap
    // and its iterator are freed before returning.
    unsafe {
        let state = state(scan);
        let get = state
            .routine
            .amgetbitmap
            .expect("amgetbitmap is only called when the AM has it");
        let mut found = 0;
        for side in &state.sides {
            if !side.from_source {
                found += as_wrapped!((*side.scan).indexRelation, pg_call!(get(side.scan, tbm)));
                continue;
            }
            let own = compat::tbm_create();
            found += as_wrapped!((*side.scan).indexRelation, pg_call!(get(side.scan, own)));
            let mut tids: Vec<pg_sys::ItemPointerData> = Vec::new();
            compat::for_each_bitmap_page(own, |page| {
                let block = page.block;
                let Some(offsets) = page.offsets else {
                    pg_sys::tbm_add_page(tbm, block + SOURCE_BLOCK_BASE);
                    return;
                };
                tids.clear();
                tids.extend(offsets.iter().map(|&offset| source_tid(block, offset)));
                pg_sys::tbm_add_tuples(tbm, tids.as_mut_ptr(), tids.len() as i32, page.recheck);
            });
            pg_sys::tbm_free(own);
        }
        found
    }
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn amendscan(scan: pg_sys::IndexScanDesc) {
    // SAFETY: a scan begun by ambeginscan; the parts' scans end before the
    // descriptor copy they read is freed.
    unsafe {
        let state = state(scan);
        let end = state.routine.amendscan.expect("every AM ends scans");
        for side in &state.sides {
            as_wrapped!((*side.scan).indexRelation, pg_call!(end(side.scan)));
        }
        if let Some(source) = state.source.take() {
            source.close();
        }
        pg_sys::MemoryContextDelete(state.memory);
        std::ptr::drop_in_place(state as *mut CowIndexScan);
        pg_sys::pfree((*scan).opaque);
        (*scan).opaque = std::ptr::null_mut();
    }
}

/// Marks every part still running, and remembers which items were found
/// but not yet returned: a restore brings them back.
#[pg_guard]
pub(super) unsafe extern "C-unwind" fn ammarkpos(scan: pg_sys::IndexScanDesc) {
    // SAFETY: a scan begun by ambeginscan; only called when the wrapped AM marks.
    unsafe {
        let state = state(scan);
        let mark = state.routine.ammarkpos.expect("marking AM");
        let old = pg_sys::MemoryContextSwitchTo(state.memory);
        for (_, _, item) in state.marked.iter_mut() {
            item.free();
        }
        state.marked.clear();
        for side in &state.sides {
            if !side.exhausted {
                as_wrapped!((*side.scan).indexRelation, pg_call!(mark(side.scan)));
            }
            let item = if side.pending {
                side.item.duplicate()
            } else {
                Item::empty()
            };
            state.marked.push((side.pending, side.exhausted, item));
        }
        pg_sys::MemoryContextSwitchTo(old);
    }
}

#[pg_guard]
pub(super) unsafe extern "C-unwind" fn amrestrpos(scan: pg_sys::IndexScanDesc) {
    // SAFETY: as in ammarkpos.
    unsafe {
        let state = state(scan);
        let restore = state.routine.amrestrpos.expect("marking AM");
        let old = pg_sys::MemoryContextSwitchTo(state.memory);
        for (i, side) in state.sides.iter_mut().enumerate() {
            let Some((pending, exhausted, item)) = state.marked.get(i) else {
                continue;
            };
            side.exhausted = *exhausted;
            side.pending = *pending;
            if !*exhausted {
                as_wrapped!((*side.scan).indexRelation, pg_call!(restore(side.scan)));
            }
            if *pending {
                side.item.free();
                side.item = item.duplicate();
            }
        }
        pg_sys::MemoryContextSwitchTo(old);
    }
}
