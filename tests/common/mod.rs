//! The shared lab lives in the library so benchmarks use the same code.
#![allow(unused_imports)]
pub use throttled::testing::lab::*;
