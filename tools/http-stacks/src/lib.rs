//! The payloads every stack serves.
pub fn stats() -> String {
    format!("{{\"frames\":{},\"pad\":\"{}\"}}", 12345, "x".repeat(2000))
}
pub fn frame() -> Vec<u8> {
    vec![0xAB; 16 * 1024]
}
pub fn addr() -> String {
    std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18080".into())
}
