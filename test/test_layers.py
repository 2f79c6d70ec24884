"""The package's architecture, checked from the source: which layer may import ROS, and no cycles.

Every module's imports are read with `ast` (top level and inside functions alike), so a lazy
`import rclpy` inside a function of the engine is caught as well as a module-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "argenseg_ros"
PACKAGE = PACKAGE_DIR.name
ROS_LAYER = "nodes"                          # the only subpackage that may import ROS
LAYERS_WITHOUT_ROS = ("engine", "tabletop", "geometry")
ROS_TOP_LEVEL = {"rclpy", "launch", "launch_ros", "rosidl_runtime_py", "builtin_interfaces",
                 "rcl_interfaces", "message_filters", "tf2_ros", "cv_bridge", "ament_index_python"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def imported_names(path: Path) -> list[tuple[str, int]]:
    """Absolute names of everything `path` imports (relative imports resolved), with line numbers."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    this = module_name(path)
    is_package = path.name == "__init__.py"
    names: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = this.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.append((prefix, node.lineno))
            # "from pkg import mod" imports the submodule pkg.mod when there is one
            names += [(f"{prefix}.{alias.name}", node.lineno) for alias in node.names]
    return names


def is_ros(name: str) -> bool:
    top = name.split(".")[0]
    return top in ROS_TOP_LEVEL or top.endswith("_msgs") or top.endswith("_interfaces") \
        or top.endswith("_srvs") or top.startswith("rclpy")


def internal_edges() -> dict[str, set[str]]:
    modules = package_modules()
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for imported, _ in imported_names(path):
            if imported in modules and imported != name and not name.startswith(imported + "."):
                # a package's own __init__ is imported by its submodules implicitly; skip parents
                edges[name].add(imported)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(edges, WHITE)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = GREY
        stack.append(node)
        for nxt in sorted(edges[node]):
            if colour[nxt] == GREY:
                return stack[stack.index(nxt):] + [nxt]
            if colour[nxt] == WHITE:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        colour[node] = BLACK
        return None

    for node in sorted(edges):
        if colour[node] == WHITE:
            found = visit(node)
            if found:
                return found
    return None


def test_layers_are_folders():
    folders = {p.name for p in PACKAGE_DIR.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert {ROS_LAYER, "engine", "tabletop"} <= folders
    top_modules = sorted(p.name for p in PACKAGE_DIR.glob("*.py"))
    assert top_modules == ["__init__.py"], f"modules outside a layer folder: {top_modules}"


@pytest.mark.parametrize("name", sorted(n for n in package_modules()
                                         if not n.startswith(f"{PACKAGE}.{ROS_LAYER}")))
def test_no_ros_outside_the_ros_layer(name):
    path = package_modules()[name]
    bad = [f"{path.relative_to(PACKAGE_DIR.parent)}:{line} imports {imp}"
           for imp, line in imported_names(path) if is_ros(imp)]
    assert not bad, "ROS imported outside argenseg_ros/nodes/:\n" + "\n".join(bad)


def test_engine_does_not_import_upper_layers():
    """The engine is the bottom layer: it imports neither the tabletop world nor the nodes."""
    edges = internal_edges()
    bad = sorted(f"{a} -> {b}" for a, targets in edges.items() if a.startswith(f"{PACKAGE}.engine")
                 for b in targets if not b.startswith(f"{PACKAGE}.engine") and b != PACKAGE)
    assert not bad, bad


def test_no_import_cycle():
    cycle = find_cycle(internal_edges())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_can_fail(tmp_path):
    """The checker itself sees a lazy ROS import and a two-module cycle."""
    assert is_ros("sensor_msgs.msg") and is_ros("rclpy.node") and is_ros("argenseg_ros_interfaces")
    assert not is_ros("numpy") and not is_ros("torch")
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    sample = PACKAGE_DIR / "engine" / "model.py"
    names = [n for n, _ in imported_names(sample)]
    assert f"{PACKAGE}.engine.config" in names and f"{PACKAGE}.engine.vqvae" in names
