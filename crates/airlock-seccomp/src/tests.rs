//! Unit tests: policy validation, and the compiled BPF evaluated by a small
//! interpreter for both supported architectures. Kernel behaviour is covered by
//! the integration tests in `tests/`.

use crate::bpf_interp::{Data, run_all};
use crate::policy::Policy;
use crate::syscalls::{ARCHES, Arch};
use crate::{DEFAULT_POLICY_TOML, SeccompError, SeccompProgram, compile};

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;
const EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
const ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;

const CLONE_NEW_FLAGS: [u64; 8] = [
    0x1000_0000, // CLONE_NEWUSER
    0x0002_0000, // CLONE_NEWNS
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
    0x0800_0000, // CLONE_NEWIPC
    0x0400_0000, // CLONE_NEWUTS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0000_0080, // CLONE_NEWTIME
];

fn default_for(arch: Arch) -> SeccompProgram {
    compile(
        &Policy::parse(DEFAULT_POLICY_TOML).expect("default policy parses"),
        arch,
    )
    .expect("default policy compiles")
}

fn nr(arch: Arch, name: &str) -> u32 {
    let (_, nr) = arch
        .lookup(name)
        .unwrap_or_else(|| panic!("{name} on {arch:?}"));
    u32::try_from(nr).expect("small syscall number")
}

fn verdict(prog: &SeccompProgram, name: &str, args: &[u64]) -> u32 {
    verdict_nr(prog, nr(prog.arch, name), args)
}

fn verdict_nr(prog: &SeccompProgram, nr: u32, args: &[u64]) -> u32 {
    let mut a = [0u64; 6];
    a[..args.len()].copy_from_slice(args);
    run_all(
        prog.filters(),
        &Data {
            nr,
            arch: prog.arch.audit_arch(),
            args: a,
        },
    )
}

fn err_of(text: &str) -> SeccompError {
    match SeccompProgram::compile_from_toml(text) {
        Ok(p) => panic!("expected an error, compiled {p:?}"),
        Err(e) => e,
    }
}

#[test]
fn default_policy_compiles() {
    let p = SeccompProgram::compile_default().expect("default policy");
    assert_eq!(p.arch(), std::env::consts::ARCH);
    assert!(p.instruction_count() > 0);
    for arch in ARCHES {
        let p = default_for(arch);
        // The guard (with every unconditional denial in its tree) and the EPERM filter of the
        // conditional rules, chained into one program: one attach per start.
        assert_eq!(p.filters().len(), 1, "{arch:?}");
        let separate = crate::compile_with(
            &Policy::parse(DEFAULT_POLICY_TOML).expect("parses"),
            arch,
            false,
        )
        .expect("compiles");
        assert_eq!(separate.filters().len(), 2, "{arch:?}");
    }
}

/// Every entry of the reviewed data file carries a real reason. Checked on the
/// raw TOML, independently of the parser's own validation.
#[test]
fn every_entry_in_data_file_has_a_why() {
    let doc: toml::Table = toml::from_str(DEFAULT_POLICY_TOML).expect("valid TOML");
    let mut count = 0;
    for section in ["deny", "allow"] {
        let entries = doc
            .get(section)
            .and_then(|v| v.as_array())
            .unwrap_or_else(|| panic!("[[{section}]] entries present"));
        for entry in entries {
            let name = entry
                .get("syscall")
                .and_then(|v| v.as_str())
                .expect("syscall");
            let why = entry.get("why").and_then(|v| v.as_str()).unwrap_or("");
            assert!(
                why.trim().len() >= 20,
                "[[{section}]] {name}: `why` missing or too short: {why:?}"
            );
            count += 1;
        }
    }
    assert!(count > 50, "only {count} entries");
    let p = SeccompProgram::compile_default().expect("default policy");
    assert!(p.rules().iter().all(|r| !r.why.is_empty()));
    assert!(p.allowed_decisions().iter().all(|r| !r.why.is_empty()));
}

