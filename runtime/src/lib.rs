//! What runs while a program lives under uprobe-exec: the userfaultfd
//! wrapper ([`uffd`]), the fault server ([`server`]), and the probes' trap
//! handler ([`trap`]) with the probe area it reads ([`area`]).
//!
//! This crate knows nothing of ELF files: it serves page images at runtime
//! addresses. The `uprobe-exec` crate plans those images from the program.

// Unsafe code lives only in the modules that say `#![allow(unsafe_code)]`,
// one operation per block, each with its SAFETY argument: `uffd` (the
// syscall, its ioctls and message unions), `trap` (the handler's assembly),
// `area` (the shared counters, read as atomics), `image` and `server/install`
// (page images as pointers into the file mapping, copied with UFFDIO_COPY).
#![deny(unsafe_code)]

pub mod area;
pub mod events;
mod image;
pub mod latency;
pub mod server;
pub mod trap;
pub mod uffd;

pub use server::{Bell, MmId, ObjectId, ServeError, Server, TextImage, TextRange, TextStats, Wake};
pub use uffd::{CopyOutcome, Event, Uffd, UffdMode, PAGE_SIZE};
