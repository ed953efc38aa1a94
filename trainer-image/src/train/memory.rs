//! Host allocator settings for the training loop.
//!
//! Every training step allocates and frees the same large activation and
//! gradient buffers (logits alone are `batch × seq × vocab` floats). glibc
//! serves blocks above its mmap threshold (at most 32 MiB) with fresh `mmap`s
//! and returns freed heap tops to the kernel, so each step pays page faults and
//! page zeroing for tens of megabytes: on the CPU benchmark that was about 9% of
//! the step. Keeping freed memory in the process lets the next step reuse it.
//! The cost is that resident memory stays at the step's peak, which a training
//! process reaches every step anyway.

/// Makes glibc keep freed memory for reuse instead of returning it to the kernel.
/// Call before the first step; a no-op where the C library is not glibc.
#[allow(unsafe_code, reason = "mallopt is a C function of glibc")]
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before the
    // training loop starts its allocations and the values are in range.
    unsafe {
        // Large blocks come from the heap, not from one-off mmaps.
        libc::mallopt(libc::M_MMAP_MAX, 0);
        // Never shrink the heap; the next step needs the same memory again.
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        // Grow the heap in large steps, so early steps do not fault page by page.
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}
