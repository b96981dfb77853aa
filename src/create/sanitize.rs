//! Sanitizing a copied heap page as of the clone point: tuples T sees are
//! kept frozen, tuples it does not see are removed, and line pointers never
//! move (so TIDs stay valid).
//!
//! Nothing here touches PostgreSQL: the caller judges visibility on the
//! source's buffer (where hint bits may be set) and hands the verdicts in,
//! so every rule below is unit-tested without a server.

use crate::pg::page::*;

/// The header fields of the tuple at `offset` that chain analysis needs.
#[derive(Clone, Copy, Debug)]
struct TupleFlags {
    heap_only: bool,
    hot_updated: bool,
    /// Offset of the next chain member when it is on the same page.
    next_on_page: Option<usize>,
}

fn tuple_flags(page: &[u8], block: u32, lp: LinePointer) -> TupleFlags {
    let t = lp.off as usize;
    let infomask2 = read_u16(page, t + T_INFOMASK2);
    let ctid_block =
        ((read_u16(page, t + T_CTID) as u32) << 16) | read_u16(page, t + T_CTID + 2) as u32;
    let ctid_offset = read_u16(page, t + T_CTID + 4) as usize;
    TupleFlags {
        heap_only: infomask2 & HEAP_ONLY_TUPLE != 0,
        hot_updated: infomask2 & HEAP_HOT_UPDATED != 0,
        next_on_page: (ctid_block == block).then_some(ctid_offset),
    }
}

/// What sanitizing did to one page.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SanitizeStats {
    pub kept: usize,
    pub removed: usize,
    pub redirected: usize,
}

/// Rewrites a copy of a heap page so that it holds exactly the tuples
/// `visible(offset)` says the clone point sees, each frozen with no deleter.
///
/// Line pointers that indexes may reference keep their meaning, because the
/// copied catalog indexes still point at them: a removed tuple with index
/// entries becomes LP_DEAD (never LP_UNUSED, which a later insert could reuse
/// under a stale index entry); a HOT chain whose root is gone but which has a
/// member visible at the clone point gets its root redirected to that member,
/// exactly as pruning would. Removed heap-only tuples have no index entries
/// and become LP_UNUSED.
pub fn sanitize_heap_page(
    page: &mut [u8],
    block: u32,
    visible: &dyn Fn(usize) -> bool,
) -> Result<SanitizeStats, MalformedPage> {
    if page.len() != BLCKSZ {
        return Err(MalformedPage(format!("page of {} bytes", page.len())));
    }
    if read_u16(page, PD_UPPER) == 0 {
        return Ok(SanitizeStats::default()); // a new, never-initialised page
    }
    check_layout(page)?;
    let n = max_offset(page);
    let pointers: Vec<LinePointer> = (1..=n).map(|o| line_pointer(page, o)).collect();
    let flags: Vec<Option<TupleFlags>> = pointers
        .iter()
        .map(|lp| (lp.flags == LP_NORMAL).then(|| tuple_flags(page, block, *lp)))
        .collect();
    let is_visible: Vec<bool> = (1..=n)
        .map(|o| pointers[o - 1].flags == LP_NORMAL && visible(o))
        .collect();

    // The member of the HOT chain starting at `start` that the clone point sees.
    let visible_member = |start: usize| -> Option<usize> {
        let mut current = start;
        for _ in 0..n {
            if current == 0 || current > n {
                return None;
            }
            let f = flags[current - 1]?;
            if is_visible[current - 1] {
                return Some(current);
            }
            if !f.hot_updated {
                return None;
            }
            let next = f.next_on_page?;
            if next == current
                || !flags
                    .get(next.wrapping_sub(1))
                    .copied()
                    .flatten()
                    .is_some_and(|nf| nf.heap_only)
            {
                return None;
            }
            current = next;
        }
        None
    };

    let mut new_pointers = pointers.clone();
    let mut stats = SanitizeStats::default();
    for offset in 1..=n {
        let lp = pointers[offset - 1];
        let new = &mut new_pointers[offset - 1];
        match lp.flags {
            LP_NORMAL => {
                let f = flags[offset - 1].expect("normal pointers have flags");
                if is_visible[offset - 1] {
                    stats.kept += 1;
                } else if f.heap_only {
                    *new = LinePointer {
                        off: 0,
                        flags: LP_UNUSED,
                        len: 0,
                    };
                    stats.removed += 1;
                } else if let Some(member) = visible_member(offset) {
                    *new = LinePointer {
                        off: member as u16,
                        flags: LP_REDIRECT,
                        len: 0,
                    };
                    stats.removed += 1;
                    stats.redirected += 1;
                } else {
                    *new = LinePointer {
                        off: 0,
                        flags: LP_DEAD,
                        len: 0,
                    };
                    stats.removed += 1;
                }
            }
            LP_REDIRECT => match visible_member(lp.off as usize) {
                Some(member) => {
                    *new = LinePointer {
                        off: member as u16,
                        flags: LP_REDIRECT,
                        len: 0,
                    };
                    stats.redirected += 1;
                }
                None => {
                    *new = LinePointer {
                        off: 0,
                        flags: LP_DEAD,
                        len: 0,
                    }
                }
            },
            LP_DEAD => {
                *new = LinePointer {
                    off: 0,
                    flags: LP_DEAD,
                    len: 0,
                }
            }
            _ => {
                *new = LinePointer {
                    off: 0,
                    flags: LP_UNUSED,
                    len: 0,
                }
            }
        }
    }

    // A redirect must land on a tuple that stays: kept tuples are exactly the visible ones.
    for (offset, lp) in new_pointers.iter().enumerate() {
        if lp.flags == LP_NORMAL {
            freeze_tuple(page, block, offset + 1, *lp);
        }
    }
    compact(page, &mut new_pointers);
    for (offset, lp) in new_pointers.iter().enumerate() {
        set_line_pointer(page, offset + 1, *lp);
    }
    let mut pd_flags =
        read_u16(page, PD_FLAGS) & !(PD_PAGE_FULL | PD_ALL_VISIBLE | PD_HAS_FREE_LINES);
    if new_pointers.iter().any(|lp| lp.flags == LP_UNUSED) {
        pd_flags |= PD_HAS_FREE_LINES;
    }
    write_u16(page, PD_FLAGS, pd_flags);
    write_u32(page, PD_PRUNE_XID, 0);
    Ok(stats)
}

