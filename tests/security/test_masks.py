"""/proc as the jail shows it: Docker's masked paths empty, its read-only paths read-only."""

from __future__ import annotations

import pytest

import aiogaol
from aiogaol import FileReadAll, Subpath, SystemInfoRead
from aiogaol._plan import PROC_MASKED, PROC_READ_ONLY

from ..jailtools import python_json

PROBE = r"""
import json, os, sys
paths, ro = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {"masked": {}, "ro": {}}
for p in paths:
    if not os.path.lexists(p):
        out["masked"][p] = "absent"
        continue
    try:
        if os.path.isdir(p):
            out["masked"][p] = "entries" if os.listdir(p) else "empty"
        else:
            with open(p, "rb") as f:
                out["masked"][p] = "data" if f.read(4096) else "empty"
    except OSError as e:
        out["masked"][p] = "error %d" % e.errno
for p in ro:
    if not os.path.lexists(p):
        out["ro"][p] = "absent"
        continue
    try:
        target = p if not os.path.isdir(p) else None
        if target is None:
            names = [n for n in os.listdir(p)]
            out["ro"][p] = "listed"
            for n in names:
                full = os.path.join(p, n)
                if os.path.isfile(full):
                    target = full
                    break
        if target is not None:
            os.open(target, os.O_WRONLY)
            out["ro"][p] = "writable"
    except OSError as e:
        out["ro"][p] = out["ro"].get(p, "") + " refused %d" % e.errno
mounts = {}
for line in open("/proc/self/mountinfo"):
    fields = line.split()
    mounts[fields[4]] = fields[5].split(",")
out["mounts"] = mounts
sysdir = "/proc/sys"
out["sys"] = sorted(os.listdir(sysdir))[:3]
try:
    os.open("/proc/sys/kernel/hostname", os.O_WRONLY)
    out["sys_write"] = "writable"
except OSError as e:
    out["sys_write"] = e.errno
print(json.dumps(out))
"""


def _args(code: str) -> str:
    import json

    return (f"import sys; sys.argv[1:] = {[json.dumps(list(PROC_MASKED)), json.dumps(list(PROC_READ_ONLY))]!r}\n"
            + code)


@pytest.mark.asyncio
async def test_masked_paths_read_empty_and_read_only_paths_refuse_writes(py_profile: aiogaol.Profile,
                                                                         python: str) -> None:
    got = await python_json(py_profile, python, _args(PROBE))
    for path, seen in got["masked"].items():
        assert seen in ("absent", "empty") or seen.startswith("error"), f"{path}: {seen}"
    # This kernel has some of them, or the test proves nothing.
    assert sum(seen != "absent" for seen in got["masked"].values()) >= 3, got["masked"]
    for path, seen in got["ro"].items():
        assert "writable" not in seen, f"{path} is writable in the jail"
        if seen != "absent":
            assert "ro" in got["mounts"].get(path, []), f"{path} is not a read-only mount: {got['mounts'].get(path)}"
    assert sum(seen != "absent" for seen in got["ro"].values()) >= 1, got["ro"]
    assert "ro" in got["mounts"]["/proc/sys"]
    assert got["sys"] == [], "/proc/sys is not masked without SystemInfoRead"
    assert got["sys_write"] != "writable"


@pytest.mark.asyncio
async def test_system_info_read_shows_proc_sys_read_only(py_profile: aiogaol.Profile, python: str) -> None:
    got = await python_json(py_profile + [SystemInfoRead()], python, _args(PROBE))
    assert "kernel" in got["sys"] or got["sys"], got["sys"]
    assert got["sys_write"] != "writable"
    assert "ro" in got["mounts"]["/proc/sys"], got["mounts"].get("/proc/sys")
    for path, seen in got["masked"].items():
        assert seen in ("absent", "empty") or seen.startswith("error"), f"{path}: {seen}"


@pytest.mark.asyncio
async def test_a_bound_sys_hides_the_firmware(py_profile: aiogaol.Profile, python: str) -> None:
    import os

    if not os.path.isdir("/sys/firmware") and not os.path.isdir("/sys/devices/virtual/powercap"):
        pytest.skip("this host's /sys has neither /sys/firmware nor /sys/devices/virtual/powercap")
    profile = py_profile + [FileReadAll(Subpath("/sys"))]
    assert "mask    /sys/firmware" in aiogaol.explain(profile)
    code = ("import json, os\nout = {}\n"
            "for p in ('/sys/firmware', '/sys/devices/virtual/powercap'):\n"
            "    out[p] = os.listdir(p) if os.path.isdir(p) else None\n"
            "out['class'] = bool(os.listdir('/sys/class'))\nprint(json.dumps(out))\n")
    got = await python_json(profile, python, code)
    assert got["class"], "the bound /sys is empty: the test proves nothing"
    assert got["/sys/firmware"] in ([], None)
    assert got["/sys/devices/virtual/powercap"] in ([], None)
