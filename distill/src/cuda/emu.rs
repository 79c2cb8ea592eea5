//! [`EmuDevice`]: the trainer's kernels run on the CPU. `train.cu` is compiled with the
//! system C++ compiler against `emu.h` (each CUDA thread a fiber, barriers and warp shuffles
//! between fibers) into a shared library, loaded here; GEMMs are plain loops that round
//! their inputs to bf16 in a bf16 GEMM. Tests run the whole CUDA trainer this way against
//! the CPU trainer. Slow by design: tiny models only.

use std::alloc::Layout;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CString, c_char, c_int, c_uint, c_void};
use std::path::PathBuf;

use half::bf16;

use super::{Arg, DevPtr, Device, GemmType, KERNELS, Mat, device_error, program};
use crate::error::{DistillError, Result};

type Launch = unsafe extern "C" fn(
    *const c_char,
    c_uint,
    c_uint,
    c_uint,
    *mut *mut c_void,
    *mut c_char,
    c_int,
) -> c_int;

pub struct EmuDevice {
    _lib: libloading::Library,
    launch: Launch,
    allocs: RefCell<HashMap<DevPtr, Layout>>,
}

/// The C++ translation unit: the emulation header, the program, the kernel table.
fn source() -> String {
    let table: String = KERNELS
        .into_iter()
        .map(|k| format!("    {{\"{k}\", [](void **a) {{ emu::call(&{k}, a); }}}},\n"))
        .collect();
    format!(
        "{}\n{}\nconst emu_kernel EMU_KERNELS[] = {{\n{table}}};\nconst int EMU_KERNEL_COUNT = {};\n",
        include_str!("emu.h"),
        program(),
        KERNELS.len()
    )
}

impl EmuDevice {
    /// Builds (once per source text, cached under the temp dir) and loads the emulated kernels.
    /// Needs a C++20 compiler (`$CXX`, default `c++`).
    pub fn new() -> Result<EmuDevice> {
        let src = source();
        let hash = src.bytes().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100000001b3)
        });
        let dir = std::env::temp_dir().join(format!("dinoedge-train-emu-{hash:016x}"));
        let lib = dir.join("libtrain_emu.so");
        if !lib.exists() {
            std::fs::create_dir_all(&dir).map_err(|e| DistillError::io(&dir, e))?;
            let cpp = dir.join("train_emu.cpp");
            std::fs::write(&cpp, &src).map_err(|e| DistillError::io(&cpp, e))?;
            let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
            static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp: PathBuf = dir.join(format!("libtrain_emu.{}.{n}.so", std::process::id()));
            let out = std::process::Command::new(&cxx)
                .args(["-std=c++20", "-O2", "-fPIC", "-shared", "-w", "-o"])
                .arg(&tmp)
                .arg(&cpp)
                .output()
                .map_err(|e| device_error(&format!("emulator: cannot run {cxx}"), e))?;
            if !out.status.success() {
                return Err(device_error(
                    "emulator: compiling train.cu failed",
                    String::from_utf8_lossy(&out.stderr),
                ));
            }
            // Another build may have landed first; either library is the same.
            if let Err(e) = std::fs::rename(&tmp, &lib)
                && !lib.exists()
            {
                return Err(DistillError::io(&lib, e));
            }
        }
        // SAFETY: our own library, built above from our source; its initialisers are trivial.
        let l = unsafe { libloading::Library::new(&lib) }
            .map_err(|e| device_error(&format!("emulator: loading {}", lib.display()), e))?;
        // SAFETY: the symbol has this signature (emu.h).
        let launch = unsafe { l.get::<Launch>(b"emu_launch\0") }
            .map(|f| *f)
            .map_err(|e| device_error("emulator: emu_launch", e))?;
        Ok(EmuDevice {
            _lib: l,
            launch,
            allocs: RefCell::new(HashMap::new()),
        })
    }

    fn check(&self, p: DevPtr, bytes: usize) -> Result<()> {
        let a = self.allocs.borrow();
        let ok = a
            .iter()
            .any(|(&base, l)| p >= base && p + bytes as u64 <= base + l.size() as u64);
        if ok || bytes == 0 {
            Ok(())
        } else {
            Err(device_error(
                "emulator",
                format!("{bytes} bytes at {p:#x} are outside every allocation"),
            ))
        }
    }
}

