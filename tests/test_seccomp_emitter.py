"""The program filter's own emitter (aiogaol/_bpf.py) against libseccomp, on the same rules.

Both compilers take the one description of the policy (``_seccomp._rules``).  Each program runs in a BPF
interpreter (tests/bpfsim.py) on every number of the native table and past it, on x32's numbers, on
other architectures, and on the boundary values of every argument rule (each constant, its neighbours,
each bit of each mask, garbage in the upper half), and both must give the same answer everywhere.  The
kernel itself runs the emitted filter in every jail of the suite (tests/security/, tests/test_seccomp.py).
"""

from __future__ import annotations

import errno
import itertools
from typing import Any

import pytest

import aiogaol
from aiogaol import _bpf, _seccomp
from aiogaol._seccomp import SeccompPolicy

from . import bpfsim

AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET = 1, 2, 10, 16, 17

POLICIES = {
    "default jail": _seccomp.policy_for(aiogaol.python_profile(), jail=True),
    "fallback": _seccomp.policy_for(aiogaol.python_profile(), jail=False),
    "no loopback": _seccomp.policy_for(aiogaol.Profile(aiogaol.python_profile().operations, loopback=False),
                                       jail=True),
    "tcp only": SeccompPolicy(frozenset({AF_UNIX, AF_INET, AF_INET6}), tcp_only=True),
    "tcp only, no unix": SeccompPolicy(frozenset({AF_INET, AF_INET6}), tcp_only=True, unix_socket=False,
                                       host_ipc_denied=True),
    "no sockets": SeccompPolicy(frozenset(), unix_socket=False),
    "every family": SeccompPolicy(frozenset({AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_PACKET})),
    "netlink route only": SeccompPolicy(frozenset({AF_UNIX, AF_INET, AF_NETLINK}), netlink_route_only=True),
}

_FULL = (1 << 64) - 1
_GENERIC = (0, 1, 2, 0xFFFFFFFF, 1 << 31, 1 << 32, (1 << 32) | 1, 1 << 63, _FULL, 0xDEADBEEF00000000)


def _near(v: int) -> set[int]:
    return {x & _FULL for x in (v, v - 1, v + 1, v | 1 << 32, v | 0xFFFFFFFF00000000, v ^ 1 << 63)}


def _values(cond: Any) -> set[int]:
    """The arguments that sit on a comparison's edges."""
    _arg, op, a, b = cond
    if op in (_bpf.CMP_EQ, _bpf.CMP_GE):
        return _near(a)
    if op == _bpf.CMP_MASKED_EQ:
        out = _near(b)
        for bit in range(64):
            if a >> bit & 1:
                out |= {b ^ 1 << bit}
        out |= {b | (~a & _FULL), (b | (~a & 0xFF)) & _FULL}
        return out
    if op == _bpf.CMP_NOT_IN:
        out = set()
        for v in b:
            out |= _near(v) | {v | (~a & 0xF0)}
        return out | {a, a + 1}
    raise AssertionError(op)


def _arg_vectors(rules: list[Any]) -> list[tuple[int, ...]]:
    """Argument vectors for one call's rules: the cross product of each tested argument's edge values."""
    per_arg: dict[int, set[int]] = {}
    for _action, conds in rules:
        for cond in conds:
            per_arg.setdefault(cond[0], set(_GENERIC)).update(v & _FULL for v in _values(cond))
    args = sorted(per_arg)
    vectors = []
    for combo in itertools.product(*(sorted(per_arg[a]) for a in args)):
        vec = [0] * 6
        for a, v in zip(args, combo):
            vec[a] = v
        vectors.append(tuple(vec))
    return vectors


def _table(policy: SeccompPolicy) -> dict[int, Any]:
    rules = _seccomp._Rules()
    _seccomp._rules(policy, _Keep(rules))
    return rules.table


class _Keep:
    """Passes rules to a _Rules and keeps its table (no export)."""

    def __init__(self, rules: "_seccomp._Rules") -> None:
        self.rules = rules

    def rule(self, *a: Any) -> None:
        self.rules.rule(*a)

    def rule_not_in(self, *a: Any) -> None:
        self.rules.rule_not_in(*a)

    def export(self) -> bytes:
        return b""

    def close(self) -> None:
        pass