#[test]
fn required_syscalls_are_denied() {
    let p = SeccompProgram::compile_default().expect("default policy");
    let denied = p.denied_syscalls();
    let mut required = vec![
        "kexec_load",
        "kexec_file_load",
        "init_module",
        "finit_module",
        "delete_module",
        "bpf",
        "perf_event_open",
        "keyctl",
        "add_key",
        "request_key",
        "open_by_handle_at",
        "name_to_handle_at",
        "userfaultfd",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "mount",
        "umount2",
        "pivot_root",
        "move_mount",
        "open_tree",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "mount_setattr",
        "unshare",
        "setns",
        "clone",
        "clone3",
        "reboot",
        "swapon",
        "swapoff",
        "acct",
        "quotactl",
        "quotactl_fd",
        "personality",
        "ioctl",
        "lookup_dcookie",
        "settimeofday",
        "clock_settime",
        "clock_adjtime",
        "syslog",
        "socket",
    ];
    if cfg!(target_arch = "x86_64") {
        required.extend([
            "iopl",
            "ioperm",
            "nfsservctl",
            "adjtimex",
            "uselib",
            "create_module",
            "get_kernel_syms",
            "query_module",
            "_sysctl",
            "ustat",
            "sysfs",
        ]);
        assert!(p.skipped_syscalls().contains(&"vm86"));
        assert!(p.skipped_syscalls().contains(&"vm86old"));
    }
    for name in required {
        assert!(denied.contains(&name), "{name} is not denied");
    }
    for name in [
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "kcmp",
        "pidfd_getfd",
    ] {
        assert!(!denied.contains(&name), "{name} should stay allowed");
        assert!(
            p.allowed_decisions().iter().any(|a| a.syscall == name),
            "{name}"
        );
    }
    let sorted = {
        let mut d = denied.clone();
        d.sort_unstable();
        d
    };
    assert_eq!(denied, sorted);
}

#[test]
fn rules_describe_conditions() {
    let p = SeccompProgram::compile_default().expect("default policy");
    let mount = p
        .rules()
        .iter()
        .find(|r| r.syscall == "mount")
        .expect("mount");
    assert_eq!(mount.when, None);
    assert_eq!(mount.errno, "EPERM");
    let clone3 = p
        .rules()
        .iter()
        .find(|r| r.syscall == "clone3")
        .expect("clone3");
    assert_eq!(clone3.errno, "ENOSYS");
    let packet = p
        .rules()
        .iter()
        .find(|r| r.syscall == "socket" && r.why.contains("AF_PACKET"))
        .expect("AF_PACKET rule");
    assert_eq!(packet.when.as_deref(), Some("(u32)arg0 == 0x11"));
    let perso = p
        .rules()
        .iter()
        .find(|r| r.syscall == "personality")
        .expect("personality");
    assert_eq!(
        perso.when.as_deref(),
        Some("((u32)arg0 & 0x40000) == 0x40000 && (u32)arg0 != 0xffffffff")
    );
}

#[test]
fn unconditional_denies_match_regardless_of_arguments() {
    for arch in ARCHES {
        let p = default_for(arch);
        for rule in p.rules().iter().filter(|r| r.when.is_none()) {
            let expect = if rule.errno == "ENOSYS" {
                ENOSYS
            } else {
                EPERM
            };
            for args in [&[][..], &[u64::MAX; 6][..], &[1, 2, 3, 4, 5, 6][..]] {
                assert_eq!(
                    verdict(&p, rule.syscall, args),
                    expect,
                    "{arch:?} {}",
                    rule.syscall
                );
            }
        }
        for decision in p.allowed_decisions() {
            assert_eq!(
                verdict(&p, decision.syscall, &[]),
                ALLOW,
                "{}",
                decision.syscall
            );
        }
        for name in [
            "read",
            "write",
            "getpid",
            "execve",
            "openat",
            "mmap",
            "wait4",
            "exit_group",
        ] {
            assert_eq!(verdict(&p, name, &[u64::MAX; 6]), ALLOW, "{arch:?} {name}");
        }
    }
}

