//! Turning a source page, as the clone sees it, into a page of the clone's
//! own heap (pure byte arithmetic, unit-tested without a server).
//!
//! A copy keeps each source tuple's offset, so the copy of source row
//! `(b, o)` is `(p, o)` on the page `p` the copy went to: a tombstone
//! written while the copy is made finds its copy without a map of rows.
//! Every kept tuple is inserted by the copying transaction (its xmin), so
//! nothing sees the copies until that transaction commits, and after that
//! exactly the snapshots that see the switch do (the others are refused,
//! `read::clone_view`). A row the clone moved or deleted gets the writer
//! as its deleter and, if moved, its successor as its `ctid`: in the heap it
//! then looks exactly as if the clone's writer had updated it there.

use crate::pg::page::*;

/// infomask bit: the tuple is the result of an update.
const HEAP_UPDATED: u16 = 0x2000;

/// What a copied source row must say about the clone's write to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deleter {
    pub xid: u32,
    /// The row's next version (a local TID), or None for a delete; a
    /// cross-partition move is a delete whose ctid is heapam's marker.
    pub successor: Option<(u32, u16)>,
    pub moved_partitions: bool,
}

/// The offsets a copy keeps, ascending.
pub struct CopiedPage {
    pub kept: Vec<u16>,
}

fn set_ctid(page: &mut [u8], at: usize, block: u32, offset: u16) {
    write_u16(page, at + T_CTID, (block >> 16) as u16);
    write_u16(page, at + T_CTID + 2, (block & 0xFFFF) as u16);
    write_u16(page, at + T_CTID + 4, offset);
}

/// heapam's ItemPointerSetMovedPartitions.
const MOVED_PARTITIONS_BLOCK: u32 = 0xFFFF_FFFF;
const MOVED_PARTITIONS_OFFSET: u16 = 0xFFFD;

/// Sets a copied tuple's deleter, as heapam's update or delete would have.
pub fn set_deleter(page: &mut [u8], offset: u16, block: u32, deleter: &Deleter) {
    let lp = line_pointer(page, offset as usize);
    let at = lp.off as usize;
    write_u32(page, at + T_XMAX, deleter.xid);
    write_u32(page, at + T_CID, 0);
    let infomask = read_u16(page, at + T_INFOMASK)
        & !(HEAP_XMAX_INVALID
            | HEAP_XMAX_COMMITTED
            | HEAP_XMAX_IS_MULTI
            | HEAP_XMAX_LOCK_ONLY
            | HEAP_XMAX_KEYSHR_LOCK
            | HEAP_XMAX_EXCL_LOCK
            | HEAP_COMBOCID);
    write_u16(page, at + T_INFOMASK, infomask);
    let infomask2 = read_u16(page, at + T_INFOMASK2) | HEAP_KEYS_UPDATED;
    write_u16(page, at + T_INFOMASK2, infomask2);
    match (deleter.successor, deleter.moved_partitions) {
        (_, true) => set_ctid(page, at, MOVED_PARTITIONS_BLOCK, MOVED_PARTITIONS_OFFSET),
        (Some((b, o)), false) => set_ctid(page, at, b, o),
        (None, false) => set_ctid(page, at, block, offset),
    }
}

/// The deleter a copied tuple has now (xmax 0 and the invalid bit: none).
#[cfg(test)]
pub fn deleter_xid(page: &[u8], offset: u16) -> Option<u32> {
    let lp = line_pointer(page, offset as usize);
    if lp.flags != LP_NORMAL {
        return None;
    }
    let at = lp.off as usize;
    let xmax = u32::from_le_bytes(page[at + T_XMAX..at + T_XMAX + 4].try_into().ok()?);
    (read_u16(page, at + T_INFOMASK) & HEAP_XMAX_INVALID == 0 && xmax != 0).then_some(xmax)
}