def _inputs(policy: SeccompPolicy) -> list[tuple[int, int, tuple[int, ...]]]:
    arch = _seccomp.native_arch()
    others = (0x40000003, _seccomp.ARCH_AARCH64 if arch == _seccomp.ARCH_X86_64 else _seccomp.ARCH_X86_64, 0,
              0xFFFFFFFF)
    numbers = [*range(0, 1100), *range(0x40000000, 0x40000000 + 600),
               0x3FFFFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]
    plain = ((0,) * 6, (_FULL,) * 6, (0x5412, 0x5412, 1 << 17, 2, 0, 0x20000000))
    out = [(nr, arch, args) for nr in numbers for args in plain]
    out += [(nr, other, (0,) * 6) for nr in (0, 1, 59, 41, 56, 16, 435, 0x40000000) for other in others]
    for nr, rules in _table(policy).items():
        if any(conds for _a, conds in rules):
            out += [(nr, arch, v) for v in _arg_vectors(rules)]
    return out


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_the_emitted_filter_answers_as_libseccomp_does(name: str) -> None:
    policy = POLICIES[name]
    ours = bpfsim.decode(_seccomp.compile_filter(policy))
    ref = bpfsim.decode(_seccomp.compile_filter_libseccomp(policy))
    inputs = _inputs(policy)
    differ = []
    for nr, arch, args in inputs:
        data = bpfsim.seccomp_data(nr, arch, args)
        got, want = bpfsim.run(ours, data), bpfsim.run(ref, data)
        if got != want:
            differ.append((hex(nr), hex(arch), [hex(a) for a in args], hex(got), hex(want)))
    assert differ == [], differ[:10]
    # What the comparison covered: about 1700 numbers three times over, and each call's argument edges.
    assert len(inputs) > 5000


def test_the_emitted_filter_is_under_half_libseccomps_length() -> None:
    """The point of the emitter: the kernel's cost of loading a filter grows with its length."""
    for policy in POLICIES.values():
        assert len(_seccomp.compile_filter(policy)) * 2 < len(_seccomp.compile_filter_libseccomp(policy))


def test_the_answers_the_policy_states() -> None:
    """A few answers read straight from the policy, so that the two compilers cannot agree on a mistake
    in their shared description unseen."""
    policy = POLICIES["default jail"]
    prog = bpfsim.decode(_seccomp.compile_filter(policy))
    arch = _seccomp.native_arch()

    def answer(name: str, *args: int, on: int = arch) -> int:
        how, nr = _seccomp.resolve(name)
        assert nr is not None, (name, how)
        return bpfsim.run(prog, bpfsim.seccomp_data(nr, on, args))

    allow, eperm, enosys = _seccomp.ACT_ALLOW, _seccomp.act_errno(errno.EPERM), _seccomp.act_errno(errno.ENOSYS)
    assert answer("read") == allow
    assert answer("mount") == eperm
    assert answer("clone3") == enosys
    assert answer("io_uring_setup") == enosys
    assert answer("open_tree_attr") == eperm
    assert answer("ioctl", 0, 0x5401) == allow  # TCGETS
    assert answer("ioctl", 0, 0x5412) == eperm  # TIOCSTI
    assert answer("ioctl", 0, 0xFFFFFFFF00005412) == eperm  # the kernel reads 32 bits of it
    assert answer("clone", 0x11) == allow  # SIGCHLD
    assert answer("clone", 0x10000000 | 0x11) == eperm  # CLONE_NEWUSER
    assert answer("unshare", 0x80) == eperm  # CLONE_NEWTIME
    assert answer("socket", AF_INET, 1, 0) == allow
    assert answer("socket", AF_PACKET, 3, 0) == eperm
    assert answer("socket", AF_INET | 1 << 32, 1, 0) == eperm
    assert answer("socket", AF_NETLINK, 3, 0) == allow  # NETLINK_ROUTE
    assert answer("socket", AF_NETLINK, 3, 9) == eperm  # NETLINK_AUDIT
    assert answer("personality", 0x0400000) == enosys  # READ_IMPLIES_EXEC: not in Docker's values
    assert answer("personality", 0xFFFFFFFF) == allow
    assert answer("read", on=0x40000003) == _seccomp.ACT_KILL_PROCESS  # i386
    if arch == _seccomp.ARCH_X86_64:
        assert bpfsim.run(prog, bpfsim.seccomp_data(0x40000000, arch)) == _seccomp.ACT_KILL_PROCESS  # x32
        assert bpfsim.run(prog, bpfsim.seccomp_data(0xFFFFFFFF, arch)) == enosys
    assert bpfsim.run(prog, bpfsim.seccomp_data(1099, arch)) == enosys  # past every table


