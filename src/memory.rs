//! Giving freed heap memory back to the system.
//!
//! A proxy's memory rises and falls with its connections: 8,000 WebSockets opened and closed
//! leave tens of MiB freed inside glibc's heap, which glibc returns to the system only from the
//! top of the heap. Every few seconds, if the heap holds more than a little free memory,
//! `malloc_trim` releases the free pages wherever they are (a heap walk taking about a
//! millisecond, and only when there is something to gain).

use std::time::Duration;

/// How often the heap is looked at.
const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// Free heap memory worth a trim.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD_BYTES: usize = 4 << 20;

/// Runs until the runtime ends, trimming the heap when freed memory piles up.
pub fn spawn_heap_trimmer() {
    tokio::spawn(async {
        let mut tick = tokio::time::interval(TRIM_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            trim_if_worthwhile();
        }
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_if_worthwhile() {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let free = unsafe { libc::mallinfo2() }.fordblks;
    if free > TRIM_THRESHOLD_BYTES {
        // SAFETY: malloc_trim may be called at any time; it only releases free pages.
        unsafe { libc::malloc_trim(0) };
        tracing::debug!(free, "heap trimmed");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_if_worthwhile() {}
