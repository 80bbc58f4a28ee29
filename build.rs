//! Link settings for the `wsbridge` binary.
//!
//! Release builds for glibc pack their relative relocations (`DT_RELR`,
//! glibc 2.36+ and binutils 2.38+): a position-independent binary otherwise
//! carries ~800 KB of relocation records that the loader reads, and keeps
//! resident, in every process at start-up. Address randomisation is kept.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=WSBRIDGE_NO_RELR");
    let var = |name: &str| std::env::var(name).unwrap_or_default();
    let release = var("PROFILE") == "release";
    let glibc_linux = var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu";
    let supported_arch = matches!(var("CARGO_CFG_TARGET_ARCH").as_str(), "x86_64" | "aarch64");
    if release && glibc_linux && supported_arch && std::env::var_os("WSBRIDGE_NO_RELR").is_none() {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