def test_a_rule_the_emitter_cannot_order_is_refused() -> None:
    """libseccomp lets a rule without arguments override a call's rules by argument; first-match order
    would not: such a description is an error, not a silent difference."""
    rules = _seccomp._Rules()
    rules.rule(_seccomp.ACT_ALLOW, "ioctl", (1, _bpf.CMP_EQ, 1, 0))
    with pytest.raises(ValueError, match="after rules by argument"):
        rules.rule(_seccomp.act_errno(errno.EPERM), "ioctl")


def _holds(cond: Any, args: tuple[int, ...]) -> bool:
    """A comparison's meaning, read straight from its definition."""
    arg, op, a, b = cond
    v = args[arg]
    if op == _bpf.CMP_EQ:
        return bool(v == a)
    if op == _bpf.CMP_GE:
        return bool(v >= a)
    if op == _bpf.CMP_MASKED_EQ:
        return bool(v & a == b)
    if op == _bpf.CMP_NOT_IN:
        return v & a not in b
    raise AssertionError(op)


def test_the_emitter_on_random_rules_against_their_definition() -> None:
    """Rules of every kind the emitter takes, random but seeded, several to a call and several on one
    argument (so that what the accumulator holds between comparisons is exercised): the program's
    answer for each edge vector is the first rule that holds, from the comparisons' definitions."""
    import random

    rnd = random.Random(20261202)
    default, bad = 0x00050026, _seccomp.ACT_KILL_PROCESS

    def constant() -> int:
        return rnd.choice([rnd.getrandbits(64), rnd.getrandbits(32), rnd.getrandbits(8), 1 << rnd.randrange(64),
                           rnd.getrandbits(8) << 32 | rnd.getrandbits(4)])

    def cond() -> Any:
        arg = rnd.randrange(3)
        op = rnd.choice([_bpf.CMP_EQ, _bpf.CMP_GE, _bpf.CMP_MASKED_EQ, _bpf.CMP_NOT_IN])
        if op == _bpf.CMP_MASKED_EQ:
            mask = rnd.choice([0xFFFFFFFF, 0xF, 1 << rnd.randrange(64), constant(), _FULL])
            return (arg, op, mask, constant() & mask if rnd.random() < 0.9 else constant())
        if op == _bpf.CMP_NOT_IN:
            mask = rnd.choice([0xFFFFFFFF, 0xF, _FULL, 0xFF])
            return (arg, op, mask, frozenset(rnd.getrandbits(6) & mask for _ in range(rnd.randrange(1, 4))))
        return (arg, op, constant(), 0)

    for _round in range(60):
        # Both architectures the filter is written for, whichever this machine is: x32's numbers are
        # another table on x86-64 only (killed, but -1), plain numbers past the table on aarch64.
        arch = (_seccomp.ARCH_X86_64, _seccomp.ARCH_AARCH64)[_round % 2]
        table: dict[int, Any] = {}
        for nr in rnd.sample(range(300), 5):
            rules = [(rnd.choice([0x7FFF0000, 0x00050001, 0x00050002]),
                      tuple(cond() for _ in range(rnd.randrange(1, 4)))) for _ in range(rnd.randrange(1, 6))]
            if rnd.random() < 0.3:
                rules.append((0x7FFF0000, ()))
            table[nr] = rules
        for nr in rnd.sample(range(300), 40):
            table.setdefault(nr, rnd.choice([0x7FFF0000, 0x00050001]))
        prog = bpfsim.decode(_bpf.emit_filter(arch, table, default, bad))
        other = _seccomp.ARCH_AARCH64 if arch == _seccomp.ARCH_X86_64 else _seccomp.ARCH_X86_64
        assert bpfsim.run(prog, bpfsim.seccomp_data(0, other)) == bad
        x32 = bad if arch == _seccomp.ARCH_X86_64 else default
        assert [bpfsim.run(prog, bpfsim.seccomp_data(nr, arch)) for nr in (0x40000000, 0x40000001, 0xFFFFFFFE)] \
            == [x32] * 3
        assert bpfsim.run(prog, bpfsim.seccomp_data(0xFFFFFFFF, arch)) == default
        for nr in range(0, 310):
            what = table.get(nr, default)
            if isinstance(what, int):
                assert bpfsim.run(prog, bpfsim.seccomp_data(nr, arch)) == what
                continue
            edges: dict[int, set[int]] = {i: set(_GENERIC) for i in range(3)}
            for _action, conds in what:
                for c in conds:
                    edges[c[0]].update(v & _FULL for v in _values(c))
            for _ in range(300):
                args = tuple(rnd.choice(sorted(edges[i])) for i in range(3))
                want = next((action for action, conds in what if all(_holds(c, args) for c in conds)), default)
                assert bpfsim.run(prog, bpfsim.seccomp_data(nr, arch, args)) == want, (nr, what, args)
