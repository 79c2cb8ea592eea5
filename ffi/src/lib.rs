//! The dinoedge C API (`libdinoedge.so` / `libdinoedge.a`, header `include/dinoedge.h`
//! generated from this crate by cbindgen).
//!
//! Conventions (after ONNX Runtime, TensorFlow Lite, llama.h and tract):
//! - opaque handles with create/destroy pairs; every destroy accepts NULL; handles are
//!   registered with their type, so a handle of the wrong type, a destroyed handle or a second
//!   destroy gives `DINOEDGE_ERR_INVALID_ARGUMENT` rather than undefined behaviour;
//! - every fallible call returns a `dinoedge_status` (0 = OK, negative = error, positive =
//!   a non-error condition such as the end of a stream) and sets a thread-local message
//!   readable with `dinoedge_last_error()`;
//! - no panic crosses the boundary: every entry point catches it and returns
//!   `DINOEDGE_ERR_INTERNAL`, with the message in `dinoedge_last_error()` and nothing printed
//!   on the host's stderr;
//! - options structs start with `struct_size` and come with `*_default_options()`, so
//!   fields can be appended without breaking the ABI;
//! - inputs are borrowed for the duration of the call; outputs are copied into caller
//!   buffers after a size query, or returned as handles the caller destroys.
//!
//! Threading: a `dinoedge_model` is immutable and may be shared by any number of threads and
//! sessions. Sessions, features, trackers, PCA views and frame sources are not thread-safe:
//! use each from one thread at a time (one session per thread or stream).

#![allow(non_camel_case_types)]
// Entry points are called from C: pointer validity is the documented caller contract (NULL is
// checked), so they are not `unsafe fn` on the Rust side.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

mod frames;
mod handles;
mod session;
mod track;
mod views;

pub use frames::*;
pub use session::*;
pub use track::*;
pub use views::*;

/// The ABI version of this header and library. Bumped on any incompatible change; a
/// program should check `dinoedge_abi_version() == DINOEDGE_ABI_VERSION` at start-up.
pub const DINOEDGE_ABI_VERSION: u32 = 2;

/// Result of every fallible call.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum dinoedge_status {
    /// Success.
    DINOEDGE_OK = 0,
    /// Not an error: a frame source has no more frames.
    DINOEDGE_END_OF_STREAM = 1,
    /// A NULL handle or pointer, an out-of-range value, or an options struct of unknown size.
    DINOEDGE_ERR_INVALID_ARGUMENT = -1,
    /// The caller's buffer is smaller than needed (the needed size is reported).
    DINOEDGE_ERR_BUFFER_TOO_SMALL = -2,
    /// A file or folder could not be read or written.
    DINOEDGE_ERR_IO = -3,
    /// A model directory, mask or image has invalid content.
    DINOEDGE_ERR_INVALID_DATA = -4,
    /// The requested backend, precision or feature is not available in this build or on
    /// this machine.
    DINOEDGE_ERR_UNSUPPORTED = -5,
    /// Computation failed (e.g. an input the model cannot take).
    DINOEDGE_ERR_RUNTIME = -6,
    /// A frame source failed: a camera vanished, a stream ended early or stalled.
    DINOEDGE_ERR_SOURCE = -7,
    /// The system refused a resource: threads, processes, a network port.
    DINOEDGE_ERR_RESOURCE = -8,
    /// An input exceeds a limit (image pixels, model tokens); the message names the option
    /// that raises it.
    DINOEDGE_ERR_LIMIT = -9,
    /// A bug inside dinoedge (a caught panic). The message says where.
    DINOEDGE_ERR_INTERNAL = -100,
}

use dinoedge_status::*;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

pub(crate) fn set_error(msg: &str) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// An error on the Rust side, mapped to a status.
pub(crate) struct Fail(dinoedge_status, String);

impl Fail {
    pub(crate) fn arg(msg: impl Into<String>) -> Self {
        Fail(DINOEDGE_ERR_INVALID_ARGUMENT, msg.into())
    }
}

