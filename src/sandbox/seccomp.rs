//! The seccomp filters every sandbox runs under.
//!
//! The namespaces already keep the sandbox away from host files, processes
//! and the network; seccomp narrows what is left: the kernel itself. The
//! filter is a deny list, because builds run arbitrary compilers, test
//! runners and interpreters whose system calls cannot be enumerated, while
//! the calls worth denying are few and well known. Each rule says why it is
//! there. Denied calls fail with `EPERM`, which programs report plainly,
//! instead of killing the process, which would look like a crash.
//!
//! Three programs are loaded (bwrap's `--add-seccomp-fd` stacks them):
//! the deny list, `clone3` answered with `ENOSYS` (its flags sit in memory a
//! filter cannot read, and `ENOSYS` makes glibc fall back to `clone`, whose
//! flags the deny list checks), and on x86-64 a guard against the x32
//! system-call numbering, which would otherwise reach the same kernel entry
//! points under numbers the deny list does not name.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Flags of `clone` that create namespaces. A nested user namespace would
/// hand the sandbox a fresh set of capabilities over its own namespaces —
/// the usual first step of kernel exploits — and the others have no use in
/// a build.
const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// System calls denied outright, with the reason for each group.
fn denied_always() -> Vec<(i64, &'static str)> {
    let mut v: Vec<(i64, &'static str)> = vec![
        // Reading or steering another process: the executor holds the tool
        // protocol, and nothing in a build needs a debugger.
        (libc::SYS_ptrace, "ptrace"),
        (libc::SYS_process_vm_readv, "process_vm_readv"),
        (libc::SYS_process_vm_writev, "process_vm_writev"),
        // Kernel keyrings are shared more widely than the namespaces are.
        (libc::SYS_keyctl, "keyctl"),
        (libc::SYS_add_key, "add_key"),
        (libc::SYS_request_key, "request_key"),
        // eBPF and perf expose large kernel attack surface and kernel
        // addresses.
        (libc::SYS_bpf, "bpf"),
        (libc::SYS_perf_event_open, "perf_event_open"),
        // userfaultfd lets an exploit stall the kernel mid-copy to win races.
        (libc::SYS_userfaultfd, "userfaultfd"),
        // Loading kernels or modules.
        (libc::SYS_kexec_load, "kexec_load"),
        (libc::SYS_kexec_file_load, "kexec_file_load"),
        (libc::SYS_init_module, "init_module"),
        (libc::SYS_finit_module, "finit_module"),
        (libc::SYS_delete_module, "delete_module"),
        // Changing the mount table: the read-only mounts must stay read-only
        // and the worktree must stay where the host expects it.
        (libc::SYS_mount, "mount"),
        (libc::SYS_umount2, "umount2"),
        (libc::SYS_pivot_root, "pivot_root"),
        (libc::SYS_swapon, "swapon"),
        (libc::SYS_swapoff, "swapoff"),
        (libc::SYS_fsopen, "fsopen"),
        (libc::SYS_fsconfig, "fsconfig"),
        (libc::SYS_fsmount, "fsmount"),
        (libc::SYS_fspick, "fspick"),
        (libc::SYS_move_mount, "move_mount"),
        (libc::SYS_open_tree, "open_tree"),
        (libc::SYS_mount_setattr, "mount_setattr"),
        // New or foreign namespaces (see NAMESPACE_FLAGS for clone).
        (libc::SYS_unshare, "unshare"),
        (libc::SYS_setns, "setns"),
        // io_uring performs operations outside the reach of this filter and
        // has been a steady source of kernel bugs.
        (libc::SYS_io_uring_setup, "io_uring_setup"),
        (libc::SYS_io_uring_enter, "io_uring_enter"),
        (libc::SYS_io_uring_register, "io_uring_register"),
    ];
    // Handles bypass path-based checks; acct and quotactl touch host state.
    v.push((libc::SYS_open_by_handle_at, "open_by_handle_at"));
    v.push((libc::SYS_acct, "acct"));
    v.push((libc::SYS_quotactl, "quotactl"));
    v
}

fn arch() -> Result<TargetArch, String> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|_| {
        format!(
            "no seccomp filter is defined for {}",
            std::env::consts::ARCH
        )
    })
}

