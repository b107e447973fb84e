//! Thin, safe wrappers over system calls that several parts of the loader
//! make, some of them in a forked child that may not allocate.

pub(crate) mod fdpass;
