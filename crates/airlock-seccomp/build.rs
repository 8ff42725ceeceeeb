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
    let src = dir.join("src");
    let mut files = Vec::new();
    let mut dirs = vec![src.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).expect("a directory of the crate's sources") {
            let p = e.expect("a directory entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap_or(f);
        h = fnv1a(h, rel.as_os_str().as_encoded_bytes());
        h = fnv1a(h, &std::fs::read(f).expect("a source file of the crate"));
    }
    let lock = dir.join("../../Cargo.lock");
    match std::fs::read(&lock) {
        Ok(bytes) => h = fnv1a(h, &bytes),
        Err(_) => println!(
            "cargo:warning=no workspace Cargo.lock: the seccomp filter cache key does not cover seccompiler's version"
        ),
    }
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rerun-if-changed={}", lock.display());
    println!("cargo:rustc-env=AIRLOCK_SECCOMP_COMPILER_HASH={h:016x}");
}
