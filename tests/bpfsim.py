"""A classic BPF interpreter for seccomp programs: the reference the filter tests run both compilers'
output through (``tests/test_seccomp_emitter.py``), one ``struct seccomp_data`` at a time.

It accepts what the kernel's seccomp_check_filter accepts (loads of the data's 32-bit words, ALU with
constants and X, jumps, the scratch memory, RET) and refuses anything else, so a program this runs is
one the kernel would take; ``run`` also bounds each step's jump inside the program.
"""

from __future__ import annotations

import struct

_INSN = struct.Struct("=HBBI")
_M32 = 0xFFFFFFFF

# Classes, sizes, modes, ops, sources (linux/bpf_common.h).
LD, LDX, ST, STX, ALU, JMP, RET, MISC = range(8)
W, ABS, IMM, MEM, LEN = 0x00, 0x20, 0x00, 0x60, 0x80
K, X, A = 0x00, 0x08, 0x10


def decode(prog: bytes) -> list[tuple[int, int, int, int]]:
    if len(prog) % _INSN.size:
        raise ValueError(f"{len(prog)} bytes: not a whole number of instructions")
    return [_INSN.unpack_from(prog, i) for i in range(0, len(prog), _INSN.size)]


def seccomp_data(nr: int, arch: int, args: tuple[int, ...] = (), ip: int = 0) -> bytes:
    """The 64 bytes a seccomp filter reads: nr, arch, instruction pointer, six 64-bit arguments."""
    full = (tuple(args) + (0,) * 6)[:6]
    return struct.pack("=iIQ6Q", nr if nr < 1 << 31 else nr - (1 << 32), arch, ip, *full)


def run(prog: list[tuple[int, int, int, int]], data: bytes) -> int:
    """The program's return value for data."""
    a = x = 0
    mem = [0] * 16
    pc = 0
    n = len(prog)
    for _ in range(n + 1):  # classic BPF jumps only forward: each step moves pc on
        if not 0 <= pc < n:
            raise ValueError(f"pc {pc} outside the program")
        code, jt, jf, k = prog[pc]
        cls = code & 0x07
        pc += 1
        if cls == LD:
            mode = code & 0xE0
            if mode == ABS and (code & 0x18) == W:
                if k % 4 or k + 4 > len(data):
                    raise ValueError(f"load at {k}")
                a = struct.unpack_from("=I", data, k)[0]
            elif mode == IMM:
                a = k
            elif mode == MEM:
                a = mem[k]
            elif mode == LEN:
                a = len(data)
            else:
                raise ValueError(f"load mode 0x{code:x}")
        elif cls == LDX:
            mode = code & 0xE0
            x = k if mode == IMM else mem[k] if mode == MEM else len(data) if mode == LEN else _bad(code)
        elif cls == ST:
            mem[k] = a
        elif cls == STX:
            mem[k] = x
        elif cls == ALU:
            op, src = code & 0xF0, (x if code & X else k)
            if op == 0x00:
                a = (a + src) & _M32
            elif op == 0x10:
                a = (a - src) & _M32
            elif op == 0x20:
                a = (a * src) & _M32
            elif op == 0x30:
                a = a // src if src else _bad(code)
            elif op == 0x40:
                a |= src
            elif op == 0x50:
                a &= src
            elif op == 0x60:
                a = (a << src) & _M32 if src < 32 else 0
            elif op == 0x70:
                a = a >> src if src < 32 else 0
            elif op == 0x80:
                a = (-a) & _M32
            elif op == 0x90:
                a = a % src if src else _bad(code)
            elif op == 0xA0:
                a ^= src
            else:
                _bad(code)
        elif cls == JMP:
            op = code & 0xF0
            if op == 0x00:
                pc += k
                continue
            src = x if code & X else k
            if op == 0x10:
                taken = a == src
            elif op == 0x20:
                taken = a > src
            elif op == 0x30:
                taken = a >= src
            elif op == 0x40:
                taken = bool(a & src)
            else:
                _bad(code)
            pc += jt if taken else jf
        elif cls == RET:
            return k if (code & 0x18) == K else a
        elif cls == MISC:
            if code & 0xF8 == 0x00:
                x = a
            else:
                a = x
        else:
            _bad(code)
    raise ValueError("ran past the program's length")


def _bad(code: int) -> int:
    raise ValueError(f"instruction 0x{code:x}")
