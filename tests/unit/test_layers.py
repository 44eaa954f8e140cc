"""The layering of `contact_recon` (docs/architecture.md): every import points down, pure layers import no I/O,
systems do not import each other, and nothing in production imports the sandbox but its commands and the demo.

The modules are read as source (ast), every import counted, including those inside functions.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Package folders, as the wheel maps them (pyproject.toml [tool.setuptools] package-dir).
ROOTS = {"contact_recon": REPO / "contact_recon", "contact_recon.flows": REPO / "flows",
         "contact_recon.tasks": REPO / "tasks", "contact_recon.checks": REPO / "checks"}
# Bottom to top: a module may import its own layer and the layers before it, never one after it.
LAYERS = ["settings", "events", "model", "engine", "checks", "systems", "store", "report", "stages", "tasks",
          "flows", "service", "cli"]
LEAVES = {"settings", "events"}  # import nothing of ours
PURE = {"model", "engine"}
IO_MODULES = {"duckdb", "httpx", "prefect", "starlette", "uvicorn", "great_expectations", "rich", "typer",
              "sqlite3", "socket", "subprocess", "urllib", "http"}
SANDBOX_USERS = {"contact_recon.cli.sandbox", "contact_recon.cli.demo"}


def modules() -> Iterator[tuple[str, Path]]:
    for package, folder in ROOTS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            if package == "contact_recon" and parts and parts[0] in ("flows", "tasks", "checks"):
                continue  # never in the contact_recon folder itself; mapped from the top-level folders
            yield name, path


def imports(path: Path, name: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".")[: len(name.split(".")) - node.level + (path.name == "__init__.py")]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}  # `from pkg import submodule`
    return found


def layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "contact_recon" or len(parts) < 2:
        return None
    return parts[1] if parts[1] in LAYERS or parts[1] == "sandbox" else None


ALL = dict(modules())


def test_the_walk_finds_every_layer() -> None:
    seen = {layer(name) for name in ALL}
    assert set(LAYERS) | {"sandbox"} <= seen, f"layers without a module: {set(LAYERS) - seen}"


@pytest.mark.parametrize("name", sorted(n for n in ALL if layer(n) in LAYERS))
def test_imports_point_down(name: str) -> None:
    own = layer(name)
    assert own is not None
    rank = LAYERS.index(own)
    ours = {m for m in imports(ALL[name], name) if m in ALL}
    up = sorted(m for m in ours if (lay := layer(m)) in LAYERS and LAYERS.index(lay) > rank)
    assert not up, f"{name} ({own}) imports a layer above it: {up}"
    if own in LEAVES:
        assert not {m for m in ours if layer(m) != own}, f"{name} is a leaf and imports {sorted(ours)}"
    if own in PURE:
        io = sorted(m for m in imports(ALL[name], name) if m.split(".")[0] in IO_MODULES)
        assert not io, f"{name} is in a pure layer ({own}) and imports I/O: {io}"


@pytest.mark.parametrize("name", sorted(n for n in ALL if n.startswith("contact_recon.systems.")))
def test_a_system_does_not_import_another(name: str) -> None:
    parts = name.split(".")
    if len(parts) < 4:
        return  # the shared systems modules (http, auth, budget...) belong to no one system
    others = sorted(m for m in imports(ALL[name], name) if m.startswith("contact_recon.systems.")
                    and len(m.split(".")) >= 4 and m.split(".")[2] != parts[2] and m in ALL)
    assert not others, f"{name} imports another system: {others}"


def test_no_production_module_imports_the_sandbox() -> None:
    users = sorted(name for name in ALL if layer(name) != "sandbox" and name not in SANDBOX_USERS
                   and any(m.startswith("contact_recon.sandbox") for m in imports(ALL[name], name)))
    assert not users, f"these production modules import the sandbox: {users}"


def test_the_sandbox_imports_only_contracts_and_itself() -> None:
    allowed = ("contact_recon.sandbox", "contact_recon.systems.ghl.contract",
               "contact_recon.systems.tinyemail.contract")
    for name in (n for n in ALL if layer(n) == "sandbox"):
        ours = {m for m in imports(ALL[name], name) if m.startswith("contact_recon")}
        bad = sorted(m for m in ours if not m.startswith(allowed))
        assert not bad, f"{name} imports {bad}: the sandbox may use the systems' contracts only"


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The rule can fail: a model module that imports the store is caught."""
    fake = tmp_path / "records.py"
    fake.write_text("from contact_recon.store.db import Store\n\ndef f():\n    import httpx\n")
    found = imports(fake, "contact_recon.model.records")
    assert "contact_recon.store.db" in found and "httpx" in found
    assert LAYERS.index(layer("contact_recon.store.db") or "") > LAYERS.index("model")