#[test]
fn namespace_flags_on_clone_and_unshare() {
    const SIGCHLD: u64 = 17;
    const THREAD_FLAGS: u64 = 0x003d_0f00; // glibc pthread_create's clone flags
    const CLONE_FILES: u64 = 0x400;
    const CLONE_FS: u64 = 0x200;
    const CLONE_SYSVSEM: u64 = 0x40000;
    for arch in ARCHES {
        let p = default_for(arch);
        assert_eq!(verdict(&p, "clone", &[SIGCHLD]), ALLOW);
        assert_eq!(verdict(&p, "clone", &[THREAD_FLAGS]), ALLOW);
        assert_eq!(verdict(&p, "clone", &[0x4111]), ALLOW); // vfork
        assert_eq!(
            verdict(&p, "unshare", &[CLONE_FILES | CLONE_FS | CLONE_SYSVSEM]),
            ALLOW
        );
        assert_eq!(verdict(&p, "unshare", &[0]), ALLOW);
        for flag in CLONE_NEW_FLAGS {
            assert_eq!(
                verdict(&p, "clone", &[flag | SIGCHLD]),
                EPERM,
                "clone {flag:#x}"
            );
            assert_eq!(verdict(&p, "unshare", &[flag]), EPERM, "unshare {flag:#x}");
            assert_eq!(verdict(&p, "unshare", &[flag | CLONE_FILES]), EPERM);
            // Junk in the upper half must not hide the flag.
            assert_eq!(
                verdict(&p, "unshare", &[flag | 0xdead_0000_0000_0000]),
                EPERM
            );
        }
        assert_eq!(verdict(&p, "clone3", &[0, 88]), ENOSYS);
        assert_eq!(verdict(&p, "setns", &[3, 0]), EPERM);
    }
}

#[test]
fn personality_only_blocks_aslr_off() {
    const ADDR_NO_RANDOMIZE: u64 = 0x0040000;
    for arch in ARCHES {
        let p = default_for(arch);
        assert_eq!(verdict(&p, "personality", &[0xffff_ffff]), ALLOW, "query");
        assert_eq!(verdict(&p, "personality", &[0]), ALLOW, "PER_LINUX");
        assert_eq!(
            verdict(&p, "personality", &[0x0800_0000]),
            ALLOW,
            "PER_LINUX32"
        );
        assert_eq!(verdict(&p, "personality", &[ADDR_NO_RANDOMIZE]), EPERM);
        assert_eq!(
            verdict(&p, "personality", &[ADDR_NO_RANDOMIZE | 0x0800_0000]),
            EPERM
        );
    }
}

#[test]
fn terminal_injection_ioctls() {
    for arch in ARCHES {
        let p = default_for(arch);
        assert_eq!(verdict(&p, "ioctl", &[0, 0x5412]), EPERM, "TIOCSTI");
        assert_eq!(verdict(&p, "ioctl", &[0, 0x541C]), EPERM, "TIOCLINUX");
        // The kernel ignores the upper 32 bits of the request.
        assert_eq!(
            verdict(&p, "ioctl", &[0, 0x1_0000_5412]),
            EPERM,
            "TIOCSTI | 1<<32"
        );
        assert_eq!(verdict(&p, "ioctl", &[0, 0x5413]), ALLOW, "TIOCGWINSZ");
        assert_eq!(verdict(&p, "ioctl", &[0x5412, 0x5401]), ALLOW, "TCGETS");
    }
}

