//! Materializations running now, in shared memory: what `cow.materialize`
//! waits on, what `cow.materialize_progress` shows, how a job is cancelled,
//! and which transaction is copying rows into a clone (its copies are not
//! another writer's: a unique check must not wait for them).
//!
//! Only progress lives here: what is queued and what is done are in the
//! catalog (`record`), so a restart loses nothing but the numbers.

use pgrx::lwlock::PgLwLock;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_guard, pg_shmem_init, pg_sys};

/// Materializations that can run at once, cluster-wide.
pub const MAX_JOBS: usize = 8;
const NAME_LEN: usize = 64;
const ERROR_LEN: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Free = 0,
    Starting,
    Copying,
    Switching,
    WaitingForSnapshots,
    Finishing,
    Done,
    Failed,
    Cancelled,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::Free => "free",
            Phase::Starting => "starting",
            Phase::Copying => "copying",
            Phase::Switching => "switching",
            Phase::WaitingForSnapshots => "waiting for older snapshots",
            Phase::Finishing => "finishing",
            Phase::Done => "done",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
        }
    }

    pub fn is_over(self) -> bool {
        matches!(self, Phase::Done | Phase::Failed | Phase::Cancelled)
    }
}

#[derive(Clone, Copy)]
pub struct Job {
    pub clone: u32,
    pub pid: i32,
    pub phase: Phase,
    pub cancel: bool,
    /// The transaction copying rows into the clone now (0: none).
    pub copying_xid: u32,
    pub relation: [u8; NAME_LEN],
    pub relation_blocks_done: u64,
    pub relation_blocks_total: u64,
    pub relations_done: u32,
    pub relations_total: u32,
    /// Source bytes copied by this job (of about `bytes_total`), and since when.
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub started_at: i64,
    pub relation_started_at: i64,
    pub error: [u8; ERROR_LEN],
}

impl Default for Job {
    fn default() -> Self {
        Job {
            clone: 0,
            pid: 0,
            phase: Phase::Free,
            cancel: false,
            copying_xid: 0,
            relation: [0; NAME_LEN],
            relation_blocks_done: 0,
            relation_blocks_total: 0,
            relations_done: 0,
            relations_total: 0,
            bytes_done: 0,
            bytes_total: 0,
            started_at: 0,
            relation_started_at: 0,
            error: [0; ERROR_LEN],
        }
    }
}

fn to_fixed<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let mut end = text.len().min(N - 1);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out[..end].copy_from_slice(&text.as_bytes()[..end]);
    out
}

fn from_fixed(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

impl Job {
    pub fn relation_name(&self) -> String {
        from_fixed(&self.relation)
    }

    pub fn error_text(&self) -> String {
        from_fixed(&self.error)
    }

    /// A process works on the job now (one ended without finishing it has
    /// pid 0 and a phase not yet over).
    pub fn is_running(&self) -> bool {
        self.pid != 0 && !self.phase.is_over()
    }
}

#[derive(Clone, Copy, Default)]
pub struct Jobs {
    slots: [Job; MAX_JOBS],
}

// SAFETY: plain data, no pointers; accessed only under its LWLock.
unsafe impl PGRXSharedMemory for Jobs {}

static JOBS: PgLwLock<Jobs> = unsafe { PgLwLock::new(c"cowclone_materialize_jobs") };

/// Requests the shared memory; from `_PG_init` while preloading.
#[allow(unexpected_cfgs)]
pub fn init() {
    pg_shmem_init!(JOBS);
}

/// Claims the slot of `clone` for this process (a restarted job takes over
/// its old slot). False if another process runs the job, or every slot is
/// taken by a job that runs or whose process went without ending it.
pub fn claim(clone: u32, pid: i32, now: i64) -> bool {
    let mut jobs = JOBS.exclusive();
    if jobs
        .slots
        .iter()
        .any(|j| j.clone == clone && j.pid != 0 && j.pid != pid)
    {
        return false; // another process runs this job
    }
    let index = jobs
        .slots
        .iter()
        .position(|j| j.clone == clone)
        .or_else(|| jobs.slots.iter().position(|j| j.phase == Phase::Free))
        .or_else(|| {
            jobs.slots
                .iter()
                .position(|j| j.pid == 0 && j.phase.is_over())
        });
    let Some(index) = index else {
        return false;
    };
    jobs.slots[index] = Job {
        clone,
        pid,
        phase: Phase::Starting,
        started_at: now,
        ..Job::default()
    };
    true
}

/// A copy of the job of `clone`, if one has a slot.
pub fn get(clone: u32) -> Option<Job> {
    JOBS.share()
        .slots
        .iter()
        .find(|j| j.clone == clone)
        .copied()
}

/// Every job with a slot.
pub fn all() -> Vec<Job> {
    JOBS.share()
        .slots
        .iter()
        .filter(|j| j.clone != 0)
        .copied()
        .collect()
}

/// Changes the job of `clone` (if it has a slot).
pub fn update(clone: u32, change: impl FnOnce(&mut Job)) {
    let mut jobs = JOBS.exclusive();
    if let Some(job) = jobs.slots.iter_mut().find(|j| j.clone == clone) {
        change(job);
    }
}

pub fn set_relation(job: &mut Job, name: &str, blocks: u64, now: i64) {
    job.relation = to_fixed(name);
    job.relation_blocks_total = blocks;
    job.relation_blocks_done = 0;
    job.relation_started_at = now;
}

/// Ends a job: its process is gone, its outcome stays readable until the
/// slot is needed again.
pub fn finish(clone: u32, phase: Phase, error: Option<&str>) {
    update(clone, |job| {
        job.phase = phase;
        job.pid = 0;
        job.copying_xid = 0;
        if let Some(e) = error {
            job.error = to_fixed(e);
        }
    });
}

/// Whether `xid` is copying rows into a clone of this cluster: an
/// in-progress row it inserted is a copy of a source row the clone still
/// reads, which a unique check of that source row already judged.
pub fn is_copying(xid: pg_sys::TransactionId) -> bool {
    let xid = u32::from(xid);
    xid != 0 && JOBS.share().slots.iter().any(|j| j.copying_xid == xid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cut_at_a_character_boundary() {
        let long = "é".repeat(40);
        let fixed: [u8; NAME_LEN] = to_fixed(&long);
        assert_eq!(from_fixed(&fixed), "é".repeat(31));
        assert_eq!(from_fixed(&to_fixed::<8>("ab")), "ab");
    }
}
