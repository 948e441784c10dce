"""The program filter's own BPF: a search tree over the syscall number, then each call's argument rules.

libseccomp (2.5.4, with its binary-tree option) compiles the allow list to 687 instructions: it tests
the number once per listed call, and it can say "anything but these values" only as one rule per
aligned block of the other values, about thirty masked comparisons for ioctl's request alone.  The
kernel's cost of loading a filter grows with its length (about 0.3 us per instruction here, on top of
some 50 us per load: the copy, the checker, the conversion to eBPF, the JIT, the action cache's pass
over every number), and the program filter is loaded on the path of every spawn and of every warm
Python job.  Here the same rules are emitted as:

* the architecture check, and on x86-64 the x32 check, as libseccomp emits them (other tables kill;
  number -1, a tracer's "skip", falls to the default);
* a binary search over the runs of numbers with one answer (about eighty on x86-64), each leaf a RET;
* at the leaf of each call with argument rules, its rules in order, the first that matches deciding,
  with the accumulator's word reused between comparisons of the same argument.

The rules come from ``_seccomp.compile_filter``, the one description of the policy; libseccomp compiles
the very same description (``_seccomp.compile_filter_libseccomp``), and the test suite runs both programs
on every number of both tables and on the boundary values of every argument rule, through a BPF
interpreter of its own, and requires the same answer everywhere (tests/test_seccomp_emitter.py).
Numbers still come from libseccomp (``_seccomp.resolve``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

# linux/bpf_common.h, linux/filter.h, linux/seccomp.h, linux/audit.h
_LD_W_ABS = 0x20
_ALU_AND_K = 0x54
_JMP_JA = 0x05
_JEQ_K = 0x15
_JGT_K = 0x25
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
_OFF_NR, _OFF_ARCH, _OFF_ARGS = 0, 4, 16
ARCH_X86_64 = 0xC000003E
_X32_SYSCALL_BIT = 0x40000000
_M32 = 0xFFFFFFFF
_INSN = struct.Struct("=HBBI")

# Comparisons, as in libseccomp's struct scmp_arg_cmp: (arg, op, a, b).
CMP_EQ = 4  # arg == a, all 64 bits
CMP_GE = 5  # arg >= a, unsigned, all 64 bits
CMP_MASKED_EQ = 7  # arg & a == b
CMP_NOT_IN = 100  # ours: arg & a is none of b (a frozenset); never given to libseccomp

Cond = tuple[int, int, int, object]
Rule = tuple[int, tuple[Cond, ...]]
Insn = tuple[int, int, int, int]  # code, jt, jf, k


class FilterTooLarge(ValueError):
    pass


def _word(arg: int, high: bool) -> int:
    """Offset of an argument's half in struct seccomp_data (little-endian: the low half first)."""
    return _OFF_ARGS + 8 * arg + (4 if high else 0)


@dataclass
class _Asm:
    """Instructions with forward jumps to labels, resolved at the end (classic BPF jumps only forward,
    jt and jf at most 255 ahead)."""

    items: list[tuple[int, object, object, int]] = field(default_factory=list)
    labels: dict[object, int] = field(default_factory=dict)

    def op(self, code: int, k: int, jt: object = 0, jf: object = 0) -> None:
        self.items.append((code, jt, jf, k & _M32))

    def label(self, name: object) -> None:
        self.labels[name] = len(self.items)

    def insns(self) -> list[Insn]:
        out: list[Insn] = []
        for pc, (code, jt, jf, k) in enumerate(self.items):
            offs = []
            for target in (jt, jf):
                off = target if isinstance(target, int) else self.labels[target] - pc - 1
                if not 0 <= off <= 255:
                    raise FilterTooLarge(f"jump of {off} at {pc}")
                offs.append(off)
            out.append((code, offs[0], offs[1], k))
        return out