impl From<dinoedge::Error> for Fail {
    fn from(e: dinoedge::Error) -> Self {
        use dinoedge::Error as E;
        use dinoedge::runtime::RuntimeError as R;
        let status = match &e {
            E::Io { .. } => DINOEDGE_ERR_IO,
            E::Image { .. } | E::InvalidFile { .. } => DINOEDGE_ERR_INVALID_DATA,
            E::Camera { .. } | E::Source { .. } => DINOEDGE_ERR_SOURCE,
            E::Unsupported { .. } | E::MissingPlugin { .. } => DINOEDGE_ERR_UNSUPPORTED,
            E::Resource { .. } | E::Network { .. } => DINOEDGE_ERR_RESOURCE,
            E::InvalidArgument(_) => DINOEDGE_ERR_INVALID_ARGUMENT,
            E::Runtime(r) => match r {
                R::Io { .. } | R::MissingConfig { .. } | R::MissingWeights { .. } => {
                    DINOEDGE_ERR_IO
                }
                R::BackendUnavailable { .. }
                | R::Unsupported { .. }
                | R::WrongArchitecture { .. } => DINOEDGE_ERR_UNSUPPORTED,
                R::InvalidInput { .. } | R::ImageTooSmall { .. } | R::OutputRefused { .. } => {
                    DINOEDGE_ERR_INVALID_ARGUMENT
                }
                R::LimitExceeded { .. } => DINOEDGE_ERR_LIMIT,
                R::Device { .. } => DINOEDGE_ERR_RUNTIME,
                R::TaskPanicked { .. } => DINOEDGE_ERR_INTERNAL,
                R::InvalidConfig { .. }
                | R::UnknownModelType { .. }
                | R::CorruptWeights { .. }
                | R::MissingTensor { .. }
                | R::UnexpectedTensor { .. }
                | R::ShapeMismatch { .. }
                | R::UnsupportedDtype { .. }
                | R::QuantizationMismatch { .. }
                | R::OnnxImport { .. } => DINOEDGE_ERR_INVALID_DATA,
            },
            // The trainer's errors (`Distill`), present only when a workspace build turns on
            // the sdk's `distill` feature: the C library itself never trains.
            #[allow(unreachable_patterns)]
            _ => DINOEDGE_ERR_RUNTIME,
        };
        Fail(status, e.to_string())
    }
}

impl From<dinoedge::runtime::RuntimeError> for Fail {
    fn from(e: dinoedge::runtime::RuntimeError) -> Self {
        Fail::from(dinoedge::Error::from(e))
    }
}

thread_local! {
    /// Inside an entry point: panics are recorded here instead of printed.
    static IN_CALL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs (once) a panic hook that keeps panics inside entry points off the host's stderr:
/// their message and location go to `dinoedge_last_error()` instead. Panics elsewhere in
/// the process go to the hook that was there before.
fn quiet_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_CALL.with(|c| c.get()) {
                let at = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let msg = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                PANIC.with(|p| *p.borrow_mut() = Some(format!("{msg}{at}")));
            } else {
                previous(info);
            }
        }));
    });
}