#[test]
fn socket_families_and_types() {
    const AF_UNIX: u64 = 1;
    const AF_INET: u64 = 2;
    const AF_INET6: u64 = 10;
    const AF_NETLINK: u64 = 16;
    const AF_PACKET: u64 = 17;
    const AF_VSOCK: u64 = 40;
    const SOCK_STREAM: u64 = 1;
    const SOCK_DGRAM: u64 = 2;
    const SOCK_RAW: u64 = 3;
    const SOCK_PACKET: u64 = 10;
    const SOCK_NONBLOCK: u64 = 0o4000;
    const SOCK_CLOEXEC: u64 = 0o2000000;
    for arch in ARCHES {
        let p = default_for(arch);
        let s = |d, t, proto| verdict(&p, "socket", &[d, t, proto]);
        assert_eq!(s(AF_INET, SOCK_STREAM, 0), ALLOW);
        assert_eq!(s(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0), ALLOW);
        assert_eq!(s(AF_INET, SOCK_DGRAM, 1), ALLOW, "ICMP datagram (ping)");
        assert_eq!(s(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), ALLOW);
        assert_eq!(
            s(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, 0),
            ALLOW,
            "netlink for `ip`"
        );
        assert_eq!(s(AF_PACKET, SOCK_RAW, 0x300), EPERM);
        assert_eq!(s(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, 0), EPERM);
        assert_eq!(s(AF_VSOCK, SOCK_STREAM, 0), EPERM);
        for flags in [0, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_CLOEXEC | SOCK_NONBLOCK] {
            assert_eq!(s(AF_INET, SOCK_RAW | flags, 1), EPERM);
            assert_eq!(s(AF_INET6, SOCK_RAW | flags, 58), EPERM);
            assert_eq!(s(AF_INET, SOCK_PACKET | flags, 0), EPERM);
        }
        // int arguments: junk in the upper half of the register is ignored.
        assert_eq!(s(AF_PACKET | 0xffff_ffff_0000_0000, SOCK_RAW, 0), EPERM);
    }
}

#[test]
fn guard_handles_abi_and_unknown_numbers() {
    for arch in ARCHES {
        let p = default_for(arch);
        let max = p.unknown_syscall_ceiling().expect("ceiling on by default");
        assert_eq!(i64::from(max), arch.max_nr());
        assert_eq!(verdict_nr(&p, max + 1, &[]), ENOSYS);
        assert_eq!(verdict_nr(&p, 1000, &[]), ENOSYS);
        assert_eq!(verdict_nr(&p, max, &[]), ALLOW);
        assert_eq!(verdict_nr(&p, u32::MAX, &[]), ALLOW, "nr -1 (tracer skip)");
        let foreign = run_all(
            p.filters(),
            &Data {
                nr: nr(arch, "getpid"),
                arch: 0x4000_0003, // AUDIT_ARCH_I386
                args: [0; 6],
            },
        );
        assert_eq!(foreign, KILL, "{arch:?}");
    }
    let x86 = default_for(Arch::X86_64);
    assert_eq!(verdict_nr(&x86, 0x4000_0000 | 39, &[]), KILL, "x32 getpid");
    assert_eq!(verdict_nr(&x86, 0x4000_0000 | 165, &[]), KILL, "x32 mount");
    assert_eq!(
        verdict_nr(&x86, 0x4000_0000 | 512, &[]),
        KILL,
        "x32-only number"
    );
}

#[test]
fn unknown_syscalls_allow_disables_ceiling() {
    let text = DEFAULT_POLICY_TOML.replace(
        "unknown_syscalls = \"enosys\"",
        "unknown_syscalls = \"allow\"",
    );
    assert_ne!(text, DEFAULT_POLICY_TOML);
    let p = compile(&Policy::parse(&text).expect("parses"), Arch::X86_64).expect("compiles");
    assert_eq!(p.unknown_syscall_ceiling(), None);
    assert_eq!(verdict_nr(&p, 1000, &[]), ALLOW);
    assert_eq!(
        verdict_nr(&p, 0x4000_0000 | 39, &[]),
        KILL,
        "x32 still blocked"
    );
}

const MINIMAL: &str = "unknown_syscalls = \"enosys\"\n";

#[test]
fn minimal_policy_without_entries() {
    let p = SeccompProgram::compile_from_toml(MINIMAL).expect("minimal");
    assert!(p.denied_syscalls().is_empty());
    assert_eq!(p.filters().len(), 1, "guard only");
}

