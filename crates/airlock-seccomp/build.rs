//! Fingerprints the filter compiler for the on-disk cache of compiled filters (see
//! `COMPILER_ID`): a hash of this crate's sources and of the workspace's lock file (which pins
//! seccompiler), so a filter compiled by any other build of the compiler is never reused.

use std::path::Path;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&dir);
    let mut files: Vec<_> = std::fs::read_dir(dir.join("src"))
        .expect("the crate's src directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    files.sort();
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for f in &files {
        h = fnv1a(h, f.file_name().unwrap_or_default().as_encoded_bytes());
        h = fnv1a(h, &std::fs::read(f).expect("a source file of the crate"));
    }
    let lock = dir.join("../../Cargo.lock");
    if let Ok(bytes) = std::fs::read(&lock) {
        h = fnv1a(h, &bytes);
    }
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed={}", lock.display());
    println!("cargo:rustc-env=AIRLOCK_SECCOMP_COMPILER_HASH={h:016x}");
}
