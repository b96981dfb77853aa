//! How a clone's TIDs address its two halves.
//!
//! A shadowed table's TIDs with a block number below `SOURCE_BLOCK_BASE`
//! address its local heap (the clone's own file); blocks at or above it
//! address the source's heap at `block - SOURCE_BLOCK_BASE`. Local TIDs are
//! native, so a materialized table needs no index rewrite. The largest
//! table either half can address is therefore 2^31 blocks (16 TB at 8 kB).

use pgrx::pg_sys;

/// First block number of the source TID space.
pub const SOURCE_BLOCK_BASE: u32 = 1 << 31;

/// Where a TID points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TidSpace {
    Local(u32),
    Source(u32),
}

pub fn tid_space(tid: &pg_sys::ItemPointerData) -> TidSpace {
    let block = block_of(tid);
    if block >= SOURCE_BLOCK_BASE {
        TidSpace::Source(block - SOURCE_BLOCK_BASE)
    } else {
        TidSpace::Local(block)
    }
}

pub fn block_of(tid: &pg_sys::ItemPointerData) -> u32 {
    ((tid.ip_blkid.bi_hi as u32) << 16) | tid.ip_blkid.bi_lo as u32
}

pub fn make_tid(block: u32, offset: u16) -> pg_sys::ItemPointerData {
    pg_sys::ItemPointerData {
        ip_blkid: pg_sys::BlockIdData {
            bi_hi: (block >> 16) as u16,
            bi_lo: block as u16,
        },
        ip_posid: offset,
    }
}

/// A source TID as the clone shows it.
pub fn source_tid(block: u32, offset: u16) -> pg_sys::ItemPointerData {
    make_tid(block + SOURCE_BLOCK_BASE, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tids_route_by_block() {
        let source = source_tid(7, 3);
        assert_eq!(tid_space(&source), TidSpace::Source(7));
        assert_eq!(source.ip_posid, 3);
        assert_eq!(tid_space(&make_tid(7, 3)), TidSpace::Local(7));
        assert_eq!(
            tid_space(&make_tid(SOURCE_BLOCK_BASE - 1, 1)),
            TidSpace::Local(SOURCE_BLOCK_BASE - 1)
        );
        assert_eq!(block_of(&make_tid(0x1234_5678, 1)), 0x1234_5678);
    }
}
