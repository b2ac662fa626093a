"""The cgroup v2 device filter: a tiny eBPF program that keeps a job group to its own GPUs.

cgroup v2 has no ``devices`` controller; the kernel instead runs ``BPF_PROG_TYPE_CGROUP_DEVICE``
programs attached to a group (and its ancestors) on every device open and ``mknod`` by its
processes (systemd's ``DeviceAllow=`` works this way). The program here allows every device except
the character major 195 (``/dev/nvidia*``), of which it allows only the job's minors and
``nvidiactl`` (255): Slurm's ConstrainDevices rule, and the same rule as the v1 ``devices`` groups
of :mod:`moreh_tools.jobs.cgroups`. ``nvidia-uvm`` and ``nvidia-caps`` have majors of their own and
stay allowed.

It is hand-assembled (a dozen instructions) and loaded with the ``bpf`` system call through
ctypes, so no compiler, libbpf or bpftool is needed. It is attached without flags: there is one
program on the job group, re-attaching replaces it (so ``create`` stays idempotent), and the
programs an ancestor attached with ``BPF_F_ALLOW_MULTI`` (systemd) still run as well. The attached
program lives as long as the group; no file descriptor needs to stay open. Loading needs
``CAP_BPF``/``CAP_SYS_ADMIN`` and attaching ``CAP_NET_ADMIN`` (in practice: root).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable

from moreh_tools.jobs.cgroups import NVIDIA_MAJOR, NVIDIACTL_MINOR

_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351}
_BPF_PROG_LOAD, _BPF_PROG_ATTACH = 5, 8
_BPF_PROG_TYPE_CGROUP_DEVICE = 15
_BPF_CGROUP_DEVICE = 6  # attach type
_BPF_DEVCG_DEV_CHAR = 2  # low 16 bits of bpf_cgroup_dev_ctx.access_type
_ATTR_SIZE = 128  # enough of union bpf_attr for both commands; the rest is zero

# Opcodes (linux/bpf.h): load word from memory, 32-bit AND immediate, jumps on immediate, move, exit.
_LDX_W = 0x61
_AND32_K = 0x54
_JNE_K, _JEQ_K = 0x55, 0x15
_MOV64_K = 0xB7
_EXIT = 0x95


def supported() -> bool:
    """Whether this machine's architecture has a known ``bpf`` system call number."""
    return os.uname().machine in _BPF_SYSCALL


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def program(minors: Iterable[int]) -> bytes:
    """The filter's instructions: allow unless a char device of major 195 with a minor not granted.

    The context (``struct bpf_cgroup_dev_ctx``) is ``access_type`` (device type in the low 16
    bits), ``major``, ``minor``, three u32 at offsets 0, 4, 8; the program returns 1 to allow.
    """
    granted = sorted({m for m in minors if m >= 0} | {NVIDIACTL_MINOR})
    checks = [(_JNE_K, 2, _BPF_DEVCG_DEV_CHAR), (_JNE_K, 3, NVIDIA_MAJOR)] + [(_JEQ_K, 4, m) for m in granted]
    code = [
        _insn(_LDX_W, 2, 1, 0),  # r2 = ctx->access_type
        _insn(_AND32_K, 2, 0, 0, 0xFFFF),  # r2 = device type
        _insn(_LDX_W, 3, 1, 4),  # r3 = ctx->major
        _insn(_LDX_W, 4, 1, 8),  # r4 = ctx->minor
    ]
    for i, (op, reg, imm) in enumerate(checks):
        # Jump over the checks left and the two deny instructions, to "allow".
        code.append(_insn(op, reg, 0, len(checks) - i - 1 + 2, imm))
    code += [_insn(_MOV64_K, 0, 0, 0, 0), _insn(_EXIT), _insn(_MOV64_K, 0, 0, 0, 1), _insn(_EXIT)]
    return b"".join(code)


def _bpf(cmd: int, attr: bytes) -> int:
    """Run one ``bpf`` command; return its result or raise OSError with the kernel's errno."""
    import ctypes  # here, not at import: the launcher's start-up path imports this module

    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(attr.ljust(_ATTR_SIZE, b"\0"), _ATTR_SIZE)
    result = int(libc.syscall(ctypes.c_long(_BPF_SYSCALL[os.uname().machine]), ctypes.c_int(cmd), buf, _ATTR_SIZE))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def attach(directory: str, minors: Iterable[int]) -> None:
    """Load the filter for ``minors`` and attach it to the v2 group at ``directory``; raises OSError."""
    import ctypes

    if not supported():
        raise OSError(0, f"no bpf system call number known for {os.uname().machine}")
    code = program(minors)
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"GPL")
    load = struct.pack(
        "<IIQQIIQII16s",
        _BPF_PROG_TYPE_CGROUP_DEVICE,
        len(code) // 8,
        ctypes.addressof(insns),
        ctypes.addressof(license_),
        0,  # no verifier log
        0,
        0,
        0,
        0,
        b"moreh_job_gpus",
    )
    prog_fd = _bpf(_BPF_PROG_LOAD, load)
    try:
        group_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            _bpf(_BPF_PROG_ATTACH, struct.pack("<IIIII", group_fd, prog_fd, _BPF_CGROUP_DEVICE, 0, 0))
        finally:
            os.close(group_fd)
    finally:
        os.close(prog_fd)  # the attachment holds the program now