/// Rewrites a copy of source page `bytes` as the page `block` of the
/// clone's heap: the tuples `visible(offset)` says the clone sees are kept
/// at their offsets, inserted by `xmin` (command 0) and flattened out of
/// any HOT chain (each gets its own index entries); every other line
/// pointer becomes unused, and trailing unused ones are cut off. `deleter`
/// gives what the clone wrote to a kept row.
pub fn copy_page(
    bytes: &[u8],
    block: u32,
    xmin: u32,
    visible: &dyn Fn(u16) -> bool,
    deleter: &dyn Fn(u16) -> Option<Deleter>,
) -> Result<(Vec<u8>, CopiedPage), MalformedPage> {
    if bytes.len() != BLCKSZ {
        return Err(MalformedPage(format!("page of {} bytes", bytes.len())));
    }
    let mut page = bytes.to_vec();
    if read_u16(&page, PD_UPPER) == 0 {
        return Ok((page, CopiedPage { kept: Vec::new() }));
    }
    check_layout(&page)?;
    let n = max_offset(&page);
    let mut kept = Vec::new();
    for offset in 1..=n as u16 {
        let lp = line_pointer(&page, offset as usize);
        if lp.flags != LP_NORMAL || !visible(offset) {
            set_line_pointer(
                &mut page,
                offset as usize,
                LinePointer {
                    off: 0,
                    flags: LP_UNUSED,
                    len: 0,
                },
            );
            continue;
        }
        let at = lp.off as usize;
        write_u32(&mut page, at, xmin);
        write_u32(&mut page, at + T_XMAX, 0);
        write_u32(&mut page, at + T_CID, 0);
        let infomask = read_u16(&page, at + T_INFOMASK) & !(XACT_BITS_REWRITTEN | HEAP_UPDATED);
        write_u16(&mut page, at + T_INFOMASK, infomask | HEAP_XMAX_INVALID);
        let infomask2 = read_u16(&page, at + T_INFOMASK2)
            & !(HEAP_HOT_UPDATED | HEAP_ONLY_TUPLE | HEAP_KEYS_UPDATED);
        write_u16(&mut page, at + T_INFOMASK2, infomask2);
        set_ctid(&mut page, at, block, offset);
        if let Some(d) = deleter(offset) {
            set_deleter(&mut page, offset, block, &d);
        }
        kept.push(offset);
    }
    let last = kept.last().copied().unwrap_or(0) as usize;
    write_u16(
        &mut page,
        PD_LOWER,
        (PAGE_HEADER_SIZE + last * LINE_POINTER_SIZE) as u16,
    );
    let flags = read_u16(&page, PD_FLAGS) & !(PD_ALL_VISIBLE | PD_PAGE_FULL | PD_HAS_FREE_LINES);
    write_u16(&mut page, PD_FLAGS, flags);
    write_u32(&mut page, PD_PRUNE_XID, 0);
    // pd_lsn and the checksum are the buffer manager's.
    page[0..10].fill(0);
    Ok((page, CopiedPage { kept }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page with `n` tuples of 32 bytes, the ones in `hot` heap-only.
    fn page_with(n: usize, hot: &[usize]) -> Vec<u8> {
        let mut page = vec![0u8; BLCKSZ];
        let mut upper = BLCKSZ;
        for o in 1..=n {
            upper -= 32;
            set_line_pointer(
                &mut page,
                o,
                LinePointer {
                    off: upper as u16,
                    flags: LP_NORMAL,
                    len: 32,
                },
            );
            write_u32(&mut page, upper, 100 + o as u32);
            write_u32(&mut page, upper + T_XMAX, 900);
            write_u16(
                &mut page,
                upper + T_INFOMASK,
                HEAP_XMIN_COMMITTED | HEAP_UPDATED,
            );
            let mask2 = if hot.contains(&o) {
                HEAP_ONLY_TUPLE
            } else {
                HEAP_HOT_UPDATED
            } | 3;
            write_u16(&mut page, upper + T_INFOMASK2, mask2);
        }
        write_u16(&mut page, PD_LOWER, (PAGE_HEADER_SIZE + n * 4) as u16);
        write_u16(&mut page, PD_UPPER, upper as u16);
        write_u16(&mut page, PD_SPECIAL, BLCKSZ as u16);
        write_u16(&mut page, PD_FLAGS, PD_ALL_VISIBLE);
        page
    }

    fn xmin(page: &[u8], offset: usize) -> u32 {
        let at = line_pointer(page, offset).off as usize;
        u32::from_le_bytes(page[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn copies_keep_offsets_belong_to_the_copier_and_leave_hot_chains() {
        let source = page_with(4, &[3]);
        let (copy, copied) = copy_page(&source, 7, 555, &|o| o != 2 && o != 4, &|_| None).unwrap();
        assert_eq!(copied.kept, vec![1, 3]);
        assert_eq!(max_offset(&copy), 3, "trailing unused pointers are cut");
        assert_eq!(line_pointer(&copy, 2).flags, LP_UNUSED);
        for o in [1usize, 3] {
            assert_eq!(xmin(&copy, o), 555);
            assert_eq!(deleter_xid(&copy, o as u16), None);
            let at = line_pointer(&copy, o).off as usize;
            let mask2 = read_u16(&copy, at + T_INFOMASK2);
            assert_eq!(mask2 & (HEAP_ONLY_TUPLE | HEAP_HOT_UPDATED), 0);
            assert_eq!(mask2 & 0x07FF, 3, "the attribute count stays");
            assert_eq!(read_u16(&copy, at + T_INFOMASK) & HEAP_XMIN_COMMITTED, 0);
            assert_eq!(read_u16(&copy, at + T_CTID + 2) as u32, 7);
            assert_eq!(read_u16(&copy, at + T_CTID + 4) as usize, o);
        }
        assert_eq!(read_u16(&copy, PD_FLAGS) & PD_ALL_VISIBLE, 0);
    }

    #[test]
    fn a_written_row_gets_its_writer_and_successor() {
        let source = page_with(2, &[]);
        let moved = Deleter {
            xid: 777,
            successor: Some((70_000, 5)),
            moved_partitions: false,
        };
        let (mut copy, _) =
            copy_page(&source, 3, 555, &|_| true, &|o| (o == 1).then_some(moved)).unwrap();
        assert_eq!(deleter_xid(&copy, 1), Some(777));
        assert_eq!(deleter_xid(&copy, 2), None);
        let at = line_pointer(&copy, 1).off as usize;
        let block =
            ((read_u16(&copy, at + T_CTID) as u32) << 16) | read_u16(&copy, at + T_CTID + 2) as u32;
        assert_eq!((block, read_u16(&copy, at + T_CTID + 4)), (70_000, 5));
        let deleted = Deleter {
            xid: 778,
            successor: None,
            moved_partitions: false,
        };
        set_deleter(&mut copy, 2, 3, &deleted);
        assert_eq!(deleter_xid(&copy, 2), Some(778));
    }

    #[test]
    fn foreign_pages_are_refused() {
        assert!(copy_page(&[0u8; 100], 0, 1, &|_| true, &|_| None).is_err());
        let mut bad = page_with(1, &[]);
        write_u16(&mut bad, PD_UPPER, 10);
        assert!(copy_page(&bad, 0, 1, &|_| true, &|_| None).is_err());
    }
}
