//! Gives libdinoedge.so a versioned SONAME (libdinoedge.so.<ABI>) on Linux, so programs link
//! against the ABI, not the file.
fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libdinoedge.so.1");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
