//! The benchmark suite lands here; see the README's "Benchmarks" section.

fn main() {
    eprintln!("uprobe-exec-bench: no benchmarks yet");
}
