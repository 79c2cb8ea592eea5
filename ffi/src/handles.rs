//! Handle bookkeeping: every object handed to C is registered with its type, so a handle of
//! the wrong type, a destroyed one, or a second destroy is refused with
//! `DINOEDGE_ERR_INVALID_ARGUMENT` instead of being dereferenced.
//!
//! The registry maps the object's address to its type name; lookups take one mutex and a
//! B-tree probe, nothing next to an embed.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;

use crate::dinoedge_status::{self, *};
use crate::{Fail, set_error};

/// An object type handed to C.
pub(crate) trait Handle: 'static {
    /// The C type name, for messages (`dinoedge_model`).
    const NAME: &'static str;
}

static LIVE: Mutex<BTreeMap<usize, &'static str>> = Mutex::new(BTreeMap::new());

fn live() -> std::sync::MutexGuard<'static, BTreeMap<usize, &'static str>> {
    LIVE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Checks that `p` is a live handle of type `T`.
fn check<T: Handle>(p: *const T, what: &str) -> Result<(), Fail> {
    if p.is_null() {
        return Err(Fail::arg(format!("{what} is NULL")));
    }
    match live().get(&(p as usize)) {
        Some(&name) if name == T::NAME => Ok(()),
        Some(&name) => Err(Fail::arg(format!("{what} is a {name}, not a {}", T::NAME))),
        None => Err(Fail::arg(format!(
            "{what} is not a live {} (already destroyed, or not made by dinoedge)",
            T::NAME
        ))),
    }
}

/// A borrowed library object.
pub(crate) fn obj<'a, T: Handle>(p: *const T, what: &str) -> Result<&'a T, Fail> {
    check(p, what)?;
    // SAFETY: registered handles point at live boxes made by `put`.
    Ok(unsafe { &*p })
}

/// A mutably borrowed library object (one thread at a time, the documented contract).
pub(crate) fn obj_mut<'a, T: Handle>(p: *mut T, what: &str) -> Result<&'a mut T, Fail> {
    check(p, what)?;
    // SAFETY: as `obj`; the caller does not share the handle across threads.
    Ok(unsafe { &mut *p })
}

/// A library object, or `None` for anything that is not a live `T` (for accessors that
/// return pointers and have no status).
pub(crate) fn obj_opt<'a, T: Handle>(p: *const T) -> Option<&'a T> {
    obj(p, "handle").ok()
}

/// Writes a new registered handle to `*out`.
pub(crate) fn put<T: Handle>(out: *mut *mut T, v: T) -> Result<dinoedge_status, Fail> {
    if out.is_null() {
        return Err(Fail::arg("the output handle pointer is NULL"));
    }
    let p = Box::into_raw(Box::new(v));
    live().insert(p as usize, T::NAME);
    // SAFETY: `out` is a valid pointer to a handle slot (caller contract).
    unsafe { *out = p };
    Ok(DINOEDGE_OK)
}

/// Destroys a handle made by [`put`]. NULL is a no-op; anything that is not a live `T` is
/// refused (and left alone) with DINOEDGE_ERR_INVALID_ARGUMENT.
pub(crate) fn destroy<T: Handle>(p: *mut T, what: &str) -> dinoedge_status {
    if p.is_null() {
        set_error("");
        return DINOEDGE_OK;
    }
    {
        let mut reg = live();
        match reg.get(&(p as usize)) {
            Some(&name) if name == T::NAME => {
                reg.remove(&(p as usize));
            }
            _ => {
                drop(reg);
                let Err(Fail(status, msg)) = check(p, what) else {
                    unreachable!("not registered as a {}", T::NAME)
                };
                set_error(&msg);
                return status;
            }
        }
    }
    // SAFETY: `p` came from `Box::into_raw` in `put` and was just unregistered, so this is
    // its only drop.
    let dropped = catch_unwind(AssertUnwindSafe(|| drop(unsafe { Box::from_raw(p) })));
    if dropped.is_err() {
        set_error(&format!("internal error while destroying a {}", T::NAME));
        return DINOEDGE_ERR_INTERNAL;
    }
    set_error("");
    DINOEDGE_OK
}