class _Block:
    """One call's argument rules: first match decides, else ``default``."""

    def __init__(self, default: int) -> None:
        self.asm = _Asm()
        self.default = default
        self.acc: tuple[int, int] | None = None  # what A holds: (word offset, mask applied), if known
        self.fails: list[tuple[int, int] | None] = []  # A at each jump to the current rule's fail label

    def _load(self, off: int, mask: int) -> None:
        """A = the word at off, and mask (unless A holds just that already)."""
        if self.acc == (off, mask):
            return
        if self.acc != (off, _M32):
            self.asm.op(_LD_W_ABS, off)
            self.acc = (off, _M32)
        if mask != _M32:
            self.asm.op(_ALU_AND_K, mask)
            self.acc = (off, mask)

    def _jump_fail(self, code: int, k: int, on_true_fail: bool, fail: object) -> None:
        """A comparison whose one outcome fails the rule (jumps to fail) and whose other goes on."""
        self.fails.append(self.acc)
        if on_true_fail:
            self.asm.op(code, k, fail, 0)
        else:
            self.asm.op(code, k, 0, fail)

    def _masked_word(self, off: int, mask: int, value: int, fail: object) -> None:
        if mask == 0:
            return  # nothing of this half is compared (value is 0 too: see _satisfiable)
        if bin(mask).count("1") == 1:
            # One bit: JSET tests it with A left as the word.
            self._load(off, _M32)
            self._jump_fail(_JSET_K, mask, value == 0, fail)
            return
        if value == 0:
            self._load(off, _M32)
            self._jump_fail(_JSET_K, mask, True, fail)
            return
        self._load(off, mask)
        self._jump_fail(_JEQ_K, value, False, fail)

    def _cond(self, cond: Cond, fail: object, n: int) -> None:
        arg, op, a, b = cond
        if op == CMP_EQ:
            assert isinstance(a, int)
            self._masked_word(_word(arg, False), _M32, a & _M32, fail)
            self._masked_word(_word(arg, True), _M32, a >> 32, fail)
        elif op == CMP_MASKED_EQ:
            assert isinstance(a, int) and isinstance(b, int)
            self._masked_word(_word(arg, False), a & _M32, b & _M32, fail)
            self._masked_word(_word(arg, True), a >> 32, b >> 32, fail)
        elif op == CMP_GE:
            assert isinstance(a, int)
            passed = ("ge", n, arg)
            self._load(_word(arg, True), _M32)
            self.asm.op(_JGT_K, a >> 32, passed, 0)
            self._jump_fail(_JEQ_K, a >> 32, False, fail)
            self._load(_word(arg, False), _M32)
            self._jump_fail(_JGE_K, a & _M32, False, fail)
            self.asm.label(passed)
            self.acc = None
        elif op == CMP_NOT_IN:
            assert isinstance(a, int) and isinstance(b, frozenset)
            # Every value excluded has an empty upper half under the mask: anything there is not one.
            assert all(not (v & ~a) and v >> 32 == 0 for v in b), cond
            passed = ("notin", n, arg)
            if a >> 32:
                self._load(_word(arg, True), a >> 32)
                self.asm.op(_JEQ_K, 0, 0, passed)
            self._load(_word(arg, False), a & _M32)
            for v in sorted(b):
                self._jump_fail(_JEQ_K, v, True, fail)
            self.asm.label(passed)
            self.acc = None
        else:
            raise ValueError(f"comparison {op}")

    def emit(self, rules: Sequence[Rule]) -> list[Insn]:
        for n, (action, conds) in enumerate(rules):
            if not all(_satisfiable(c) for c in conds):
                continue  # a rule no argument can match
            fail = ("fail", n)
            self.fails = []
            for i, cond in enumerate(conds):
                self._cond(cond, fail, n * 16 + i)
            self.asm.op(_RET_K, action)
            if not self.fails:
                return self.asm.insns()  # it matches whatever the arguments: nothing after it is reached
            self.asm.label(fail)
            # A is known at the next rule only if every jump here left the same word in it.
            self.acc = self.fails[0] if self.fails and all(f == self.fails[0] for f in self.fails) else None
        self.asm.op(_RET_K, self.default)
        return self.asm.insns()


def _satisfiable(cond: Cond) -> bool:
    """False for a masked comparison with a value bit outside its mask: no argument matches it."""
    _arg, op, a, b = cond
    return not (op == CMP_MASKED_EQ and isinstance(a, int) and isinstance(b, int) and b & ~a)


def _runs(table: dict[int, int | list[Rule]], default: int) -> list[tuple[int, int | list[Rule]]]:
    """The number line from 0 as (first number, answer) runs: an action, or one call's rules."""
    runs: list[tuple[int, int | list[Rule]]] = []
    nrs = sorted(table)
    at = 0
    for nr in nrs:
        if nr > at:
            runs.append((at, default))
        runs.append((nr, table[nr]))
        at = nr + 1
    runs.append((at, default))
    merged: list[tuple[int, int | list[Rule]]] = []
    for start, what in runs:
        if merged and isinstance(what, int) and merged[-1][1] == what:
            continue
        merged.append((start, what))
    return merged


def _tree(runs: list[tuple[int, int | list[Rule]]], default: int) -> list[Insn]:
    """A binary search over runs (the number is in A): JGE on the middle run's first number."""
    if len(runs) == 1:
        what = runs[0][1]
        if isinstance(what, int):
            return [(_RET_K, 0, 0, what)]
        return _Block(default).emit(what)
    mid = len(runs) // 2
    left, right = _tree(runs[:mid], default), _tree(runs[mid:], default)
    if len(left) <= 255:
        return [(_JGE_K, len(left), 0, runs[mid][0])] + left + right
    return [(_JGE_K, 0, 1, runs[mid][0]), (_JMP_JA, 0, 0, len(left))] + left + right


def emit_filter(arch: int, table: dict[int, int | list[Rule]], default: int, bad_arch: int) -> bytes:
    """The filter for one architecture: ``table`` maps a number to its action or its rules (first match
    decides, then ``default``); every number not in it gets ``default``, another architecture
    ``bad_arch``."""
    if any(not 0 <= nr < _X32_SYSCALL_BIT for nr in table):
        raise ValueError("a syscall number outside the native table")
    tree = _tree(_runs(table, default), default)
    # The architecture, then the number in A for the tree.
    head: list[Insn] = [(_LD_W_ABS, 0, 0, _OFF_ARCH), (_JEQ_K, 1, 0, arch), (_RET_K, 0, 0, bad_arch),
                        (_LD_W_ABS, 0, 0, _OFF_NR)]
    if arch == ARCH_X86_64:
        # x32's numbers carry bit 30: another table, killed as libseccomp does (but -1, a tracer's
        # "skip", which falls to the tree and its default).
        head += [(_JGE_K, 0, 2, _X32_SYSCALL_BIT), (_JEQ_K, 1, 0, _M32), (_RET_K, 0, 0, bad_arch)]
    prog = head + tree
    if len(prog) > 4096:
        raise FilterTooLarge(f"{len(prog)} BPF instructions, over BPF_MAXINSNS (4096)")
    return b"".join(_INSN.pack(*i) for i in prog)
