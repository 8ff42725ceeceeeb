//! Development runner for the probe (the product entry point is `airlock audit`).
//!
//! `airlock-probe [--json] [--home DIR] [--workspace DIR] [--net-targets none|builtin|FILE]
//!                [--extra-port PORT]... [--sandbox NAME]`
//!
//! Network targets default to `none` here: pass `--net-targets builtin` to try them.

use std::path::PathBuf;
use std::process::ExitCode;

use airlock_probe::{ContextKind, NetTargets, ProbeOptions, run_probe};

fn main() -> ExitCode {
    let mut opts = ProbeOptions::from_env(NetTargets::None);
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let r: Result<(), String> = (|| {
            match a.as_str() {
                "--json" => json = true,
                "--home" => opts.home = PathBuf::from(val("--home")?),
                "--workspace" => opts.workspace = Some(PathBuf::from(val("--workspace")?)),
                "--net-targets" => {
                    opts.net_targets =
                        NetTargets::from_arg(&val("--net-targets")?).map_err(|e| e.to_string())?
                }
                "--extra-port" => opts.extra_loopback_ports.push(
                    val("--extra-port")?
                        .parse()
                        .map_err(|_| "--extra-port needs a port number".to_string())?,
                ),
                "--sandbox" => {
                    opts.context = ContextKind::Sandbox;
                    opts.sandbox_name = Some(val("--sandbox")?);
                }
                "-h" | "--help" => {
                    println!(
                        "airlock-probe [--json] [--home DIR] [--workspace DIR] [--net-targets none|builtin|FILE] [--extra-port PORT]... [--sandbox NAME]"
                    );
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument `{other}`; see --help")),
            }
            Ok(())
        })();
        if let Err(e) = r {
            eprintln!("airlock-probe: {e}");
            return ExitCode::from(2);
        }
    }
    let report = run_probe(&opts);
    if json {
        println!("{}", report.to_json());
    } else {
        let color = std::io::IsTerminal::is_terminal(&std::io::stdout());
        print!("{}", report.render_human(color));
    }
    ExitCode::SUCCESS
}
