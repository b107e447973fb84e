//! Thin, safe wrappers over the system calls the loader makes outside the
//! forked stage: each function is one operation, and argues inside why it
//! is sound. The modules above this one are safe Rust.
//!
//! | module | what |
//! |---|---|
//! | [`clock`] | the time stamp counter and CLOCK_MONOTONIC |
//! | [`fdpass`] | messages with fds attached (`SCM_RIGHTS`), also used after the fork |
//! | [`mm`] | address reservations, the probe area's memory, the program file's mapping, mapping names |
//! | [`process`] | `personality`, `F_GETFD` |
//! | [`signal`] | `sigset_t` masks |

pub(crate) mod clock;
pub(crate) mod fdpass;
pub(crate) mod mm;
pub(crate) mod process;
pub(crate) mod signal;
