//! Intel AMX: whether the CPU has the matrix tiles, and the per-process permission Linux
//! requires before a thread may touch them (`arch_prctl(ARCH_REQ_XCOMP_PERM)`; without it
//! the first tile instruction faults). Asked once; a refusal means the AVX-512 kernels.

/// CPUID.(EAX=7, ECX=0):EDX bits 22 (AMX-BF16), 24 (AMX-TILE) and 25 (AMX-INT8).
#[cfg(target_arch = "x86_64")]
pub fn cpu_has_amx() -> bool {
    // Leaf 7 exists on every CPU with AVX-512 (the caller checks that first).
    // SAFETY: CPUID has no precondition here (an `unsafe fn` in older Rust, safe in newer).
    #[allow(unused_unsafe)]
    let edx = unsafe { std::arch::x86_64::__cpuid_count(7, 0) }.edx;
    let need = (1 << 22) | (1 << 24) | (1 << 25);
    edx & need == need
}

#[cfg(not(target_arch = "x86_64"))]
pub fn cpu_has_amx() -> bool {
    false
}

/// Asks the kernel (once per process) for the AMX tile data state; true when granted.
pub fn tiles_granted() -> bool {
    static GRANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *GRANTED.get_or_init(request_tiles)
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn request_tiles() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with these arguments only changes this process's permitted
    // xsave features; it reads and writes no memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    r == 0
}

/// Other systems: not tried (Windows grants the state on first use, but untested here).
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
fn request_tiles() -> bool {
    false
}