#[test]
fn malformed_toml_is_a_clear_error() {
    let e = err_of("unknown_syscalls = \"enosys\"\n[[deny]\nsyscall = \"mount\"\n");
    assert!(matches!(e, SeccompError::Parse { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("cannot parse the seccomp policy"), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");

    let e = err_of("[[deny]]\nsyscall = \"mount\"\nwhy = \"x\"\n");
    assert!(e.to_string().contains("unknown_syscalls"), "{e}");

    let e = err_of(&format!(
        "{MINIMAL}[[deny]]\nsyscall = \"mount\"\nwhy = \"x\"\nerrrno = \"EPERM\"\n"
    ));
    assert!(e.to_string().contains("errrno"), "{e}");

    let e = err_of(&format!(
        "{MINIMAL}[[deny]]\nsyscall = \"mount\"\nwhy = \"x\"\nerrno = \"EWHAT\"\n"
    ));
    assert!(e.to_string().contains("EWHAT"), "{e}");

    let e = err_of(&format!(
        "{MINIMAL}[[deny]]\nsyscall = \"socket\"\nwhy = \"x\"\nwhen = [[{{ arg = 0, width = 32, op = \"equals\", value = 1 }}]]\n"
    ));
    assert!(e.to_string().contains("equals"), "{e}");

    let e = err_of(&format!("{MINIMAL}[[deny]]\nwhy = \"no name\"\n"));
    assert!(e.to_string().contains("syscall"), "{e}");
}

#[test]
fn unknown_syscall_name_is_a_clear_error() {
    let e = err_of(&format!(
        "{MINIMAL}[[deny]]\nsyscall = \"mount\"\nwhy = \"ok\"\n[[deny]]\nsyscall = \"mnt\"\nwhy = \"typo\"\n"
    ));
    match &e {
        SeccompError::UnknownSyscall {
            section,
            index,
            name,
        } => {
            assert_eq!((*section, *index, name.as_str()), ("deny", 2, "mnt"));
        }
        other => panic!("unexpected {other:?}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains("unknown syscall `mnt`") && msg.contains("entry 2"),
        "{msg}"
    );

    let e = err_of(&format!(
        "{MINIMAL}[[allow]]\nsyscall = \"ptracee\"\nwhy = \"typo\"\n"
    ));
    assert!(
        matches!(
            e,
            SeccompError::UnknownSyscall {
                section: "allow",
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn empty_why_is_rejected() {
    for why in ["", "   "] {
        let e = err_of(&format!(
            "{MINIMAL}[[deny]]\nsyscall = \"mount\"\nwhy = \"{why}\"\n"
        ));
        assert!(matches!(e, SeccompError::InvalidEntry { .. }), "{e:?}");
        assert!(e.to_string().contains("`why` is empty"), "{e}");
    }
    let e = err_of(&format!(
        "{MINIMAL}[[allow]]\nsyscall = \"ptrace\"\nwhy = \"\"\n"
    ));
    assert!(e.to_string().contains("`why` is empty"), "{e}");
    // Missing entirely is a parse error naming the field.
    let e = err_of(&format!("{MINIMAL}[[deny]]\nsyscall = \"mount\"\n"));
    assert!(e.to_string().contains("why"), "{e}");
}

#[test]
fn bad_conditions_are_rejected() {
    let cases = [
        (
            "{ arg = 6, width = 32, op = \"eq\", value = 1 }",
            "out of range",
        ),
        (
            "{ arg = 0, width = 16, op = \"eq\", value = 1 }",
            "width = 16",
        ),
        (
            "{ arg = 0, width = 32, op = \"eq\", value = 0x100000000 }",
            "does not fit in 32 bits",
        ),
        (
            "{ arg = 0, width = 32, op = \"masked_eq\", value = 1 }",
            "needs a `mask`",
        ),
        (
            "{ arg = 0, width = 32, op = \"eq\", value = 1, mask = 1 }",
            "only allowed with",
        ),
        (
            "{ arg = 0, width = 32, op = \"masked_eq\", mask = 0xf, value = 0x10 }",
            "outside mask",
        ),
        (
            "{ arg = 0, width = 64, op = \"has_bits\", value = 0 }",
            "match every call",
        ),
    ];
    for (cond, expect) in cases {
        let text =
            format!("{MINIMAL}[[deny]]\nsyscall = \"socket\"\nwhy = \"x\"\nwhen = [[{cond}]]\n");
        let e = err_of(&text);
        assert!(
            matches!(e, SeccompError::InvalidEntry { .. }),
            "{cond}: {e:?}"
        );
        assert!(e.to_string().contains(expect), "{cond}: {e}");
    }
    let e = err_of(&format!(
        "{MINIMAL}[[deny]]\nsyscall = \"socket\"\nwhy = \"x\"\nwhen = []\n"
    ));
    assert!(e.to_string().contains("empty list"), "{e}");
    let e = err_of(&format!(
        "{MINIMAL}[[deny]]\nsyscall = \"socket\"\nwhy = \"x\"\nwhen = [[]]\n"
    ));
    assert!(e.to_string().contains("no conditions"), "{e}");
}

#[test]
fn conflicting_entries_are_rejected() {
    let uncond_and_cond = format!(
        "{MINIMAL}[[deny]]\nsyscall = \"socket\"\nwhy = \"all\"\n\
         [[deny]]\nsyscall = \"socket\"\nwhy = \"some\"\nwhen = [[{{ arg = 0, width = 32, op = \"eq\", value = 17 }}]]\n"
    );
    assert!(matches!(
        err_of(&uncond_and_cond),
        SeccompError::Conflict {
            syscall: "socket",
            ..
        }
    ));

    let twice = format!(
        "{MINIMAL}[[deny]]\nsyscall = \"mount\"\nwhy = \"a\"\n[[deny]]\nsyscall = \"mount\"\nwhy = \"b\"\n"
    );
    assert!(matches!(
        err_of(&twice),
        SeccompError::Conflict {
            syscall: "mount",
            ..
        }
    ));

    let errnos = format!(
        "{MINIMAL}[[deny]]\nsyscall = \"socket\"\nwhy = \"a\"\nwhen = [[{{ arg = 0, width = 32, op = \"eq\", value = 17 }}]]\n\
         [[deny]]\nsyscall = \"socket\"\nerrno = \"EACCES\"\nwhy = \"b\"\nwhen = [[{{ arg = 0, width = 32, op = \"eq\", value = 40 }}]]\n"
    );
    let e = err_of(&errnos);
    assert!(e.to_string().contains("different errnos"), "{e}");

    let both = format!(
        "{MINIMAL}[[deny]]\nsyscall = \"ptrace\"\nwhy = \"a\"\n[[allow]]\nsyscall = \"ptrace\"\nwhy = \"b\"\n"
    );
    assert!(
        err_of(&both)
            .to_string()
            .contains("both in [[allow]] and [[deny]]")
    );

    let allow_twice = format!(
        "{MINIMAL}[[allow]]\nsyscall = \"kcmp\"\nwhy = \"a\"\n[[allow]]\nsyscall = \"kcmp\"\nwhy = \"b\"\n"
    );
    assert!(matches!(
        err_of(&allow_twice),
        SeccompError::Conflict {
            syscall: "kcmp",
            ..
        }
    ));
}

#[test]
fn other_errnos_get_their_own_filter() {
    let text = format!(
        "{MINIMAL}[[deny]]\nsyscall = \"mount\"\nwhy = \"a\"\n\
         [[deny]]\nsyscall = \"clone3\"\nerrno = \"ENOSYS\"\nwhy = \"b\"\n\
         [[deny]]\nsyscall = \"socket\"\nerrno = \"EAFNOSUPPORT\"\nwhy = \"c\"\nwhen = [[{{ arg = 0, width = 32, op = \"eq\", value = 17 }}]]\n"
    );
    let p = compile(&Policy::parse(&text).expect("parses"), Arch::X86_64).expect("compiles");
    // mount and clone3 (unconditional) are in the guard's tree, each with its errno; the
    // conditional rule gets a filter for its errno; all of it chained into one program.
    assert_eq!(p.filters().len(), 1);
    assert_eq!(verdict(&p, "mount", &[]), EPERM);
    assert_eq!(verdict(&p, "clone3", &[]), ENOSYS);
    assert_eq!(
        verdict(&p, "socket", &[17, 3, 0]),
        libc::SECCOMP_RET_ERRNO | libc::EAFNOSUPPORT as u32
    );
    assert_eq!(verdict(&p, "socket", &[2, 1, 0]), ALLOW);
}

#[test]
fn sixty_four_bit_comparisons() {
    let text = format!(
        "{MINIMAL}[[deny]]\nsyscall = \"mmap\"\nwhy = \"test\"\nwhen = [[{{ arg = 1, width = 64, op = \"ge\", value = 0x100000000 }}]]\n"
    );
    let p = compile(&Policy::parse(&text).expect("parses"), Arch::X86_64).expect("compiles");
    assert_eq!(verdict(&p, "mmap", &[0, 0xffff_ffff]), ALLOW);
    assert_eq!(verdict(&p, "mmap", &[0, 0x1_0000_0000]), EPERM);
    assert_eq!(verdict(&p, "mmap", &[0, u64::MAX]), EPERM);
}

/// The guard's tree gives every syscall number the policy's answer: its errno for an
/// unconditional denial, ALLOW for any other number the conditional rules do not name (those
/// depend on arguments and have tests of their own), ENOSYS above the ceiling.
#[test]
fn tree_answers_every_number_like_the_policy() {
    for arch in ARCHES {
        let p = default_for(arch);
        let mut expected = std::collections::HashMap::new();
        let mut conditional = std::collections::HashSet::new();
        for r in p.rules() {
            let n = nr(arch, r.syscall);
            if r.when.is_none() {
                let e = if r.errno == "ENOSYS" { ENOSYS } else { EPERM };
                expected.insert(n, e);
            } else {
                conditional.insert(n);
            }
        }
        assert!(
            expected.len() > 40,
            "{arch:?}: most denials are unconditional"
        );
        let max = p.unknown_syscall_ceiling().expect("ceiling");
        for n in 0..=max + 1 {
            if conditional.contains(&n) {
                continue;
            }
            let want = if n > max {
                ENOSYS
            } else {
                expected.get(&n).copied().unwrap_or(ALLOW)
            };
            for args in [&[][..], &[u64::MAX; 6][..]] {
                assert_eq!(verdict_nr(&p, n, args), want, "{arch:?} nr {n}");
            }
        }
    }
}

/// Trees of every size up to well past the policy's, with numbers spread and packed: each
/// member gets its own errno back, every other number ALLOW, and no number costs more than a
/// logarithmic walk (the point of the tree: the kernel emulates the program once per syscall
/// number at every attach, and walks it for every call its cache cannot answer).
#[test]
fn guard_tree_of_any_size() {
    for n in 0..=150u32 {
        for spread in [1u32, 3, 7] {
            let denied: std::collections::BTreeMap<u32, u32> =
                (0..n).map(|i| (5 + i * spread, 1 + i % 90)).collect();
            let prog = crate::guard::build(Arch::X86_64, Some(2000), &denied);
            assert!(prog.len() <= 4096);
            let members = &denied;
            let mut worst = 0;
            for nr in 0..(10 + n * spread) {
                let data = Data {
                    nr,
                    arch: Arch::X86_64.audit_arch(),
                    args: [0; 6],
                };
                let (got, steps) = crate::bpf_interp::run_counted(&prog, &data);
                let want = match members.get(&nr) {
                    Some(&e) => libc::SECCOMP_RET_ERRNO | e,
                    None => ALLOW,
                };
                assert_eq!(got, want, "{n} members, spread {spread}, nr {nr}");
                worst = worst.max(steps);
            }
            // 8 instructions of preamble, 2 per level of splits, at most 4 leaf compares
            // (2 instructions each when one matches), the return.
            let levels = (f64::from(n.max(1)) / 4.0).log2().ceil().max(0.0) as usize;
            assert!(
                worst <= 8 + 2 * levels + 2 * 4 + 1,
                "{n} members: {worst} instructions"
            );
        }
    }
}

/// Chained into one program, the filters answer every call as the kernel answers the same
/// filters attached one by one (the most severe verdict of all): every syscall number, with
/// arguments that match and miss the conditional rules.
#[test]
fn chained_program_answers_like_separate_filters() {
    let mut args: Vec<[u64; 6]> = vec![[0; 6], [u64::MAX; 6], [17, 3, 0, 0, 0, 0]];
    args.extend(CLONE_NEW_FLAGS.iter().map(|&f| [f, 0, 0, 0, 0, 0]));
    args.extend([0x5412u64, 0x541C].map(|r| [0, r, 0, 0, 0, 0]));
    args.push([0x0040000, 0, 0, 0, 0, 0]);
    for (policy, arch) in policies_with_several_conditional_errnos() {
        let chained = crate::compile_with(&policy, arch, true).expect("compiles");
        let separate = crate::compile_with(&policy, arch, false).expect("compiles");
        assert!(chained.filters().len() < separate.filters().len());
        let max = chained.unknown_syscall_ceiling().expect("ceiling");
        let mut denied = 0;
        for nr in (0..=max + 2).chain([u32::MAX, 0x4000_0000 | 39]) {
            for a in &args {
                let data = Data {
                    nr,
                    arch: arch.audit_arch(),
                    args: *a,
                };
                let want = run_all(separate.filters(), &data);
                assert_eq!(
                    run_all(chained.filters(), &data),
                    want,
                    "{arch:?} nr {nr} {a:?}"
                );
                denied += usize::from(want != ALLOW);
            }
        }
        assert!(
            denied > 500,
            "{arch:?}: the comparison saw denials ({denied})"
        );
    }
}

/// The default policy, and a variant whose conditional rules use four errnos (four seccompiler
/// programs, so their own ALLOWs are rewritten into jumps too), for each architecture.
fn policies_with_several_conditional_errnos() -> Vec<(Policy, Arch)> {
    let variant = DEFAULT_POLICY_TOML
        .replace(
            "syscall = \"ioctl\"",
            "syscall = \"ioctl\"\nerrno = \"EINVAL\"",
        )
        .replace(
            "syscall = \"socket\"",
            "syscall = \"socket\"\nerrno = \"EAFNOSUPPORT\"",
        )
        .replace(
            "syscall = \"personality\"",
            "syscall = \"personality\"\nerrno = \"EACCES\"",
        );
    let mut out = Vec::new();
    for arch in ARCHES {
        out.push((Policy::parse(DEFAULT_POLICY_TOML).expect("parses"), arch));
        out.push((Policy::parse(&variant).expect("the variant parses"), arch));
    }
    let parts = crate::compile_with(&out[1].0, Arch::X86_64, false)
        .expect("compiles")
        .filters()
        .len();
    assert_eq!(parts, 5, "the guard and four conditional errnos");
    out
}

/// Every program Airlock compiles passes the kernel's checks (for both architectures, also
/// the one this machine cannot load), and the kernel's action cache never treats as always
/// allowed a number the policy denies for some arguments.
#[test]
fn programs_pass_the_kernels_checks_and_cache() {
    for (policy, arch) in policies_with_several_conditional_errnos() {
        let p = crate::compile_with(&policy, arch, true).expect("compiles");
        let separate = crate::compile_with(&policy, arch, false).expect("compiles");
        for f in p.filters().iter().chain(separate.filters()) {
            crate::bpf_interp::kernel_accepts(f).unwrap_or_else(|e| panic!("{arch:?}: {e}"));
        }
        assert_eq!(p.filters().len(), 1, "{arch:?}");
        let mut named = std::collections::HashSet::new();
        let mut conditional = std::collections::HashSet::new();
        for r in p.rules() {
            named.insert(nr(arch, r.syscall));
            if r.when.is_some() {
                conditional.insert(nr(arch, r.syscall));
            }
        }
        let max = p.unknown_syscall_ceiling().expect("ceiling");
        let mut cached = 0;
        for n in 0..=max + 1 {
            let v = crate::bpf_interp::const_verdict(&p.filters()[0], n, arch.audit_arch());
            if v == Some(ALLOW) {
                assert!(
                    !named.contains(&n) && n <= max,
                    "{arch:?}: nr {n} cached as allowed"
                );
                cached += 1;
            }
            if conditional.contains(&n) {
                assert_eq!(
                    v, None,
                    "{arch:?}: nr {n} has conditions, the cache must ask"
                );
            }
        }
        assert!(
            cached > 250,
            "{arch:?}: most numbers are cacheable ({cached})"
        );
    }
}