/// Marks a kept tuple frozen with no deleter or locker, its ctid pointing to itself.
fn freeze_tuple(page: &mut [u8], block: u32, offset: usize, lp: LinePointer) {
    let t = lp.off as usize;
    let infomask = read_u16(page, t + T_INFOMASK) & !XACT_BITS_REWRITTEN;
    write_u16(
        page,
        t + T_INFOMASK,
        infomask | HEAP_XMIN_FROZEN | HEAP_XMAX_INVALID,
    );
    let infomask2 = read_u16(page, t + T_INFOMASK2) & !(HEAP_KEYS_UPDATED | HEAP_HOT_UPDATED);
    write_u16(page, t + T_INFOMASK2, infomask2);
    write_u32(page, t + T_XMAX, 0);
    write_u32(page, t + T_CID, 0);
    write_u16(page, t + T_CTID, (block >> 16) as u16);
    write_u16(page, t + T_CTID + 2, block as u16);
    write_u16(page, t + T_CTID + 4, offset as u16);
}

/// Packs the surviving tuples against the special space, as
/// PageRepairFragmentation does, and updates `pd_upper`.
fn compact(page: &mut [u8], pointers: &mut [LinePointer]) {
    let special = read_u16(page, PD_SPECIAL) as usize;
    let mut items: Vec<(usize, Vec<u8>)> = pointers
        .iter()
        .enumerate()
        .filter(|(_, lp)| lp.flags == LP_NORMAL)
        .map(|(i, lp)| {
            (
                i,
                page[lp.off as usize..lp.off as usize + lp.len as usize].to_vec(),
            )
        })
        .collect();
    // Keep the physical order stable: highest original offset goes first, nearest the end.
    items.sort_by_key(|(i, _)| std::cmp::Reverse(pointers[*i].off));
    let lower = PAGE_HEADER_SIZE + pointers.len() * LINE_POINTER_SIZE;
    let mut upper = special;
    for (i, bytes) in &items {
        let aligned = bytes.len().div_ceil(MAXALIGN) * MAXALIGN;
        upper -= aligned;
        page[upper..upper + aligned].fill(0);
        page[upper..upper + bytes.len()].copy_from_slice(bytes);
        pointers[*i].off = upper as u16;
    }
    page[lower..upper].fill(0);
    write_u16(page, PD_UPPER, upper as u16);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a heap page from tuples given as (infomask2, ctid offset, payload).
    struct PageBuilder {
        page: Vec<u8>,
        block: u32,
    }

    impl PageBuilder {
        fn new(block: u32) -> Self {
            let mut page = vec![0u8; BLCKSZ];
            write_u16(&mut page, PD_LOWER, PAGE_HEADER_SIZE as u16);
            write_u16(&mut page, PD_UPPER, BLCKSZ as u16);
            write_u16(&mut page, PD_SPECIAL, BLCKSZ as u16);
            write_u16(&mut page, 18, (BLCKSZ as u16) | 4);
            Self { page, block }
        }

        fn push_pointer(&mut self, lp: LinePointer) -> usize {
            let lower = read_u16(&self.page, PD_LOWER) as usize;
            write_u32(&mut self.page, lower, lp.encode());
            write_u16(&mut self.page, PD_LOWER, (lower + LINE_POINTER_SIZE) as u16);
            (lower - PAGE_HEADER_SIZE) / LINE_POINTER_SIZE + 1
        }

        fn tuple(&mut self, infomask2: u16, infomask: u16, next: usize, payload: &[u8]) -> usize {
            let len = 24 + payload.len();
            let upper = read_u16(&self.page, PD_UPPER) as usize - len.div_ceil(MAXALIGN) * MAXALIGN;
            let t = upper;
            write_u32(&mut self.page, t, 100); // xmin
            write_u32(&mut self.page, t + T_XMAX, 200);
            write_u16(&mut self.page, t + T_CTID, (self.block >> 16) as u16);
            write_u16(&mut self.page, t + T_CTID + 2, self.block as u16);
            write_u16(&mut self.page, t + T_CTID + 4, next as u16);
            write_u16(&mut self.page, t + T_INFOMASK2, infomask2 | 1);
            write_u16(&mut self.page, t + T_INFOMASK, infomask);
            self.page[t + 22] = 24;
            self.page[t + 24..t + len].copy_from_slice(payload);
            write_u16(&mut self.page, PD_UPPER, upper as u16);
            self.push_pointer(LinePointer {
                off: upper as u16,
                flags: LP_NORMAL,
                len: len as u16,
            })
        }

        fn payload(page: &[u8], offset: usize) -> Vec<u8> {
            let lp = line_pointer(page, offset);
            page[lp.off as usize + 24..lp.off as usize + lp.len as usize].to_vec()
        }
    }

    fn infomask_of(page: &[u8], offset: usize) -> (u16, u16, u32, usize) {
        let t = line_pointer(page, offset).off as usize;
        (
            read_u16(page, t + T_INFOMASK),
            read_u16(page, t + T_INFOMASK2),
            u32::from_le_bytes(page[t + T_XMAX..t + T_XMAX + 4].try_into().unwrap()),
            read_u16(page, t + T_CTID + 4) as usize,
        )
    }

    #[test]
    fn visible_tuples_are_kept_frozen_without_deleter() {
        let mut b = PageBuilder::new(7);
        let a = b.tuple(0, 0x0100 | 0x0400, 1, b"alpha"); // deleted by an xact T does not see
        let gone = b.tuple(0, 0x0100, 2, b"beta");
        let mut page = b.page;
        let stats = sanitize_heap_page(&mut page, 7, &|o| o == a).unwrap();
        assert_eq!(
            stats,
            SanitizeStats {
                kept: 1,
                removed: 1,
                redirected: 0
            }
        );
        let (infomask, infomask2, xmax, ctid) = infomask_of(&page, a);
        assert_eq!(infomask & HEAP_XMIN_FROZEN, HEAP_XMIN_FROZEN);
        assert_eq!(
            infomask & (HEAP_XMAX_INVALID | HEAP_XMAX_COMMITTED),
            HEAP_XMAX_INVALID
        );
        assert_eq!(infomask2 & (HEAP_HOT_UPDATED | HEAP_KEYS_UPDATED), 0);
        assert_eq!((xmax, ctid), (0, a));
        assert_eq!(PageBuilder::payload(&page, a), b"alpha");
        // An indexed tuple the clone point does not see: dead, never reusable.
        assert_eq!(line_pointer(&page, gone).flags, LP_DEAD);
        assert_eq!(max_offset(&page), 2, "line pointer numbers never move");
    }

    #[test]
    fn hot_chain_root_is_redirected_to_the_visible_member() {
        let mut b = PageBuilder::new(0);
        // root (dead at T) -> v2 (visible at T) -> v3 (inserted after T)
        let root = b.tuple(HEAP_HOT_UPDATED, 0x0100, 2, b"v1");
        let v2 = b.tuple(HEAP_ONLY_TUPLE | HEAP_HOT_UPDATED, 0x0100, 3, b"v2");
        let v3 = b.tuple(HEAP_ONLY_TUPLE, 0, 3, b"v3");
        let mut page = b.page;
        let stats = sanitize_heap_page(&mut page, 0, &|o| o == v2).unwrap();
        assert_eq!(
            stats,
            SanitizeStats {
                kept: 1,
                removed: 2,
                redirected: 1
            }
        );
        assert_eq!(
            line_pointer(&page, root),
            LinePointer {
                off: v2 as u16,
                flags: LP_REDIRECT,
                len: 0
            }
        );
        assert_eq!(
            line_pointer(&page, v3).flags,
            LP_UNUSED,
            "heap-only tuples have no index entries"
        );
        let (_, infomask2, _, ctid) = infomask_of(&page, v2);
        assert_ne!(
            infomask2 & HEAP_ONLY_TUPLE,
            0,
            "the member stays heap-only behind the redirect"
        );
        assert_eq!(ctid, v2);
        assert_eq!(PageBuilder::payload(&page, v2), b"v2");
    }

    #[test]
    fn existing_redirect_follows_the_chain_or_dies() {
        let mut b = PageBuilder::new(3);
        let redirect = b.push_pointer(LinePointer {
            off: 2,
            flags: LP_REDIRECT,
            len: 0,
        });
        let member = b.tuple(HEAP_ONLY_TUPLE | HEAP_HOT_UPDATED, 0x0100, 3, b"m1");
        let newest = b.tuple(HEAP_ONLY_TUPLE, 0, 3, b"m2");
        let pristine = b.page.clone();

        let mut page = pristine.clone();
        sanitize_heap_page(&mut page, 3, &|o| o == newest).unwrap();
        assert_eq!(
            line_pointer(&page, redirect),
            LinePointer {
                off: newest as u16,
                flags: LP_REDIRECT,
                len: 0
            }
        );
        assert_eq!(line_pointer(&page, member).flags, LP_UNUSED);

        let mut page = pristine;
        sanitize_heap_page(&mut page, 3, &|_| false).unwrap();
        assert_eq!(
            line_pointer(&page, redirect).flags,
            LP_DEAD,
            "no member visible at T"
        );
        assert_eq!(line_pointer(&page, newest).flags, LP_UNUSED);
        assert_ne!(read_u16(&page, PD_FLAGS) & PD_HAS_FREE_LINES, 0);
    }

    #[test]
    fn compaction_keeps_every_surviving_byte_and_frees_the_rest() {
        let mut b = PageBuilder::new(1);
        let big = vec![0xAB; 3000];
        let doomed = b.tuple(0, 0, 1, &big);
        let keep1 = b.tuple(0, 0, 2, b"first survivor");
        let keep2 = b.tuple(0, 0, 3, &[0xCD; 500]);
        let mut page = b.page;
        let upper_before = read_u16(&page, PD_UPPER);
        sanitize_heap_page(&mut page, 1, &|o| o != doomed).unwrap();
        assert!(
            read_u16(&page, PD_UPPER) >= upper_before + 3000,
            "the removed tuple's space is free"
        );
        assert_eq!(PageBuilder::payload(&page, keep1), b"first survivor");
        assert_eq!(PageBuilder::payload(&page, keep2), vec![0xCD; 500]);
        let lower = read_u16(&page, PD_LOWER) as usize;
        let upper = read_u16(&page, PD_UPPER) as usize;
        assert!(page[lower..upper].iter().all(|b| *b == 0));
    }

    #[test]
    fn new_and_malformed_pages() {
        let mut zero = vec![0u8; BLCKSZ];
        assert_eq!(
            sanitize_heap_page(&mut zero, 0, &|_| true).unwrap(),
            SanitizeStats::default()
        );
        let mut bad = PageBuilder::new(0).page;
        write_u16(&mut bad, PD_LOWER, 9000);
        assert!(sanitize_heap_page(&mut bad, 0, &|_| true).is_err());
        assert!(sanitize_heap_page(&mut [0u8; 100], 0, &|_| true).is_err());
    }
}
