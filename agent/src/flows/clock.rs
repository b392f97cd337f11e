//! Clocks: the datapath stamps packets with the monotonic clock
//! (`bpf_ktime_get_ns`); records carry wall-clock time.

fn read(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// The datapath's clock now.
pub fn now_mono_ns() -> u64 {
    read(libc::CLOCK_MONOTONIC)
}

/// Nanoseconds since the Unix epoch.
pub fn now_epoch_ns() -> u64 {
    read(libc::CLOCK_REALTIME)
}

/// What to add to a monotonic timestamp to put it on the wall clock.
pub fn mono_to_epoch() -> u64 {
    now_epoch_ns().saturating_sub(now_mono_ns())
}
