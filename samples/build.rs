//! Compiles every `c/*.c` and `c/*.cpp` file into four ELF variants (static, static-pie,
//! dynamic PIE, dynamic non-PIE) with the system C compiler, and every `rust/*.rs`
//! file into the same four with rustc.
//!
//! A C source may ask for another build on a `// build-kind: ...` line:
//! `dynamic` builds only the two dynamically linked variants (`NAME-pie`,
//! `NAME-nopie`; such samples are listed in `DYNAMIC_NAMES`, not `NAMES`),
//! and `shared FILE` builds a shared object `FILE` (`-shared -fPIC`; its
//! soname, if any, comes from its `// build-flags:`) beside the programs.
//!
//! Outputs go to `$OUT_DIR/bin/NAME-VARIANT` and are also copied to
//! `<target dir>/<profile>/samples/` so they are easy to run by hand.
//! Only std is used; the compiler is `$CC` if set, otherwise `cc` (for
//! `c/*.cpp`, `$CXX` or `c++`; for `rust/*.rs`, `$RUSTC`, which cargo sets).

use std::env;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Flags shared by every variant.
const COMMON_FLAGS: &[&str] = &[
    "-O2",
    "-g",
    "-pthread",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-fno-omit-frame-pointer",
];

/// (suffix, C compiler flags, rustc flags) for each variant; keep in sync with
/// `Variant` in lib.rs.
type VariantFlags = (
    &'static str,
    &'static [&'static str],
    &'static [&'static str],
);
const VARIANTS: &[VariantFlags] = &[
    (
        "static",
        &["-static", "-no-pie", "-fno-pie"],
        &["-Ctarget-feature=+crt-static", "-Crelocation-model=static"],
    ),
    (
        "static-pie",
        &["-static-pie", "-fPIE"],
        &["-Ctarget-feature=+crt-static", "-Crelocation-model=pie"],
    ),
    ("pie", &["-fPIE", "-pie"], &["-Crelocation-model=pie"]),
    (
        "nopie",
        &["-fno-pie", "-no-pie"],
        &["-Crelocation-model=static"],
    ),
];

/// Flags of a `// build-kind: shared FILE` source.
const SHARED_FLAGS: &[&str] = &["-shared", "-fPIC"];

/// Flags of every Rust sample: optimized, with line tables so that
/// `std::backtrace` names inlined frames too.
const RUST_FLAGS: &[&str] = &["--edition=2021", "-O", "-Cdebuginfo=1"];

const INSTALL_HINT: &str = "install a C toolchain with static libc, e.g. \
     `apt-get install gcc libc6-dev` (Debian/Ubuntu) or `dnf install gcc glibc-static` (Fedora)";

