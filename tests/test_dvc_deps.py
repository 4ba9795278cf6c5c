"""Every stage in dvc.yaml depends on every project file its command runs, so that `dvc status` can
never call results up to date after a change to code they came from.

What a stage runs is derived from the source, never listed here (modules move): the command's
console script (pyproject.toml) and the stage module `pipeline/stages/<stage>.py` that `pipeline.cli`
imports by name, then, transitively, every `pipeline.*` module they import (at module level or
inside functions, with the packages above each), name in a string (`"_target_": "pipeline.models.MLP"`)
or that the stage's params in params.yaml name as a Hydra `_target_`."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "pipeline"
DOTTED = re.compile(rf"{PACKAGE}(\.\w+)+")


def module_file(name: str) -> Path | None:
    """The file that importing `name` runs, or None if it is not a module of ours."""
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def with_packages(name: str) -> list[str]:
    """`a.b.c` -> [a, a.b, a.b.c]: importing a module first runs its packages' `__init__`."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def resolve(dotted: str) -> str | None:
    """The longest prefix of `dotted` that is one of our modules (`pkg.mod.Class` -> `pkg.mod`)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        if module_file(".".join(parts[:i])):
            return ".".join(parts[:i])
    return None


@cache
def direct_imports(name: str) -> frozenset[str]:
    """The modules of ours that module `name` imports anywhere in its body, or names in a string."""
    path = module_file(name)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import submodule`
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and DOTTED.fullmatch(node.value):
            found.add(node.value)
    return frozenset(m for dotted in found if dotted.split(".")[0] == PACKAGE and (m := resolve(dotted)))


def closure(roots: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = [p for r in roots for p in with_packages(r)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(p for m in direct_imports(name) for p in with_packages(m))
    return seen


def targets(node) -> set[str]:
    """Every `_target_` string in a params subtree."""
    if isinstance(node, dict):
        return {str(v) for k, v in node.items() if k == "_target_"} | {t for v in node.values() for t in targets(v)}
    if isinstance(node, list):
        return {t for v in node for t in targets(v)}
    return set()


def param_node(params: dict, dotted: str):
    node = params
    for part in dotted.split("."):
        node = node[part]
    return node


def stages() -> list[tuple[str, dict]]:
    """(stage@key, the stage's definition with ${key} filled in) for every stage dvc.yaml declares."""
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    out = []
    for name, stage in dvc["stages"].items():
        if "foreach" not in stage:
            out.append((name, stage))
            continue
        over = param_node(params, re.fullmatch(r"\$\{(.+)\}", stage["foreach"]).group(1))
        for key, item in over.items():
            text = yaml.safe_dump(stage["do"]).replace("${key}", key)
            for field, value in (item or {}).items() if isinstance(item, dict) else ():
                text = text.replace("${item." + field + "}", str(value))  # foreach over a dict of dicts (sources)
            out.append((f"{name}@{key}", yaml.safe_load(text)))
    return out


def runs(stage: dict) -> set[str]:
    """Modules of ours that the stage's command runs."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    script, sub = stage["cmd"].split()[:2]
    entry = scripts[script].split(":")[0]
    assert module_file(entry), f"{script}: entry point {entry} not found"
    stage_module = f"{PACKAGE}.stages.{sub}"  # how pipeline.cli finds a stage
    assert module_file(stage_module), f"{stage['cmd']}: no module {stage_module}"
    roots = {entry, stage_module}
    for p in stage.get("params", []):
        for key in p if isinstance(p, dict) else [p]:
            roots |= {m for t in targets(param_node(params, key)) if t.split(".")[0] == PACKAGE and (m := resolve(t))}
    return closure(roots)


STAGES = stages()


@pytest.mark.parametrize("name,stage", STAGES, ids=[n for n, _ in STAGES])
def test_stage_deps_cover_every_module_its_command_runs(name, stage):
    deps = [ROOT / d for d in stage.get("deps", [])]
    missing = sorted(
        str(module_file(m).relative_to(ROOT)) for m in runs(stage) if not any(module_file(m) == d or d in module_file(m).parents for d in deps)
    )
    assert not missing, f"dvc.yaml stage {name} runs these files but does not depend on them: {missing}"


@pytest.mark.parametrize("name,stage", STAGES, ids=[n for n, _ in STAGES])
def test_stage_code_deps_exist(name, stage):
    gone = [d for d in stage.get("deps", []) if d.startswith("src/") and not (ROOT / d).exists()]
    assert not gone, f"dvc.yaml stage {name} depends on paths that do not exist: {gone}"


def test_the_derivation_follows_imports_inside_functions_and_targets():
    # The stage modules import most of what they use inside functions; `_target_` names architectures.
    mt = dict(STAGES)["multitask@" + next(n.split("@")[1] for n, _ in STAGES if n.startswith("multitask@"))]
    found = runs(mt)
    assert {"pipeline.cli", "pipeline.stages.multitask", "pipeline.models"} <= found
    assert any(m.startswith("pipeline.multitask.architectures.") for m in found)
