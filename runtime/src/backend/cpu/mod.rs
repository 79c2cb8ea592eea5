//! The CPU's device layer: the fork-join thread pool ([`pool`]) the fast kernels run on, and
//! the kernel family (ISA) chosen at run time ([`isa`]).

pub mod isa;
pub mod pool;
