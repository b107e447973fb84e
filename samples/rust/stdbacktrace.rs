//! Rust's `std::backtrace` inside timed functions: the tests compare the
//! output with a native run, and the calls counted with what the program
//! says.
//!
//!   stdbacktrace N   N times: `bt_outer` calls `bt_middle`, which calls
//!                    `bt_inner`, which captures a backtrace. Prints the
//!                    function names of the first capture's frames, one
//!                    a line (`frame=NAME`), then `calls=N same=S`: S of
//!                    the N captures named the same frames as the first.

use std::backtrace::Backtrace;
use std::hint::black_box;

/// Captures a backtrace here and returns its function names, outermost last.
#[no_mangle]
#[inline(never)]
pub fn bt_inner() -> Vec<String> {
    let bt = Backtrace::force_capture();
    black_box(names(&bt.to_string()))
}

/// Calls `bt_inner`.
#[no_mangle]
#[inline(never)]
pub fn bt_middle() -> Vec<String> {
    black_box(bt_inner())
}

/// Calls `bt_middle`.
#[no_mangle]
#[inline(never)]
pub fn bt_outer() -> Vec<String> {
    black_box(bt_middle())
}

/// The function names of a backtrace's text: each frame is `  N: NAME`,
/// inlined callers follow as `      NAME`, and source lines as `at FILE`.
fn names(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("at "))
        .map(|l| match l.split_once(": ") {
            Some((i, name)) if i.bytes().all(|b| b.is_ascii_digit()) => name.to_string(),
            _ => l.to_string(),
        })
        .collect()
}

fn main() {
    let n: usize = match std::env::args().nth(1).map(|a| a.parse()) {
        Some(Ok(n)) if n > 0 => n,
        _ => {
            eprintln!("usage: stdbacktrace N");
            std::process::exit(2);
        }
    };
    let (mut first, mut same) = (Vec::new(), 0);
    for i in 0..n {
        let frames = bt_outer();
        if i == 0 {
            first = frames;
            same = 1;
        } else if frames == first {
            same += 1;
        }
    }
    for name in &first {
        println!("frame={name}");
    }
    println!("calls={n} same={same}");
}
