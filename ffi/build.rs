//! Gives libdinoedge.so a versioned SONAME (libdinoedge.so.<ABI>) on Linux, so programs link
//! against the ABI, not the file. The ABI number is read from `DINOEDGE_ABI_VERSION` in
//! src/lib.rs (the one place it is set; the header test checks cbindgen.toml agrees).
fn main() {
    let lib = std::fs::read_to_string("src/lib.rs").expect("src/lib.rs");
    let abi = lib
        .lines()
        .find_map(|l| l.strip_prefix("pub const DINOEDGE_ABI_VERSION: u32 = "))
        .and_then(|v| v.trim_end_matches(';').parse::<u32>().ok())
        .expect("pub const DINOEDGE_ABI_VERSION: u32 = N; in src/lib.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libdinoedge.so.{abi}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/lib.rs");
}