/// Runs an entry point: maps errors and panics to a status and the thread's last error.
pub(crate) fn guard(f: impl FnOnce() -> Result<dinoedge_status, Fail>) -> dinoedge_status {
    quiet_panics();
    let outer = IN_CALL.with(|c| c.replace(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    IN_CALL.with(|c| c.set(outer));
    match r {
        Ok(Ok(s)) => {
            if s == DINOEDGE_OK {
                set_error("");
            }
            s
        }
        Ok(Err(Fail(s, msg))) => {
            set_error(&msg);
            s
        }
        Err(p) => {
            let what = PANIC.with(|x| x.borrow_mut().take()).unwrap_or_else(|| {
                p.downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into())
            });
            set_error(&format!(
                "internal error (a bug in dinoedge, please report): {what}"
            ));
            DINOEDGE_ERR_INTERNAL
        }
    }
}

/// A borrowed C string argument as `&str`.
pub(crate) fn c_str<'a>(p: *const c_char, what: &str) -> Result<&'a str, Fail> {
    if p.is_null() {
        return Err(Fail::arg(format!("{what} is NULL")));
    }
    // SAFETY: the caller passes a NUL-terminated string valid for the call.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| Fail::arg(format!("{what} is not valid UTF-8")))
}

pub(crate) use handles::{Handle, destroy, obj, obj_mut, obj_opt, put};

/// A caller's struct or value pointer (options, info, an output slot): NULL is refused.
pub(crate) fn arg_mut<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T, Fail> {
    // SAFETY: a non-NULL pointer to a valid `T` for the call (caller contract).
    unsafe { p.as_mut() }.ok_or_else(|| Fail::arg(format!("{what} is NULL")))
}

/// Copies `src` into a caller buffer of `cap` elements (size query when `dst` is NULL).
pub(crate) fn copy_out<T: Copy>(
    src: &[T],
    dst: *mut T,
    cap: usize,
    needed: *mut usize,
    what: &str,
) -> Result<dinoedge_status, Fail> {
    if !needed.is_null() {
        // SAFETY: a valid pointer to a size_t (caller contract).
        unsafe { *needed = src.len() };
    }
    if dst.is_null() {
        if needed.is_null() {
            return Err(Fail::arg(format!(
                "{what}: both the buffer and the size pointer are NULL"
            )));
        }
        return Ok(DINOEDGE_OK);
    }
    if cap < src.len() {
        return Err(Fail(
            DINOEDGE_ERR_BUFFER_TOO_SMALL,
            format!(
                "{what}: the buffer holds {cap} elements, {} are needed",
                src.len()
            ),
        ));
    }
    // SAFETY: `dst` holds at least `cap >= src.len()` elements (caller contract).
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
    Ok(DINOEDGE_OK)
}

/// Checks the `struct_size` of an options struct: it must be at least the size of the
/// fields this library knows up to version 1 (`min`).
pub(crate) fn check_size(got: usize, min: usize, what: &str) -> Result<(), Fail> {
    if got < min {
        return Err(Fail::arg(format!(
            "{what}.struct_size is {got}, at least {min} expected: initialise it with the *_default_options() function"
        )));
    }
    Ok(())
}

/// The library version, e.g. "0.1.0" (static string, never freed).
#[unsafe(no_mangle)]
pub extern "C" fn dinoedge_version() -> *const c_char {
    static V: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    V.as_ptr() as *const c_char
}

/// The ABI version of the library (compare with `DINOEDGE_ABI_VERSION`).
#[unsafe(no_mangle)]
pub extern "C" fn dinoedge_abi_version() -> u32 {
    DINOEDGE_ABI_VERSION
}

/// The message of the last failed call on this thread ("" after a successful call).
/// Owned by the library; valid until the next dinoedge call on this thread.
#[unsafe(no_mangle)]
pub extern "C" fn dinoedge_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// A short name of a status, e.g. "DINOEDGE_ERR_IO" (static string).
#[unsafe(no_mangle)]
pub extern "C" fn dinoedge_status_name(status: i32) -> *const c_char {
    let s: &'static str = match status {
        0 => "DINOEDGE_OK\0",
        1 => "DINOEDGE_END_OF_STREAM\0",
        -1 => "DINOEDGE_ERR_INVALID_ARGUMENT\0",
        -2 => "DINOEDGE_ERR_BUFFER_TOO_SMALL\0",
        -3 => "DINOEDGE_ERR_IO\0",
        -4 => "DINOEDGE_ERR_INVALID_DATA\0",
        -5 => "DINOEDGE_ERR_UNSUPPORTED\0",
        -6 => "DINOEDGE_ERR_RUNTIME\0",
        -7 => "DINOEDGE_ERR_SOURCE\0",
        -8 => "DINOEDGE_ERR_RESOURCE\0",
        -9 => "DINOEDGE_ERR_LIMIT\0",
        -100 => "DINOEDGE_ERR_INTERNAL\0",
        _ => "(not a dinoedge_status)\0",
    };
    s.as_ptr() as *const c_char
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic inside an entry point becomes DINOEDGE_ERR_INTERNAL with the message and its
    /// location, and prints nothing on the host's stderr (checked in a child process, whose
    /// stderr is the host's).
    #[test]
    fn caught_panics_are_quiet_and_reported() {
        if std::env::var_os("DINOEDGE_PANIC_CHILD").is_some() {
            let s = guard(|| panic!("a bug on purpose"));
            assert_eq!(s, DINOEDGE_ERR_INTERNAL);
            let msg = unsafe { CStr::from_ptr(dinoedge_last_error()) }.to_string_lossy();
            assert!(
                msg.contains("a bug on purpose") && msg.contains("lib.rs:"),
                "{msg}"
            );
            // Panics outside an entry point still reach the previous hook.
            let r = std::panic::catch_unwind(|| panic!("outside"));
            assert!(r.is_err());
            return;
        }
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "tests::caught_panics_are_quiet_and_reported",
                "--nocapture",
            ])
            .env("DINOEDGE_PANIC_CHILD", "1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(
            !err.contains("a bug on purpose"),
            "the caught panic was printed: {err}"
        );
        assert!(
            err.contains("outside"),
            "panics elsewhere keep their hook: {err}"
        );
    }

    /// Handles of the wrong type, destroyed handles and double destroys are refused.
    #[test]
    fn handles_are_checked_by_type_and_liveness() {
        struct A;
        struct B;
        impl Handle for A {
            const NAME: &'static str = "a";
        }
        impl Handle for B {
            const NAME: &'static str = "b";
        }
        let mut a: *mut A = std::ptr::null_mut();
        assert_eq!(put(&mut a, A).ok(), Some(DINOEDGE_OK));
        assert!(obj(a, "x").is_ok());
        let as_b = a as *mut B;
        assert!(obj(as_b, "x").err().unwrap().1.contains("is a a, not a b"));
        assert_eq!(destroy(as_b, "x"), DINOEDGE_ERR_INVALID_ARGUMENT);
        assert_eq!(destroy(a, "x"), DINOEDGE_OK);
        assert_eq!(destroy(a, "x"), DINOEDGE_ERR_INVALID_ARGUMENT);
        assert!(obj(a, "x").err().unwrap().1.contains("not a live"));
        assert_eq!(destroy(std::ptr::null_mut::<A>(), "x"), DINOEDGE_OK);
    }

    /// The committed header must be what cbindgen generates from this crate
    /// (`DINOEDGE_BLESS=1 cargo test -p dinoedge-ffi` rewrites it).
    #[test]
    fn header_is_up_to_date() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
        let mut out = Vec::new();
        cbindgen::Builder::new()
            .with_crate(dir)
            .with_config(config)
            .generate()
            .expect("cbindgen")
            .write(&mut out);
        let path = dir.join("include/dinoedge.h");
        if std::env::var("DINOEDGE_BLESS").as_deref() == Ok("1") {
            std::fs::write(&path, &out).unwrap();
        }
        let define = format!("#define DINOEDGE_ABI_VERSION {DINOEDGE_ABI_VERSION}\n");
        assert!(
            String::from_utf8_lossy(&out).contains(&define),
            "ffi/cbindgen.toml must define DINOEDGE_ABI_VERSION as src/lib.rs does ({DINOEDGE_ABI_VERSION})"
        );
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == out,
            "ffi/include/dinoedge.h is out of date: run `DINOEDGE_BLESS=1 cargo test -p dinoedge-ffi header`"
        );
    }
}
