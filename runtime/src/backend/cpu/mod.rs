//! The CPU's device layer: the fork-join thread pool ([`pool`]) the fast kernels run on, and
//! the kernel family (ISA) chosen at run time ([`isa`]), and the AMX tile permission ([`amx`]).

pub mod amx;
pub mod isa;
pub mod pool;
