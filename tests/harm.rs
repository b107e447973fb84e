//! "Do no harm" (issue 10): a probe never crashes, stops or changes the
//! program it watches. Every test compares with a native run.

#[path = "common/mod.rs"]
mod common;

use common::*;
use uprobe_exec_samples::{path as sample, Variant};

#[test]
fn processes_that_outlive_the_first_never_run_unfilled_text() {
    // The first process exits after 100 ms while its child forks 300
    // grandchildren; they wait, half of them drop the whole text, and all
    // call 2048 page-sized functions. Each must compute the native answer.
    for (v, probes) in [
        (Variant::Static, &[][..]),
        (Variant::Pie, &["-q", "-p", "big_00*"][..]),
        (Variant::StaticPie, &["-q", "--probe-mode", "int3", "-p", "big_7f*"][..]),
    ] {
        let mut case = Case::new(sample("bigtext", v), ["--outlive", "300"]);
        for o in probes {
            case = case.opt(o);
        }
        let (n, _) = case.compare();
        assert_eq!(n.stdout_str(), "outlive ok=300 of 300\n", "{v:?}");
    }
}
