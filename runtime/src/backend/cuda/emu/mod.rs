//! [`EmuDevice`]: dinoedge's CUDA kernels on the CPU. The program is compiled with the system
//! C++ compiler against `emu.h` (each CUDA thread a fiber, barriers and warp shuffles between
//! fibers, tensor-core instructions on fragments) into a shared library and loaded here.
//! GEMMs are plain loops over the operands' stored types (f16 / bf16 inputs are read as what
//! they are, so 16-bit sessions round as cuBLASLt's inputs do); the bias epilogue is fused and
//! the GELU one refused, so callers' fallbacks run too. Recording (`begin_capture`) keeps the
//! launches instead of running them and replays them on demand, as CUDA graphs do.
//!
//! Slow by design: tiny models only. Needs a C++20 compiler (`$CXX`, default `c++`) and
//! ucontext (Linux).

use std::alloc::Layout;
use std::collections::HashMap;
use std::ffi::{CString, c_char, c_int, c_uint, c_void};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use half::{bf16, f16};

use super::device::{
    Arg, DevPtr, Device, Elem, Fused, Gemm, GraphId, LaunchCfg, Operand, Program, device_error,
};
use crate::error::{Result, RuntimeError};

type Launch = unsafe extern "C" fn(
    *const c_char,
    c_uint,
    c_uint,
    c_uint,
    c_uint,
    *mut *mut c_void,
    *mut c_char,
    c_int,
) -> c_int;

/// One recorded call.
#[derive(Clone, Debug)]
enum Call {
    Launch(String, LaunchCfg, Vec<Arg>),
    Gemm(Gemm),
    Copy(DevPtr, DevPtr, usize),
    Zero(DevPtr, usize),
}

#[derive(Default)]
struct Recording {
    /// Calls recorded since `begin_capture`, when capturing.
    current: Option<Vec<Call>>,
    graphs: HashMap<GraphId, Vec<Call>>,
    next: GraphId,
}

pub struct EmuDevice {
    _lib: libloading::Library,
    launch: Launch,
    allocs: Mutex<HashMap<DevPtr, Layout>>,
    recording: Mutex<Recording>,
    sm: u32,
}

fn emu_error(e: impl std::fmt::Display) -> RuntimeError {
    device_error("emulator", e)
}

/// The C++ translation unit: the emulation header, the program, the kernel table.
fn source(program: &Program) -> String {
    let table: String = program
        .kernels
        .iter()
        .map(|k| format!("    {{\"{k}\", [](void **a) {{ emu::call(&{k}, a); }}}},\n"))
        .collect();
    format!(
        "{}\n{}\nconst emu_kernel EMU_KERNELS[] = {{\n{table}}};\nconst int EMU_KERNEL_COUNT = {};\n",
        include_str!("emu.h"),
        program.text(),
        program.kernels.len()
    )
}

/// Where built libraries are cached: the user's cache directory, else the temp dir.
fn cache_root() -> PathBuf {
    let user = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    match user {
        Some(c) if c.is_absolute() => c.join("dinoedge").join("cuda-emu"),
        _ => std::env::temp_dir().join("dinoedge-cuda-emu"),
    }
}

