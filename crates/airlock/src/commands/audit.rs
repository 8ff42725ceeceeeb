//! `airlock audit`: what an agent can reach, on the host and inside a sandbox.

use std::io::{Read, Seek};
use std::os::fd::AsRawFd;

use airlock_core::backend::ExecRequest;
use airlock_core::spec::SandboxSpec;
use airlock_core::store::Store;
use airlock_core::units;
use airlock_probe::{
    ContextKind, NetTargets, ProbeOptions, Report, Severity, render_compare, run_probe,
};

use super::backend;
use super::lifecycle::{build_spec, create_sandbox, ensure_running, remove_sandbox};
use crate::app::{Failure, fail};
use crate::cli::{AuditArgs, ModeArg, ProbeArgs, SandboxOpts};
use crate::{exit, ui};

fn targets(arg: &str) -> Result<NetTargets, Failure> {
    NetTargets::from_arg(arg).map_err(|e| fail(exit::USAGE, e))
}

/// `airlock __probe`: the probe in the current environment (inside a sandbox), as JSON.
pub fn probe(a: ProbeArgs) -> Result<i32, Failure> {
    let mut opts = ProbeOptions::from_env(targets(&a.net_targets)?);
    opts.context = if a.sandbox.is_some() {
        ContextKind::Sandbox
    } else {
        ContextKind::Host
    };
    opts.sandbox_name = a.sandbox;
    if a.workspace.is_some() {
        opts.workspace = a.workspace;
    }
    println!("{}", run_probe(&opts).to_json());
    Ok(0)
}

/// Run the probe inside `spec`'s sandbox (started for the occasion if stopped) and parse its report.
fn probe_in(store: &Store, spec: &SandboxSpec, net_targets: &str) -> Result<Report, Failure> {
    let exe = std::env::current_exe().map_err(|e| {
        fail(
            exit::FAILURE,
            format!("cannot find the airlock binary: {e}"),
        )
    })?;
    let be = backend(spec.isolation)?;
    let (state, started) = ensure_running(store, be.as_ref(), spec)?;
    let req = ExecRequest {
        argv: vec![
            "airlock".into(),
            "__probe".into(),
            "--net-targets".into(),
            net_targets.into(),
            "--sandbox".into(),
            spec.name.clone(),
            "--workspace".into(),
            spec.workspace.display().to_string(),
        ],
        host_executable: Some(exe),
        ..Default::default()
    };
    // The probe's report arrives on its stdout: point our fd 1 at an anonymous file for the
    // duration (no thread, so the namespace joining stays single-threaded).
    let capture = tempfile_anon()?;
    // SAFETY: dup/dup2 on our own descriptors; fd 1 is restored below.
    let saved = unsafe { libc::dup(1) };
    unsafe { libc::dup2(capture.as_raw_fd(), 1) };
    let result = be.exec(store, spec, &state, &req);
    // SAFETY: as above.
    unsafe {
        libc::dup2(saved, 1);
        libc::close(saved);
    }
    if started {
        let _ = be.stop(store, spec, &state, std::time::Duration::from_secs(2));
    }
    let code = result?;
    let mut text = String::new();
    let mut f = capture;
    f.rewind()
        .and_then(|_| f.read_to_string(&mut text))
        .map_err(|e| fail(exit::FAILURE, format!("reading the probe's report: {e}")))?;
    if code != 0 {
        return Err(fail(
            exit::FAILURE,
            format!(
                "the probe failed inside sandbox {} (exit {code})",
                spec.name
            ),
        ));
    }
    Report::from_json(&text).map_err(|e| {
        fail(
            exit::FAILURE,
            format!("the probe's report from sandbox {}: {e}", spec.name),
        )
    })
}

fn tempfile_anon() -> Result<std::fs::File, Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE | libc::O_CLOEXEC)
        .open(std::env::temp_dir())
        .map_err(|e| {
            fail(
                exit::FAILURE,
                format!(
                    "creating a temporary file in {}: {e}",
                    std::env::temp_dir().display()
                ),
            )
        })
}

/// A fresh sandbox with the default settings, for `--compare` without a name.
fn default_sandbox(store: &Store) -> Result<SandboxSpec, Failure> {
    let opts = SandboxOpts {
        workspace: None,
        workspace_mode: ModeArg::Cow,
        isolation: Some(crate::cli::IsolationArg::Namespace),
        docker: false,
        cpus: None,
        memory: None,
        pids: None,
        timeout: None,
        env: vec![],
        env_file: vec![],
        net: None,
        allow: vec![],
        deny: vec![],
        host_port: vec![],
        publish: vec![],
        template: None,
        ssh_agent: false,
        cache_dir: vec![],
    };
    let spec = build_spec(
        format!("audit-{}", units::generate_name()),
        &opts,
        true,
        store,
    )?;
    create_sandbox(store, &spec, backend(spec.isolation)?.as_ref())?;
    Ok(spec)
}

pub fn audit(a: AuditArgs) -> Result<i32, Failure> {
    let fail_on = a
        .fail_on
        .as_deref()
        .map(Severity::parse)
        .transpose()
        .map_err(|e| fail(exit::USAGE, e))?;
    let color = ui::color_stdout();
    let host = || {
        let mut opts = ProbeOptions::from_env(targets(&a.net_targets)?);
        opts.context = ContextKind::Host;
        Ok::<Report, Failure>(run_probe(&opts))
    };
    let (shown, printed) = match (&a.sandbox, &a.compare) {
        (Some(name), _) => {
            let store = Store::open()?;
            let spec = store.load(name)?;
            let r = probe_in(&store, &spec, &a.net_targets)?;
            let text = if a.json {
                r.to_json()
            } else {
                r.render_human(color)
            };
            (r, text)
        }
        (None, Some(name)) => {
            let store = Store::open()?;
            let (spec, temporary) = if name.is_empty() {
                (default_sandbox(&store)?, true)
            } else {
                (store.load(name)?, false)
            };
            let inside = probe_in(&store, &spec, &a.net_targets);
            if temporary {
                let _lock = store.lock(&spec.name)?;
                let _ = remove_sandbox(&store, backend(spec.isolation)?.as_ref(), &spec.name);
            }
            let inside = inside?;
            let h = host()?;
            let text = if a.json {
                format!(
                    "{{\"host\":{},\"sandbox\":{}}}",
                    h.to_json(),
                    inside.to_json()
                )
            } else {
                render_compare(&h, &inside, color)
            };
            (inside, text)
        }
        (None, None) => {
            let r = host()?;
            let text = if a.json {
                r.to_json()
            } else {
                r.render_human(color)
            };
            (r, text)
        }
    };
    println!("{printed}");
    Ok(match fail_on {
        Some(min) if shown.count(min) > 0 => exit::FAILURE,
        _ => 0,
    })
}