impl Drop for EmuDevice {
    fn drop(&mut self) {
        for (p, l) in self.allocs.borrow_mut().drain() {
            // SAFETY: allocated by `alloc` with this layout.
            unsafe { std::alloc::dealloc(p as *mut u8, l) };
        }
    }
}

/// Element (i, j) of a GEMM operand, rounded to bf16 in a bf16 GEMM.
///
/// # Safety
/// The operand addresses live host memory of the extent its shape and `ld` imply.
unsafe fn at(m: &Mat, i: usize, j: usize, t: GemmType) -> f32 {
    let e = if m.trans { j * m.ld + i } else { i * m.ld + j };
    unsafe {
        match (t, m.bf16) {
            (GemmType::BF16, Some(h)) => bf16::from_bits(*(h as *const u16).add(e)).to_f32(),
            (GemmType::BF16, None) => bf16::from_f32(*(m.ptr as *const f32).add(e)).to_f32(),
            (GemmType::F32, _) => *(m.ptr as *const f32).add(e),
        }
    }
}

impl Device for EmuDevice {
    fn name(&self) -> String {
        "CUDA kernels emulated on the CPU".into()
    }

    fn alloc(&self, bytes: usize, _what: &str) -> Result<DevPtr> {
        let l = Layout::from_size_align(bytes.max(4), 256)
            .map_err(|e| device_error("emulator alloc", e))?;
        // SAFETY: non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(l) } as DevPtr;
        if p == 0 {
            return Err(device_error("emulator alloc", format!("{bytes} bytes")));
        }
        self.allocs.borrow_mut().insert(p, l);
        Ok(p)
    }

    fn free(&self, p: DevPtr) {
        if let Some(l) = self.allocs.borrow_mut().remove(&p) {
            // SAFETY: allocated by `alloc` with this layout.
            unsafe { std::alloc::dealloc(p as *mut u8, l) };
        }
    }

    fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.check(dst, src.len())?;
        // SAFETY: checked to lie inside one allocation.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        self.check(src, dst.len())?;
        // SAFETY: as `upload`.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
        self.check(dst, bytes)?;
        self.check(src, bytes)?;
        // SAFETY: as `upload`; `copy` allows overlap.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }

    fn zero(&self, dst: DevPtr, bytes: usize) -> Result<()> {
        self.check(dst, bytes)?;
        // SAFETY: as `upload`.
        unsafe { std::ptr::write_bytes(dst as *mut u8, 0, bytes) };
        Ok(())
    }

    fn launch(
        &self,
        kernel: &'static str,
        grid: (u32, u32),
        block: u32,
        args: &[Arg],
    ) -> Result<()> {
        let mut params: Vec<*mut c_void> = args.iter().map(Arg::as_param).collect();
        let name = CString::new(kernel).map_err(|e| device_error(kernel, e))?;
        let mut err = vec![0u8; 512];
        // The emulator's grid state and `__shared__` arrays are globals: one launch at a time
        // in the process.
        static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: `params` point at live values of the kernel's argument types; the kernel
        // reads and writes the device (host) buffers the trainer allocated.
        let rc = unsafe {
            (self.launch)(
                name.as_ptr(),
                grid.0,
                grid.1,
                block,
                params.as_mut_ptr(),
                err.as_mut_ptr() as *mut c_char,
                err.len() as c_int,
            )
        };
        if rc != 0 {
            let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
            return Err(device_error(
                "emulated kernel",
                String::from_utf8_lossy(&err[..end]),
            ));
        }
        Ok(())
    }

    fn gemm(
        &self,
        m: usize,
        n: usize,
        k: usize,
        a: Mat,
        b: Mat,
        c: DevPtr,
        ldc: usize,
        accumulate: bool,
        t: GemmType,
    ) -> Result<()> {
        let extent = |x: &Mat, r: usize, cols: usize| {
            let (outer, inner) = if x.trans { (cols, r) } else { (r, cols) };
            ((outer - 1) * x.ld + inner) * 4
        };
        self.check(a.ptr, extent(&a, m, k))?;
        self.check(b.ptr, extent(&b, k, n))?;
        self.check(c, ((m - 1) * ldc + n) * 4)?;
        let cp = c as *mut f32;
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f32;
                for p in 0..k {
                    // SAFETY: extents checked above.
                    s += unsafe { at(&a, i, p, t) * at(&b, p, j, t) };
                }
                // SAFETY: inside c's checked extent.
                unsafe {
                    let o = cp.add(i * ldc + j);
                    *o = if accumulate { *o + s } else { s };
                }
            }
        }
        Ok(())
    }
}