fn cond(
    index: u8,
    len: SeccompCmpArgLen,
    op: SeccompCmpOp,
    value: u64,
) -> Result<SeccompCondition, String> {
    SeccompCondition::new(index, len, op, value).map_err(|e| e.to_string())
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, String> {
    SeccompRule::new(conditions).map_err(|e| e.to_string())
}

/// Builds the seccomp programs for a sandbox, as raw `sock_filter` bytes
/// ready for bwrap. `network` tells whether the sandbox has the network.
///
/// # Errors
///
/// An architecture seccompiler does not support; the sandbox then refuses
/// to start rather than run without the filter.
pub fn programs(network: bool) -> Result<Vec<Vec<u8>>, String> {
    let arch = arch()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (nr, _) in denied_always() {
        rules.insert(nr, Vec::new());
    }

    // clone with any namespace flag: one rule per flag (rules are OR-ed).
    let mut clone_rules = Vec::new();
    for flag in NAMESPACE_FLAGS {
        clone_rules.push(rule(vec![cond(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(*flag),
            *flag,
        )?])?);
    }
    rules.insert(libc::SYS_clone, clone_rules);

    // TIOCSTI pushes characters into a terminal's input queue, which could
    // type commands into a host shell; TIOCLINUX can do the same on a
    // virtual console. The sandbox has its own session and no terminal, so
    // this is belt and braces.
    rules.insert(
        libc::SYS_ioctl,
        vec![
            rule(vec![cond(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                libc::TIOCSTI,
            )?])?,
            rule(vec![cond(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                libc::TIOCLINUX,
            )?])?,
        ],
    );

    // Without the network, only Unix sockets (which builds use for local
    // IPC) may be created: no packet sockets, no netlink tricks, no TCP even
    // on the sandbox's own loopback.
    if !network {
        rules.insert(
            libc::SYS_socket,
            vec![rule(vec![cond(
                0,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Ne,
                libc::AF_UNIX as u64,
            )?])?],
        );
    }

    let deny = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;
    let mut clone3 = BTreeMap::new();
    clone3.insert(libc::SYS_clone3, Vec::new());
    let clone3 = SeccompFilter::new(
        clone3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .map_err(|e| e.to_string())?;

    let mut out = Vec::new();
    for filter in [deny, clone3] {
        let prog: BpfProgram = filter
            .try_into()
            .map_err(|e: seccompiler::BackendError| e.to_string())?;
        out.push(to_bytes(&prog));
    }
    if cfg!(target_arch = "x86_64") {
        out.push(to_bytes(&x32_guard()));
    }
    Ok(out)
}

/// A filter that fails every x32-ABI system call (numbers with bit 30 set)
/// with `ENOSYS`. seccompiler keys rules by exact number and cannot express
/// the range, so these five instructions are written out here.
fn x32_guard() -> BpfProgram {
    use seccompiler::sock_filter;
    const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const BPF_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    let ins = |code, jt, jf, k| sock_filter { code, jt, jf, k };
    vec![
        // seccomp_data.nr is at offset 0.
        ins(BPF_LD_W_ABS, 0, 0, 0),
        ins(BPF_JGE_K, 0, 1, X32_SYSCALL_BIT),
        ins(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        ins(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
}

fn to_bytes(prog: &BpfProgram) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(prog.len() * 8);
    for ins in prog {
        bytes.extend_from_slice(&ins.code.to_ne_bytes());
        bytes.push(ins.jt);
        bytes.push(ins.jf);
        bytes.extend_from_slice(&ins.k.to_ne_bytes());
    }
    bytes
}

/// Names of the system calls the deny list refuses outright, for `doctor`
/// and the documentation.
pub fn denied_names() -> Vec<&'static str> {
    denied_always().into_iter().map(|(_, n)| n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_compile_for_this_machine() {
        let off = programs(false).unwrap();
        let on = programs(true).unwrap();
        assert!(off.len() >= 2);
        for p in off.iter().chain(on.iter()) {
            assert!(!p.is_empty() && p.len() % 8 == 0);
            // bwrap reads the program through a pipe written before spawn.
            assert!(p.len() < 64 * 1024);
        }
        // The socket rule exists only without the network.
        assert!(off[0].len() > on[0].len());
    }

    #[test]
    fn deny_list_names_the_required_calls() {
        let names = denied_names();
        for required in [
            "ptrace",
            "process_vm_readv",
            "keyctl",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "kexec_load",
            "init_module",
            "mount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "io_uring_setup",
        ] {
            assert!(names.contains(&required), "{required}");
        }
    }
}
