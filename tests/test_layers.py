"""The package's import graph is a stack with no circle, and it stays one.

Each module belongs to one layer; it may import its own layer and the ones below, never one above, and
no set of modules may import each other in a circle.  Read from the source with ``ast`` (imports inside
functions and under ``TYPE_CHECKING`` count: a deferred import is still a dependency, often one that
hides a circle).  A new module must be placed in ``LAYERS`` on purpose; docs/architecture.md draws the
same stack.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "aiogaol"

# Bottom first.  A module's top-level name (the first part after "aiogaol.") decides its layer, so a
# subpackage (``_native``, ``_serve``) sits in one layer as a whole.
LAYERS: list[tuple[str, frozenset[str]]] = [
    # What is true of this host and how to call the C core; decides nothing.
    ("platform", frozenset({"_errors", "_native", "_ffi", "_kernel"})),
    # What a jail may do and may use: profiles, limits, ready-made profiles (pure Python, no syscalls
    # beyond resolving the profile's own paths and asking _kernel what it can enforce).
    ("policy", frozenset({"_profile", "_limits", "_ready"})),
    # What to build for a policy: the mount plan, Landlock rules, seccomp filters, the fallback's plan.
    ("plan", frozenset({"_plan", "_landlock", "_seccomp", "_bpf", "_init_filter", "_fallback"})),
    # How a jail is started, fed and measured: spawn arguments, the spawner, launch, cgroups, stdio,
    # CPU time from /proc, pacing of the event loop, and check() which probes all of it.
    ("mechanism", frozenset({"_spawnargs", "_spawner", "_jail", "_cgroup", "_stdio", "_cputime", "_pacing",
                             "_check", "_agent", "_kernel_cell", "_zygote"})),
    # What callers hold: the asyncio mirror and the anyio process (with what they share, _face), run(),
    # the pool and its host task, the sandboxes across calls and the warm-Python pool.
    ("faces", frozenset({"_face", "_asyncio_process", "_anyio_process", "_run", "_pool", "_background",
                         "_sandbox", "_sandbox_process", "_cells", "_python_pool"})),
    # Integrations in extras, built on the faces; the core below never imports them.
    ("integrations", frozenset({"_serve", "ray", "_ray"})),
    # The command line and the public re-exports.
    ("entry", frozenset({"_cli", "__main__", "__init__"})),
]

_LAYER_OF = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    """Dotted names below ``aiogaol`` ("_run", "_native.build_native", "_serve.app") -> file."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The aiogaol modules ``name`` imports, by top-level name, itself excluded."""
    is_package = path.name == "__init__.py"
    package = name.split(".") if is_package else name.split(".")[:-1]
    if name == "__init__":
        package = []
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name[len("aiogaol."):] for a in node.names if a.name.startswith("aiogaol.")]
            targets += ["__init__" for a in node.names if a.name == "aiogaol"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
                base_name = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module == "aiogaol" or (node.module or "").startswith("aiogaol."):
                base_name = (node.module or "")[len("aiogaol."):] if node.module != "aiogaol" else ""
            else:
                continue
            for alias in node.names:
                sub = f"{base_name}.{alias.name}" if base_name else alias.name
                # "from . import _run" names a module; "from ._run import run" names the module _run;
                # "from . import run" (a name defined in __init__) is an import of the package itself.
                targets.append(sub if sub in modules else (base_name or "__init__"))
        out.update(_top(t) for t in targets)
    out.discard(_top(name))
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        graph.setdefault(_top(name), set()).update(_imports(name, path, modules))
    return graph


def test_every_module_has_a_layer() -> None:
    unplaced = sorted(m for m in _graph() if m not in _LAYER_OF)
    assert unplaced == [], (f"aiogaol modules in no layer: {unplaced}; place each in LAYERS in "
                            "tests/test_layers.py (and in docs/architecture.md's stack)")


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = []
    for module, imported in sorted(_graph().items()):
        for target in sorted(imported):
            if module in _LAYER_OF and target in _LAYER_OF and _LAYER_OF[target] > _LAYER_OF[module]:
                upward.append(f"{module} ({LAYERS[_LAYER_OF[module]][0]}) imports {target} "
                              f"({LAYERS[_LAYER_OF[target]][0]})")
    assert upward == []


def test_the_import_graph_has_no_circle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert circles == [], " ; ".join(" -> ".join(c) for c in circles)


def test_the_checker_sees_imports_of_every_form(tmp_path: Path) -> None:
    """The parser itself: relative, absolute, deferred, TYPE_CHECKING and package-level imports all count,
    so a circle cannot hide in a form it does not read."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "from . import _limits\n"
        "from ._profile import Profile\n"
        "import aiogaol._plan\n"
        "from aiogaol import _seccomp\n"
        "if TYPE_CHECKING:\n"
        "    from ._jail import RunningJail\n"
        "def later():\n"
        "    from . import run\n"
        "    from ._native import _core\n"
    )
    path = tmp_path / "_probe.py"
    path.write_text(source)
    modules = {m: Path() for m in ("_limits", "_profile", "_plan", "_seccomp", "_jail", "_native", "_probe")}
    assert _imports("_probe", path, modules) == {"_limits", "_profile", "_plan", "_seccomp", "_jail", "__init__",
                                                 "_native"}


def test_the_old_circle_is_gone() -> None:
    """_kernel, _profile and _seccomp imported each other in a circle: now the platform's facts know
    nothing of policy, policy asks the platform only, and the plan builds on both."""
    graph = _graph()
    assert graph["_kernel"] <= {"_ffi", "_errors"}
    assert "_seccomp" not in graph["_profile"] and "_kernel" in graph["_profile"]
    assert _LAYER_OF["_kernel"] < _LAYER_OF["_profile"] < _LAYER_OF["_seccomp"]
