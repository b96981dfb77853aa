//! Heap pages as bytes: PostgreSQL's page layout, line pointers and tuple
//! header fields (sanitizing a copied page is `create::sanitize`'s).
//! Pure byte arithmetic, so the sanitizer built on it is unit-tested
//! without a server.
//!
//! ```text
//! page:  | header (24 B) | line pointers (4 B each) -> | free | <- tuples | special |
//! line pointer (little-endian u32): lp_off:15 | lp_flags:2 | lp_len:15
//! tuple header: xmin(4) xmax(4) cid(4) ctid(6) infomask2(2) infomask(2) hoff(1)
//! ```

pub const BLCKSZ: usize = 8192;
pub const PAGE_HEADER_SIZE: usize = 24;
pub const LINE_POINTER_SIZE: usize = 4;
pub const MAXALIGN: usize = 8;

pub const PD_LOWER: usize = 12;
pub const PD_UPPER: usize = 14;
pub const PD_SPECIAL: usize = 16;
pub const PD_FLAGS: usize = 10;
pub const PD_PRUNE_XID: usize = 20;

pub const PD_HAS_FREE_LINES: u16 = 0x0001;
pub const PD_PAGE_FULL: u16 = 0x0002;
pub const PD_ALL_VISIBLE: u16 = 0x0004;

pub const LP_UNUSED: u8 = 0;
pub const LP_NORMAL: u8 = 1;
pub const LP_REDIRECT: u8 = 2;
pub const LP_DEAD: u8 = 3;

pub const T_XMAX: usize = 4;
pub const T_CID: usize = 8;
pub const T_CTID: usize = 12;
pub const T_INFOMASK2: usize = 18;
pub const T_INFOMASK: usize = 20;

pub const HEAP_XMAX_KEYSHR_LOCK: u16 = 0x0010;
pub const HEAP_COMBOCID: u16 = 0x0020;
pub const HEAP_XMAX_EXCL_LOCK: u16 = 0x0040;
pub const HEAP_XMAX_LOCK_ONLY: u16 = 0x0080;
pub const HEAP_XMIN_COMMITTED: u16 = 0x0100;
pub const HEAP_XMIN_INVALID: u16 = 0x0200;
pub const HEAP_XMIN_FROZEN: u16 = HEAP_XMIN_COMMITTED | HEAP_XMIN_INVALID;
pub const HEAP_XMAX_COMMITTED: u16 = 0x0400;
pub const HEAP_XMAX_INVALID: u16 = 0x0800;
pub const HEAP_XMAX_IS_MULTI: u16 = 0x1000;
pub const HEAP_MOVED: u16 = 0xC000;
pub const HEAP_KEYS_UPDATED: u16 = 0x2000;
pub const HEAP_HOT_UPDATED: u16 = 0x4000;
pub const HEAP_ONLY_TUPLE: u16 = 0x8000;

/// Infomask bits describing xmin/xmax state, all rewritten when a tuple is frozen.
pub const XACT_BITS_REWRITTEN: u16 = HEAP_XMAX_KEYSHR_LOCK
    | HEAP_COMBOCID
    | HEAP_XMAX_EXCL_LOCK
    | HEAP_XMAX_LOCK_ONLY
    | HEAP_XMIN_FROZEN
    | HEAP_XMAX_COMMITTED
    | HEAP_XMAX_INVALID
    | HEAP_XMAX_IS_MULTI
    | HEAP_MOVED;

pub fn read_u16(page: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([page[at], page[at + 1]])
}

pub fn write_u16(page: &mut [u8], at: usize, value: u16) {
    page[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

pub fn write_u32(page: &mut [u8], at: usize, value: u32) {
    page[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// One line pointer, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinePointer {
    pub off: u16,
    pub flags: u8,
    pub len: u16,
}

impl LinePointer {
    pub fn decode(raw: u32) -> Self {
        Self {
            off: (raw & 0x7FFF) as u16,
            flags: ((raw >> 15) & 0x3) as u8,
            len: ((raw >> 17) & 0x7FFF) as u16,
        }
    }

    pub fn encode(self) -> u32 {
        (self.off as u32 & 0x7FFF)
            | ((self.flags as u32 & 0x3) << 15)
            | ((self.len as u32 & 0x7FFF) << 17)
    }
}

/// Why a page cannot be sanitized: its header or line pointers are not
/// those of a heap page. The caller reports it as corruption.
#[derive(Debug, PartialEq, Eq)]
pub struct MalformedPage(pub String);

/// Number of line pointers on a page (PageGetMaxOffsetNumber); 0 for an
/// all-zero (never initialised) page.
pub fn max_offset(page: &[u8]) -> usize {
    let lower = read_u16(page, PD_LOWER) as usize;
    lower.saturating_sub(PAGE_HEADER_SIZE) / LINE_POINTER_SIZE
}

/// PD_ALL_VISIBLE: VACUUM found every tuple on the page visible to all.
pub fn is_all_visible(page: &[u8]) -> bool {
    read_u16(page, PD_FLAGS) & PD_ALL_VISIBLE != 0
}

pub fn line_pointer(page: &[u8], offset: usize) -> LinePointer {
    let at = PAGE_HEADER_SIZE + (offset - 1) * LINE_POINTER_SIZE;
    LinePointer::decode(u32::from_le_bytes(
        page[at..at + 4].try_into().expect("4 bytes"),
    ))
}

pub fn set_line_pointer(page: &mut [u8], offset: usize, lp: LinePointer) {
    let at = PAGE_HEADER_SIZE + (offset - 1) * LINE_POINTER_SIZE;
    write_u32(page, at, lp.encode());
}

pub fn check_layout(page: &[u8]) -> Result<(), MalformedPage> {
    let lower = read_u16(page, PD_LOWER) as usize;
    let upper = read_u16(page, PD_UPPER) as usize;
    let special = read_u16(page, PD_SPECIAL) as usize;
    if lower < PAGE_HEADER_SIZE || lower > upper || upper > special || special > BLCKSZ {
        return Err(MalformedPage(format!(
            "bad page bounds lower={lower} upper={upper} special={special}"
        )));
    }
    for offset in 1..=max_offset(page) {
        let lp = line_pointer(page, offset);
        if lp.flags == LP_NORMAL
            && ((lp.off as usize) < upper || lp.off as usize + lp.len as usize > special)
        {
            return Err(MalformedPage(format!(
                "line pointer {offset} points outside the tuple area"
            )));
        }
    }
    Ok(())
}
