//! dinoedge-distill: trains small DINOv3-style ViT students to reproduce a teacher's CLS and
//! patch features (forward and backward for every op of the student, AdamW with EMA, cached
//! teacher features, checkpoints that resume bit-for-bit).
//!
//! Nothing is implemented here yet: the trainer lands with the distillation issue. The crate
//! exists now so that the workspace graph (runtime <- distill <- sdk <- ffi) is fixed.
