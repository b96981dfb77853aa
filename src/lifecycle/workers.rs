//! Background workers. One for now: at server start it removes what a clone
//! interrupted by a crash left behind (see `reconcile`).

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::prelude::*;

use crate::lifecycle::reconcile;

pub fn register() {
    BackgroundWorkerBuilder::new("cowclone reconciler")
        .set_type("cowclone reconciler")
        .set_library("cowclone")
        .set_function("cowclone_reconciler_main")
        .enable_spi_access()
        .set_start_time(BgWorkerStartTime::RecoveryFinished)
        .set_restart_time(None)
        .load();
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn cowclone_reconciler_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // No database: pg_database and replication slots are all it needs.
    BackgroundWorker::connect_worker_to_spi(None, None);
    let removed = BackgroundWorker::transaction(reconcile::remove_interrupted_clones);
    pgrx::log!("cowclone reconciler: {removed} interrupted clone(s) cleaned up");
}
