//! `airlock doctor`: what this host gives each isolation tier, and what to do about what is missing.

use serde::Serialize;

use crate::app::Failure;
use crate::ui;

#[derive(Debug, Serialize)]
struct Check {
    /// What was checked.
    name: &'static str,
    /// "ok", "degraded" (works, with less) or "missing" (the feature cannot work).
    status: &'static str,
    detail: String,
}

fn check(name: &'static str, status: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        status,
        detail: detail.into(),
    }
}

fn namespace_checks() -> Vec<Check> {
    let mut out = Vec::new();
    out.push(match airlock_ns::namespaces::preflight() {
        Ok(()) => check("user namespaces", "ok", "available"),
        Err(e) => check("user namespaces", "missing", e.to_string()),
    });
    out.push(match airlock_ns::cgroups::detect() {
        airlock_ns::cgroups::Hierarchy::V2 { mount, .. } => {
            check("cgroups", "ok", format!("v2 at {}", mount.display()))
        }
        airlock_ns::cgroups::Hierarchy::V1 { controllers } => check(
            "cgroups",
            "ok",
            format!(
                "v1 controllers: {} (limits use them where writable, else rlimits)",
                controllers
                    .iter()
                    .map(|(n, _, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        airlock_ns::cgroups::Hierarchy::None => check(
            "cgroups",
            "degraded",
            "no cgroup hierarchy: --memory/--cpus/--pids fall back to rlimits",
        ),
    });
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun");
    out.push(match tun {
        Ok(_) => check(
            "transparent network capture",
            "ok",
            "/dev/net/tun is usable: every connection reaches the gate, proxy-aware or not",
        ),
        Err(e) => check(
            "transparent network capture",
            "degraded",
            format!(
                "/dev/net/tun: {e}; only proxy-aware programs reach the network (everything else is refused, never leaked); run as root, or give your user access to /dev/net/tun"
            ),
        ),
    });
    out
}

fn vm_checks(store: &airlock_core::store::Store) -> Vec<Check> {
    let mut out = Vec::new();
    let program = |name: &'static str, r: airlock_vm::Result<std::path::PathBuf>| match r {
        Ok(p) => check(name, "ok", p.display().to_string()),
        Err(e) => check(name, "missing", e.to_string()),
    };
    out.push(program("qemu", airlock_vm::qemu::find_qemu()));
    out.push(program("virtiofsd", airlock_vm::qemu::find_virtiofsd()));
    out.push(program("guest agent", airlock_vm::backend::guest_agent()));
    out.push(match airlock_vm::backend::guest_kernel() {
        Ok(k) => check(
            "guest kernel",
            "ok",
            format!("{} ({})", k.version, k.image.display()),
        ),
        Err(e) => check("guest kernel", "missing", e.to_string()),
    });
    let accel = airlock_vm::kvm::probe(&store.paths.runtime);
    out.push(match &accel {
        airlock_vm::kvm::Accel::Kvm => check("vm accelerator", "ok", "KVM"),
        airlock_vm::kvm::Accel::Tcg { why } => check(
            "vm accelerator",
            "degraded",
            format!(
                "TCG (software emulation: VMs boot in seconds, run several times slower): {why}"
            ),
        ),
    });
    out
}

pub fn doctor(json: bool) -> Result<i32, Failure> {
    let store = airlock_core::store::Store::open()?;
    let ns = namespace_checks();
    let vm = vm_checks(&store);
    let ns_ok = ns.iter().all(|c| c.status != "missing");
    let vm_ok = ns_ok && vm.iter().all(|c| c.status != "missing");
    if json {
        #[derive(Serialize)]
        struct Report<'a> {
            namespace_tier: bool,
            vm_tier: bool,
            checks: Vec<&'a Check>,
        }
        let report = Report {
            namespace_tier: ns_ok,
            vm_tier: vm_ok,
            checks: ns.iter().chain(&vm).collect(),
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(anyhow::Error::from)?
        );
    } else {
        let show = |title: &str, ok: bool, checks: &[Check]| {
            println!(
                "{} {}",
                ui::bold(title),
                if ok { "ready" } else { "not available" }
            );
            for c in checks {
                println!("  {:<28} {:<9} {}", c.name, c.status, c.detail);
            }
        };
        show("namespace tier (--isolation namespace):", ns_ok, &ns);
        show("microVM tier (--isolation vm):", vm_ok, &vm);
    }
    Ok(if ns_ok { 0 } else { crate::exit::FAILURE })
}
