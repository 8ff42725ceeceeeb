//! What the VM tests share: the static guest agent, built once per test run.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Build the static guest agent once (`cargo build-guest`) into this test run's target dir.
pub fn guest_agent(bin: &str) -> PathBuf {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            // `bin` is <target>/debug/airlock.
            let target = PathBuf::from(bin)
                .parent()
                .and_then(|p| p.parent())
                .expect("the airlock binary lives in a target directory")
                .to_path_buf();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let st = Command::new(cargo)
                .arg("build-guest")
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .env("CARGO_TARGET_DIR", &target)
                .status()
                .expect("running cargo build-guest");
            assert!(st.success(), "cargo build-guest failed");
            let agent = target.join("x86_64-unknown-linux-gnu/release/airlock-guest");
            assert!(agent.is_file(), "{} missing", agent.display());
            agent
        })
        .clone()
}
