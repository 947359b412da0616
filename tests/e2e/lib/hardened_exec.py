"""Runs a program under the process restrictions a systemd unit asks for,
without systemd: the e2e test of deploy/systemd/tidings.service starts the
server through this, so that the unit's hardening is applied to the real
binary on a machine where systemd is not PID 1 (a container, CI).

Applied, in this order, each the way the kernel does it for systemd:
  --nofile N         LimitNOFILE= (soft and hard, lowered to the hard limit
                     this process may raise to)
  --drop-caps        CapabilityBoundingSet= (empty bounding set)
  --uid U --gid G    User=/DynamicUser= (an unprivileged uid, no groups)
  no_new_privs       NoNewPrivileges= (always; seccomp needs it anyway)
  --mdwe             MemoryDenyWriteExecute= (prctl PR_SET_MDWE: no mapping
                     may become writable and executable)
  --syscalls FILE    SystemCallFilter= allow list (one syscall name per
                     line; names unknown on this architecture are skipped),
                     with SystemCallArchitectures=native and
                     SystemCallErrorNumber= (--errno)
  --families LIST    RestrictAddressFamilies= (socket(2) with another
                     family fails with EAFNOSUPPORT)
then execs the program. Python's standard library only (ctypes); x86_64.
"""

import argparse
import ctypes
import errno
import os
import re
import resource
import socket
import sys

PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1
AUDIT_ARCH_X86_64 = 0xC000003E
X32_SYSCALL_BIT = 0x40000000

SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000

BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JSET_K = 0x45
BPF_RET_K = 0x06

# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6]
OFF_NR, OFF_ARCH, OFF_ARG0 = 0, 4, 16

UNISTD = "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"

libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
libc.prctl.restype = ctypes.c_int


def die(msg):
    sys.stderr.write(f"hardened_exec: {msg}\n")
    sys.exit(126)


def prctl(option, arg2=0, arg3=0, what=""):
    if libc.prctl(option, arg2, arg3, 0, 0) != 0:
        err = ctypes.get_errno()
        die(f"prctl({what or option}) failed: {os.strerror(err)} (errno {err})")


def syscall_numbers():
    try:
        with open(UNISTD, encoding="ascii") as f:
            text = f.read()
    except OSError as e:
        die(f"{UNISTD} is needed for syscall numbers (Debian package linux-libc-dev): {e}")
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^#define __NR_(\w+)\s+(\d+)$", text, re.M)}


class SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]


def seccomp_program(allowed, deny_errno, families):
    numbers = syscall_numbers()
    nrs = sorted({numbers[n] for n in allowed if n in numbers})
    deny = SECCOMP_RET_ERRNO | deny_errno
    prog = [
        (BPF_LD_W_ABS, 0, 0, OFF_ARCH),
        (BPF_JEQ_K, 1, 0, AUDIT_ARCH_X86_64),
        (BPF_RET_K, 0, 0, deny),
        (BPF_LD_W_ABS, 0, 0, OFF_NR),
        (BPF_JSET_K, 0, 1, X32_SYSCALL_BIT),
        (BPF_RET_K, 0, 0, deny),
    ]
    if families is not None and "socket" in numbers:
        # socket(family, ...): only the listed families.
        checks = [(BPF_JEQ_K, 0, 1, f) for f in families]
        body = [(BPF_LD_W_ABS, 0, 0, OFF_ARG0)]
        for c in checks:
            body += [c, (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW)]
        body += [(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | errno.EAFNOSUPPORT)]
        prog += [(BPF_JEQ_K, 0, len(body), numbers["socket"])] + body
    for nr in nrs:
        prog += [(BPF_JEQ_K, 0, 1, nr), (BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW)]
    prog.append((BPF_RET_K, 0, 0, deny))
    if len(prog) > 4096:
        die(f"seccomp program too long ({len(prog)} instructions)")
    return prog


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nofile", type=int)
    ap.add_argument("--drop-caps", action="store_true")
    ap.add_argument("--uid", type=int)
    ap.add_argument("--gid", type=int)
    ap.add_argument("--mdwe", action="store_true")
    ap.add_argument("--syscalls")
    ap.add_argument("--errno", type=int, default=errno.EPERM)
    ap.add_argument("--families", help="comma-separated: AF_INET,AF_INET6,AF_UNIX")
    ap.add_argument("argv", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    argv = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
    if not argv:
        die("no program given")

    # Read everything before dropping privileges.
    prog = None
    if a.syscalls:
        with open(a.syscalls, encoding="ascii") as f:
            allowed = [l.strip() for l in f if l.strip()]
        families = None
        if a.families:
            families = [getattr(socket, name) for name in a.families.split(",")]
        prog = seccomp_program(allowed, a.errno, families)

    if a.nofile is not None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = a.nofile
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        except (ValueError, OSError):
            want = min(want, hard)
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        sys.stderr.write(f"hardened_exec: RLIMIT_NOFILE {want} (asked {a.nofile})\n")
    if a.drop_caps:
        last = int(open("/proc/sys/kernel/cap_last_cap").read())
        for cap in range(last + 1):
            prctl(PR_CAPBSET_DROP, cap, what=f"PR_CAPBSET_DROP {cap}")
    if a.gid is not None:
        os.setgroups([])
        os.setresgid(a.gid, a.gid, a.gid)
    if a.uid is not None:
        os.setresuid(a.uid, a.uid, a.uid)
    prctl(PR_SET_NO_NEW_PRIVS, 1, what="PR_SET_NO_NEW_PRIVS")
    if a.mdwe:
        prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, what="PR_SET_MDWE")
    if prog is not None:
        arr = (SockFilter * len(prog))(*[SockFilter(*i) for i in prog])
        fprog = SockFprog(len(prog), arr)
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), what="PR_SET_SECCOMP")
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