/// Creates `dir` (0700) or checks that an existing one is ours alone: the library loaded from
/// it runs in this process, so nobody else may be able to put one there.
#[cfg(unix)]
fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| RuntimeError::io(dir, e))?;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| RuntimeError::io(dir, e))?;
    // A file we create is owned by us: the directory must be too.
    let probe = dir.join(format!(".owner.{}", std::process::id()));
    let mine = std::fs::File::create(&probe)
        .and_then(|f| f.metadata())
        .map_err(|e| RuntimeError::io(&probe, e))?;
    let _ = std::fs::remove_file(&probe);
    if !meta.is_dir() || meta.uid() != mine.uid() || meta.mode() & 0o022 != 0 {
        return Err(emu_error(format!(
            "{} is not a private directory of this user (owner {}, mode {:o}); remove it or set XDG_CACHE_HOME",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| RuntimeError::io(dir, e))
}

/// Builds the library for `src` once per source text (cached in [`cache_root`]).
fn build(src: &str) -> Result<PathBuf> {
    let hash = src.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    let root = cache_root();
    private_dir(&root)?;
    let dir = root.join(format!("{hash:016x}"));
    private_dir(&dir)?;
    let lib = dir.join("libcuda_emu.so");
    if lib.exists() {
        return Ok(lib);
    }
    let cpp = dir.join(format!("cuda_emu.{}.cpp", std::process::id()));
    std::fs::write(&cpp, src).map_err(|e| RuntimeError::io(&cpp, e))?;
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    static BUILDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!("libcuda_emu.{}.{n}.so", std::process::id()));
    let out = std::process::Command::new(&cxx)
        .args(["-std=c++20", "-O2", "-fPIC", "-shared", "-w", "-o"])
        .arg(&tmp)
        .arg(&cpp)
        .output()
        .map_err(|e| {
            emu_error(format!(
                "cannot run the C++ compiler {cxx:?} ({e}); the emulator needs one (set CXX)"
            ))
        })?;
    let _ = std::fs::remove_file(&cpp);
    if !out.status.success() {
        return Err(emu_error(format!(
            "compiling the kernels with {cxx} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    // Another build may have landed first; either library is the same.
    if let Err(e) = std::fs::rename(&tmp, &lib)
        && !lib.exists()
    {
        return Err(RuntimeError::io(&lib, e));
    }
    Ok(lib)
}

impl EmuDevice {
    /// Builds (once per program text) and loads `program`'s kernels, emulating a GPU of
    /// compute capability `sm` (80 runs the tensor-core attention).
    pub fn new(program: &Program, sm: u32) -> Result<EmuDevice> {
        let lib = build(&source(program))?;
        // SAFETY: our own library, built above from our source; its initialisers are trivial.
        let l = unsafe { libloading::Library::new(&lib) }
            .map_err(|e| emu_error(format!("loading {}: {e}", lib.display())))?;
        // SAFETY: the symbol has this signature (emu.h).
        let launch = unsafe { l.get::<Launch>(b"emu_launch\0") }
            .map(|f| *f)
            .map_err(|e| emu_error(format!("emu_launch: {e}")))?;
        Ok(EmuDevice {
            _lib: l,
            launch,
            allocs: Mutex::new(HashMap::new()),
            recording: Mutex::new(Recording::default()),
            sm,
        })
    }

    fn check(&self, p: DevPtr, bytes: usize) -> Result<()> {
        let a = self.allocs.lock().unwrap_or_else(|e| e.into_inner());
        let ok = a
            .iter()
            .any(|(&base, l)| p >= base && p + bytes as u64 <= base + l.size() as u64);
        if ok || bytes == 0 {
            Ok(())
        } else {
            Err(emu_error(format!(
                "{bytes} bytes at {p:#x} are outside every allocation"
            )))
        }
    }

    /// As CUDA, which refuses copies between the host and a stream being captured
    /// (cudaErrorStreamCaptureUnsupported): host code that would break a GPU capture fails
    /// here too.
    fn not_capturing(&self, what: &str) -> Result<()> {
        let r = self.recording.lock().unwrap_or_else(|e| e.into_inner());
        match r.current {
            Some(_) => Err(emu_error(format!(
                "{what} while a graph is being captured (a GPU refuses it too)"
            ))),
            None => Ok(()),
        }
    }

    /// Records `c` when capturing; `true` when it was recorded (not to be run now).
    fn recorded(&self, c: &Call) -> bool {
        let mut r = self.recording.lock().unwrap_or_else(|e| e.into_inner());
        match &mut r.current {
            Some(calls) => {
                calls.push(c.clone());
                true
            }
            None => false,
        }
    }

    fn run(&self, c: &Call) -> Result<()> {
        match c {
            Call::Launch(k, cfg, args) => self.run_launch(k, *cfg, args),
            Call::Gemm(g) => self.run_gemm(g),
            Call::Copy(dst, src, bytes) => {
                self.check(*dst, *bytes)?;
                self.check(*src, *bytes)?;
                // SAFETY: both inside allocations; `copy` allows overlap.
                unsafe { std::ptr::copy(*src as *const u8, *dst as *mut u8, *bytes) };
                Ok(())
            }
            Call::Zero(dst, bytes) => {
                self.check(*dst, *bytes)?;
                // SAFETY: inside an allocation.
                unsafe { std::ptr::write_bytes(*dst as *mut u8, 0, *bytes) };
                Ok(())
            }
        }
    }

    fn run_launch(&self, kernel: &str, cfg: LaunchCfg, args: &[Arg]) -> Result<()> {
        let mut params: Vec<*mut c_void> = args.iter().map(Arg::as_param).collect();
        let name = CString::new(kernel).map_err(|e| device_error(kernel, e))?;
        let mut err = vec![0u8; 512];
        // The emulator's grid state and `__shared__` arrays are globals: one launch at a time
        // in the process.
        static ONE: Mutex<()> = Mutex::new(());
        let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: `params` point at live values of the kernel's argument types; the kernel
        // reads and writes the (host) buffers this device allocated.
        let rc = unsafe {
            (self.launch)(
                name.as_ptr(),
                cfg.grid.0,
                cfg.grid.1,
                cfg.block,
                cfg.shared,
                params.as_mut_ptr(),
                err.as_mut_ptr() as *mut c_char,
                err.len() as c_int,
            )
        };
        if rc != 0 {
            let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
            return Err(emu_error(String::from_utf8_lossy(&err[..end])));
        }
        Ok(())
    }

    fn run_gemm(&self, g: &Gemm) -> Result<()> {
        let e = g.ty.bytes();
        self.check(g.a.ptr, g.a.extent(g.m, g.k) * e)?;
        self.check(g.b.ptr, g.b.extent(g.k, g.n) * e)?;
        if g.m > 0 && g.n > 0 {
            self.check(g.c, ((g.m - 1) * g.ldc + g.n) * 4)?;
        }
        let fuse_bias = g.want != Fused::None && g.bias != 0;
        if fuse_bias {
            self.check(g.bias, g.n * 4)?;
        }
        let cp = g.c as *mut f32;
        for i in 0..g.m {
            for j in 0..g.n {
                let mut s = 0.0f32;
                for p in 0..g.k {
                    // SAFETY: extents checked above.
                    s += unsafe { at(&g.a, g.ty, i, p) * at(&g.b, g.ty, p, j) };
                }
                if fuse_bias {
                    // SAFETY: checked above.
                    s += unsafe { *(g.bias as *const f32).add(j) };
                }
                // SAFETY: inside c's checked extent.
                unsafe {
                    let o = cp.add(i * g.ldc + j);
                    *o = if g.accumulate { *o + s } else { s };
                }
            }
        }
        Ok(())
    }
}

impl Drop for EmuDevice {
    fn drop(&mut self) {
        for (p, l) in self
            .allocs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            // SAFETY: allocated by `alloc` with this layout.
            unsafe { std::alloc::dealloc(p as *mut u8, l) };
        }
    }
}

/// Element (i, j) of a GEMM operand of type `ty`, as f32.
///
/// # Safety
/// The operand addresses live host memory of the extent its shape and `ld` imply.
unsafe fn at(m: &Operand, ty: Elem, i: usize, j: usize) -> f32 {
    let e = if m.trans { j * m.ld + i } else { i * m.ld + j };
    unsafe {
        match ty {
            Elem::F32 => *(m.ptr as *const f32).add(e),
            Elem::F16 => f16::from_bits(*(m.ptr as *const u16).add(e)).to_f32(),
            Elem::BF16 => bf16::from_bits(*(m.ptr as *const u16).add(e)).to_f32(),
        }
    }
}

impl Device for EmuDevice {
    fn name(&self) -> String {
        format!("CUDA kernels emulated on the CPU (as sm_{})", self.sm)
    }

    fn sm(&self) -> u32 {
        self.sm
    }

    fn memory(&self) -> Result<(usize, usize)> {
        // Host memory stands in; the emulator runs tiny models only.
        Ok((16 << 30, 16 << 30))
    }

    fn alloc(&self, bytes: usize, what: &str) -> Result<DevPtr> {
        let l = Layout::from_size_align(bytes.max(4), 256)
            .map_err(|e| emu_error(format!("{what}: {e}")))?;
        // SAFETY: non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(l) } as DevPtr;
        if p == 0 {
            return Err(emu_error(format!("{what}: {bytes} bytes")));
        }
        self.allocs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(p, l);
        Ok(p)
    }

    fn free(&self, p: DevPtr) {
        if let Some(l) = self
            .allocs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&p)
        {
            // SAFETY: allocated by `alloc` with this layout.
            unsafe { std::alloc::dealloc(p as *mut u8, l) };
        }
    }

    fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.not_capturing("upload")?;
        self.check(dst, src.len())?;
        // SAFETY: checked to lie inside one allocation.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        self.not_capturing("download")?;
        self.check(src, dst.len())?;
        // SAFETY: as `upload`.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
        let c = Call::Copy(dst, src, bytes);
        if self.recorded(&c) {
            return Ok(());
        }
        self.run(&c)
    }

    fn zero(&self, dst: DevPtr, bytes: usize) -> Result<()> {
        let c = Call::Zero(dst, bytes);
        if self.recorded(&c) {
            return Ok(());
        }
        self.run(&c)
    }

    fn launch(&self, kernel: &str, cfg: LaunchCfg, args: &[Arg]) -> Result<()> {
        let c = Call::Launch(kernel.to_string(), cfg, args.to_vec());
        if self.recorded(&c) {
            return Ok(());
        }
        self.run(&c)
    }

    fn gemm(&self, g: &Gemm) -> Result<Fused> {
        // As a cuBLASLt that has the bias epilogue but not the GELU one.
        let fused = match g.want {
            Fused::GeluBias | Fused::Bias if g.bias != 0 => Fused::Bias,
            _ => Fused::None,
        };
        let g = Gemm { want: fused, ..*g };
        let c = Call::Gemm(g);
        if !self.recorded(&c) {
            self.run(&c)?;
        }
        Ok(fused)
    }

    fn synchronize(&self) -> Result<()> {
        // As the GPU device: a no-op while capturing (the capture orders the work).
        Ok(())
    }

    fn begin_capture(&self) -> Result<bool> {
        let mut r = self.recording.lock().unwrap_or_else(|e| e.into_inner());
        if r.current.is_some() {
            return Err(emu_error("begin_capture while capturing"));
        }
        r.current = Some(Vec::new());
        Ok(true)
    }

    fn end_capture(&self) -> Result<Option<GraphId>> {
        let mut r = self.recording.lock().unwrap_or_else(|e| e.into_inner());
        let calls = r
            .current
            .take()
            .ok_or_else(|| emu_error("end_capture without begin_capture"))?;
        r.next += 1;
        let id = r.next;
        r.graphs.insert(id, calls);
        Ok(Some(id))
    }

    fn replay(&self, g: GraphId) -> Result<()> {
        let calls = self
            .recording
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .graphs
            .get(&g)
            .cloned()
            .ok_or_else(|| emu_error(format!("no recorded graph {g}")))?;
        for c in &calls {
            self.run(c)?;
        }
        Ok(())
    }

    fn drop_graph(&self, g: GraphId) {
        self.recording
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .graphs
            .remove(&g);
    }
}

#[cfg(all(test, unix))]
mod cache_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_cache_directory_others_can_write_is_refused() {
        let tmp = std::env::temp_dir().join(format!("dinoedge-emu-test-{}", std::process::id()));
        let open = tmp.join("open");
        std::fs::create_dir_all(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = private_dir(&open).unwrap_err().to_string();
        assert!(err.contains("not a private directory"), "{err}");
        let fine = tmp.join("fine");
        private_dir(&fine).unwrap();
        let mode = std::fs::metadata(&fine).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
