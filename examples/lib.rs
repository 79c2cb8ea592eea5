//! Runnable examples of the dinoedge SDK; see the `[[example]]` targets in Cargo.toml
//! (`cargo run --release -p dinoedge-examples --example embed -- MODEL_DIR IMAGE`).