fn main() {
    println!("cargo:rerun-if-changed=c");
    println!("cargo:rerun-if-changed=rust");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    println!("cargo:rerun-if-env-changed=CXX");

    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let cc = env::var("CC")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "cc".into());

    let all_c = sources_in(&manifest_dir.join("c"), &["c", "cpp"]);
    let (sources, others): (Vec<PathBuf>, Vec<PathBuf>) =
        all_c.into_iter().partition(|src| build_kind(src).is_none());
    let rust_sources = sources_in(&manifest_dir.join("rust"), &["rs"]);
    let bin_dir = out_dir.join("bin");
    fs::create_dir_all(&bin_dir).expect("create $OUT_DIR/bin");

    // One compiler run per (source, variant), run in parallel.
    let mut jobs = Vec::new();
    for src in sources.iter().chain(&rust_sources) {
        let name = src.file_stem().unwrap().to_str().expect("UTF-8 file name");
        let rust = src.extension().is_some_and(|e| e == "rs");
        for (suffix, c_flags, rust_flags) in VARIANTS {
            jobs.push((
                src.clone(),
                bin_dir.join(format!("{name}-{suffix}")),
                if rust { *rust_flags } else { *c_flags },
            ));
        }
    }
    // Sources of another kind: the dynamic variants only, or a shared object.
    let mut dynamic_sources = Vec::new();
    for src in &others {
        let name = src.file_stem().unwrap().to_str().expect("UTF-8 file name");
        let kind = build_kind(src).unwrap();
        let words: Vec<&str> = kind.split_whitespace().collect();
        match words.as_slice() {
            ["dynamic"] => {
                dynamic_sources.push(src.clone());
                for (suffix, c_flags, _) in VARIANTS {
                    if *suffix == "pie" || *suffix == "nopie" {
                        jobs.push((
                            src.clone(),
                            bin_dir.join(format!("{name}-{suffix}")),
                            *c_flags,
                        ));
                    }
                }
            }
            ["shared", file] => jobs.push((src.clone(), bin_dir.join(file), SHARED_FLAGS)),
            _ => panic!("{}: unknown `// build-kind: {kind}`", src.display()),
        }
    }
    let errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|(src, out, flags)| s.spawn(|| compile(&cc, src, out, flags)))
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().unwrap().err())
            .collect()
    });
    // Report the first failure in full (the other variants usually fail the same way).
    if let Some(first) = errors.first() {
        panic!(
            "failed to build sample programs ({} of {} compiler runs failed); first error:\n\n{first}",
            errors.len(),
            jobs.len()
        );
    }

    // Stable copy: OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out.
    if let Some(profile_dir) = out_dir.ancestors().nth(3) {
        let stable = profile_dir.join("samples");
        fs::create_dir_all(&stable).expect("create <target>/<profile>/samples");
        for (_, out, _) in &jobs {
            let dest = stable.join(out.file_name().unwrap());
            // Remove first: overwriting a binary that is running fails with ETXTBSY.
            let _ = fs::remove_file(&dest);
            fs::copy(out, &dest)
                .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", out.display(), dest.display()));
            set_executable(&dest);
        }
    }

    // Sample names for lib.rs (`NAMES`, `RUST_NAMES`, `DYNAMIC_NAMES`).
    write_names(&out_dir.join("names.rs"), &sources);
    write_names(&out_dir.join("rust_names.rs"), &rust_sources);
    write_names(&out_dir.join("dynamic_names.rs"), &dynamic_sources);
}

/// What a `// build-kind: ...` line asks for, if the source has one.
fn build_kind(src: &Path) -> Option<String> {
    let text = fs::read_to_string(src).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("// build-kind:"))
        .map(|k| k.trim().to_string())
}

/// Writes the file stems of `sources` to `path` as a Rust slice expression.
fn write_names(path: &Path, sources: &[PathBuf]) {
    let names: Vec<String> = sources
        .iter()
        .map(|p| format!("{:?}", p.file_stem().unwrap().to_str().unwrap()))
        .collect();
    fs::write(path, format!("&[{}]\n", names.join(", ")))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// All files in `dir` whose extension is one of `exts`, sorted by name.
fn sources_in(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut sources: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|entry| entry.expect("read_dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| exts.iter().any(|x| e == *x)))
        .collect();
    sources.sort();
    sources
}

/// Compiles `src` into `out`; on failure returns a message with the compiler's output.
fn compile(cc: &str, src: &Path, out: &Path, variant_flags: &[&str]) -> Result<(), String> {
    // C++ sources with the C++ compiler (`$CXX`, else `c++`), Rust ones
    // with `$RUSTC`.
    let other;
    let (cc, common) = match src.extension().and_then(|e| e.to_str()) {
        Some("cpp") => {
            other = env::var("CXX")
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "c++".into());
            (other.as_str(), COMMON_FLAGS)
        }
        Some("rs") => {
            other = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
            (other.as_str(), RUST_FLAGS)
        }
        _ => (cc, COMMON_FLAGS),
    };
    let mut cmd = Command::new(cc);
    cmd.args(common)
        .args(variant_flags)
        .args(source_flags(src))
        .arg("-o")
        .arg(out)
        .arg(src);
    let output = cmd
        .output()
        .map_err(|e| format!("could not run the compiler `{cc}`: {e}\n{INSTALL_HINT}"))?;
    if !output.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}):\n{}{}\n{INSTALL_HINT}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        ));
    }
    set_executable(out);
    Ok(())
}

/// Extra flags a source asks for on a `// build-flags: ...` line.
fn source_flags(src: &Path) -> Vec<String> {
    let text = fs::read_to_string(src).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("// build-flags:"))
        .map(|f| f.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

fn set_executable(path: &Path) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod 0755 {}: {e}", path.display()));
}
