//! Builds the C++ shim over libtorch's c10d against the torch wheel's headers
//! (the libtorch `tch` links) and Debian's Gloo headers, and checks that the
//! compiled shim defines no Gloo code of its own (see cpp/c10d_shim.cpp).

use std::path::{Path, PathBuf};
use std::process::Command;

const SHIM: &str = "cpp/c10d_shim.cpp";
const GLOO_HEADERS: &str = "/usr/include/gloo/context.h";

fn main() {
    println!("cargo:rerun-if-changed={SHIM}");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let torch = torch_dir();
    if !Path::new(GLOO_HEADERS).exists() {
        panic!(
            "forja-dist needs the Gloo headers ({GLOO_HEADERS}) to parse libtorch's ProcessGroupGloo.hpp: \
             install Debian's libgloo-dev (scripts/setup does, as root or with sudo)"
        );
    }
    let include = torch.join("include");
    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file(SHIM)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .define("USE_C10D_GLOO", None)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .warnings(false)
        .compile("forja_c10d");
    check_no_gloo_code();
    let lib = torch.join("lib");
    println!("cargo:rustc-link-search=native={}", lib.display());
    for l in ["torch_cpu", "c10"] {
        println!("cargo:rustc-link-lib=dylib={l}");
    }
}

/// The torch the workspace links: `LIBTORCH` (scripts/setup writes it into
/// .cargo/config.toml), else the one Python imports.
fn torch_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("LIBTORCH") {
        return PathBuf::from(dir);
    }
    let out = Command::new("python3")
        .args(["-c", "import torch, os; print(os.path.dirname(torch.__file__))"])
        .output()
        .expect("LIBTORCH is not set and python3 could not be run to find torch");
    assert!(out.status.success(), "LIBTORCH is not set and python3 cannot import torch");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// The shim may only call into libtorch: any Gloo function, vtable or method
/// of ProcessGroupGloo compiled here from Debian's (older) Gloo headers would
/// be code that disagrees with the Gloo inside libtorch.
fn check_no_gloo_code() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let archive = out_dir.join("libforja_c10d.a");
    let Ok(out) = Command::new("nm").args(["-C", "--defined-only"]).arg(&archive).output() else {
        println!("cargo:warning=nm not found: the check that the c10d shim defines no Gloo code was skipped");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let bad: Vec<&str> = text
        .lines()
        .filter_map(|l| l.splitn(3, ' ').nth(2))
        .filter(|sym| {
            sym.starts_with("gloo::")
                || sym.starts_with("c10d::ProcessGroupGloo::")
                || ((sym.starts_with("vtable for ") || sym.starts_with("typeinfo")) && sym.contains("loo"))
        })
        .collect();
    assert!(bad.is_empty(), "the c10d shim compiled Gloo code of its own (it must only call libtorch): {bad:?}");
}
