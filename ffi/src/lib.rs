//! The dinoedge C API (`libdinoedge.so` / `libdinoedge.a`, header `include/dinoedge.h`
//! generated from this crate by cbindgen).
//!
//! Conventions (after ONNX Runtime, TensorFlow Lite, llama.h and tract):
//! - opaque handles with create/destroy pairs; every destroy accepts NULL;
//! - every fallible call returns a `dinoedge_status` (0 = OK, negative = error, positive =
//!   a non-error condition such as the end of a stream) and sets a thread-local message
//!   readable with `dinoedge_last_error()`;
//! - no panic crosses the boundary: every entry point catches it and returns
//!   `DINOEDGE_ERR_INTERNAL`;
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
mod session;
mod track;
mod views;

pub use frames::*;
pub use session::*;
pub use track::*;
pub use views::*;

/// The ABI version of this header and library. Bumped on any incompatible change; a
/// program should check `dinoedge_abi_version() == DINOEDGE_ABI_VERSION` at start-up.
pub const DINOEDGE_ABI_VERSION: u32 = 1;

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
    /// A bug inside dinoedge (a caught panic). The message says where.
    DINOEDGE_ERR_INTERNAL = -100,
}

use dinoedge_status::*;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: &str) {
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
            E::Camera { .. } => DINOEDGE_ERR_UNSUPPORTED,
            E::Usage(_) => DINOEDGE_ERR_INVALID_ARGUMENT,
            E::Runtime(r) => match r {
                R::Io { .. } | R::MissingConfig { .. } | R::MissingWeights { .. } => {
                    DINOEDGE_ERR_IO
                }
                R::BackendUnavailable { .. } => DINOEDGE_ERR_UNSUPPORTED,
                R::InvalidInput { .. } | R::ImageTooSmall { .. } => DINOEDGE_ERR_INVALID_ARGUMENT,
                R::Device { .. } => DINOEDGE_ERR_RUNTIME,
                _ => DINOEDGE_ERR_INVALID_DATA,
            },
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

/// Runs an entry point: maps errors and panics to a status and the thread's last error.
pub(crate) fn guard(f: impl FnOnce() -> Result<dinoedge_status, Fail>) -> dinoedge_status {
    match catch_unwind(AssertUnwindSafe(f)) {
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
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
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

/// A borrowed handle argument.
pub(crate) fn handle<'a, T>(p: *const T, what: &str) -> Result<&'a T, Fail> {
    // SAFETY: a non-NULL handle comes from this library and is alive (caller contract).
    unsafe { p.as_ref() }.ok_or_else(|| Fail::arg(format!("{what} is NULL")))
}

pub(crate) fn handle_mut<'a, T>(p: *mut T, what: &str) -> Result<&'a mut T, Fail> {
    // SAFETY: as `handle`, and the caller does not use the handle from another thread.
    unsafe { p.as_mut() }.ok_or_else(|| Fail::arg(format!("{what} is NULL")))
}

/// Writes a new handle to `*out`.
pub(crate) fn put<T>(out: *mut *mut T, v: T) -> Result<dinoedge_status, Fail> {
    if out.is_null() {
        return Err(Fail::arg("the output handle pointer is NULL"));
    }
    // SAFETY: `out` is a valid pointer to a handle slot (caller contract).
    unsafe { *out = Box::into_raw(Box::new(v)) };
    Ok(DINOEDGE_OK)
}

/// Frees a handle made by [`put`]; NULL is ignored.
pub(crate) fn drop_handle<T>(p: *mut T) {
    if !p.is_null() {
        // SAFETY: `p` came from `Box::into_raw` in `put` and is destroyed once (caller contract).
        let _ = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(p) })));
    }
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
        -100 => "DINOEDGE_ERR_INTERNAL\0",
        _ => "(not a dinoedge_status)\0",
    };
    s.as_ptr() as *const c_char
}

#[cfg(test)]
mod tests {
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
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == out,
            "ffi/include/dinoedge.h is out of date: run `DINOEDGE_BLESS=1 cargo test -p dinoedge-ffi header`"
        );
    }
}
