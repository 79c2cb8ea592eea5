//! dinoedge-ffi: the C API (`libdinoedge.so` / `libdinoedge.a` with a cbindgen-generated
//! `dinoedge.h`): opaque model and session handles, status codes with a thread-local last
//! error, and no panic across the boundary.
//!
//! Nothing is implemented here yet: the C API lands with its own issue. The crate exists now
//! so that the workspace graph (runtime <- distill <- sdk <- ffi) is fixed.
