//! Which SIMD kernels this CPU runs, detected once at run time (no `-C target-cpu` needed:
//! one binary serves every machine of its architecture).

use std::fmt;
use std::sync::OnceLock;

/// Kernel families of the fast CPU backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// x86_64 AVX-512 with VNNI and BF16 plus the AMX matrix tiles (AMX-BF16, AMX-INT8),
    /// the tile state granted by the kernel ([`super::amx::tiles_granted`]). f32 runs the
    /// AVX-512 kernels; bf16 (and int8 where K allows) run on the tiles.
    Amx,
    /// x86_64 AVX-512F (f32 and f16 weights), with AVX-512 VNNI + BW for int8 when `vnni`.
    Avx512 { vnni: bool },
    /// x86_64 AVX2 + FMA + F16C, with AVX-VNNI (256-bit) for int8 when `vnni`.
    Avx2 { vnni: bool },
    /// aarch64 NEON, with the SDOT dot-product instructions for int8 when `dotprod`.
    Neon { dotprod: bool },
    /// Portable code (auto-vectorised for the build's baseline).
    Scalar,
}

impl Isa {
    /// The best family this CPU supports; `DINOEDGE_CPU_ISA=avx2|scalar|...` lowers it
    /// (to test or compare the fallbacks on a newer machine).
    pub fn detect() -> Isa {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let best = Self::detect_best();
            match std::env::var("DINOEDGE_CPU_ISA").ok().as_deref() {
                Some(want) => Self::lowered(best, want),
                None => best,
            }
        })
    }

    fn lowered(best: Isa, want: &str) -> Isa {
        Self::all_supported()
            .into_iter()
            .find(|c| c.name() == want)
            .unwrap_or(best)
    }

    /// Every family this CPU can run, best first (tests run each of them).
    pub fn all_supported() -> Vec<Isa> {
        let mut v = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let avx2 = has!("avx2") && has!("fma") && has!("f16c");
            if avx2 && has!("avx512f") {
                if Self::amx_usable() {
                    v.push(Isa::Amx);
                }
                if has!("avx512vnni") && has!("avx512bw") {
                    v.push(Isa::Avx512 { vnni: true });
                }
                v.push(Isa::Avx512 { vnni: false });
            }
            if avx2 {
                if has!("avxvnni") {
                    v.push(Isa::Avx2 { vnni: true });
                }
                v.push(Isa::Avx2 { vnni: false });
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                v.push(Isa::Neon { dotprod: true });
            }
            v.push(Isa::Neon { dotprod: false });
        }
        v.push(Isa::Scalar);
        v
    }

    #[cfg(target_arch = "x86_64")]
    fn detect_best() -> Isa {
        use std::arch::is_x86_feature_detected as has;
        let avx2 = has!("avx2") && has!("fma") && has!("f16c");
        if avx2 && has!("avx512f") && Self::amx_usable() {
            Isa::Amx
        } else if avx2 && has!("avx512f") {
            Isa::Avx512 {
                vnni: has!("avx512vnni") && has!("avx512bw"),
            }
        } else if avx2 {
            Isa::Avx2 {
                vnni: has!("avxvnni"),
            }
        } else {
            Isa::Scalar
        }
    }

    /// AVX-512 (F, BW, VNNI, BF16), AMX-BF16 and AMX-INT8, and the OS lets us use the tiles.
    #[cfg(target_arch = "x86_64")]
    fn amx_usable() -> bool {
        use std::arch::is_x86_feature_detected as has;
        has!("avx512f")
            && has!("avx512bw")
            && has!("avx512vnni")
            && has!("avx512bf16")
            && super::amx::cpu_has_amx()
            && super::amx::tiles_granted()
    }

    /// Whether this family has bf16 dot products (AMX tiles or AVX-512 `vdpbf16ps`); the
    /// others run bf16 weights through f32 arithmetic.
    pub fn bf16_dot(self) -> bool {
        match self {
            Isa::Amx => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 { .. } => std::arch::is_x86_feature_detected!("avx512bf16"),
            _ => false,
        }
    }

    #[cfg(target_arch = "aarch64")]
    fn detect_best() -> Isa {
        Isa::Neon {
            dotprod: std::arch::is_aarch64_feature_detected!("dotprod"),
        }
    }

    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    fn detect_best() -> Isa {
        Isa::Scalar
    }

    /// Short name, as `DINOEDGE_CPU_ISA` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Amx => "avx512-amx",
            Isa::Avx512 { vnni: true } => "avx512-vnni",
            Isa::Avx512 { vnni: false } => "avx512",
            Isa::Avx2 { vnni: true } => "avx2-vnni",
            Isa::Avx2 { vnni: false } => "avx2",
            Isa::Neon { dotprod: true } => "neon-dotprod",
            Isa::Neon { dotprod: false } => "neon",
            Isa::Scalar => "scalar",
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Defines `fn $name(isa, args..)` that runs `$body` compiled for the target features of
/// `isa` (so plain loops in the body are vectorised for that family), with a portable
/// version for [`Isa::Scalar`].
macro_rules! multiversion {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name(isa: $crate::backend::cpu::isa::Isa, $($arg: $ty),*) {
            #[inline(always)]
            fn inner($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx2,fma,f16c")]
            unsafe fn avx512($($arg: $ty),*) { inner($($arg),*) }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn avx2($($arg: $ty),*) { inner($($arg),*) }
            #[cfg(target_arch = "aarch64")]
            #[target_feature(enable = "neon")]
            unsafe fn neon($($arg: $ty),*) { inner($($arg),*) }
            use $crate::backend::cpu::isa::Isa;
            // SAFETY: `isa` was detected on this CPU, so its features are present.
            unsafe {
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx512 { .. } | Isa::Amx => avx512($($arg),*),
                    #[cfg(target_arch = "x86_64")]
                    Isa::Avx2 { .. } => avx2($($arg),*),
                    #[cfg(target_arch = "aarch64")]
                    Isa::Neon { .. } => neon($($arg),*),
                    _ => inner($($arg),*),
                }
            }
        }
    };
}
pub(crate) use multiversion;
