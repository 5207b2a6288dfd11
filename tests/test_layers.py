"""jaxchat's modules import one way: config → model/sharding/optim/... → data/train/engine/... → stage/report/web.
Read from the source with `ast`, so the check needs no imports and sees imports inside functions too."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "jaxchat"
LAYERS = (
    ("config", "common"),
    ("model", "sharding", "optim", "tokenizer", "tasks", "calculator", "sandbox", "_sandbox_child"),
    ("data", "corpus", "train", "engine", "evaluate", "core_tasks", "checkpoint"),
    ("stage", "report", "web", "interop", "compiled"),
)
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def jaxchat_imports(path: Path) -> set[str]:
    """Every jaxchat module `path` imports (`from jaxchat import x` counts as jaxchat.x)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("jaxchat"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxchat"):
            out.update(f"{node.module}.{a.name}" if node.module == "jaxchat" else node.module for a in node.names)
    return out


def graph(root: Path = PKG) -> dict[str, set[str]]:
    mods = {module_name(p): p for p in root.rglob("*.py")}
    return {m: {i for i in jaxchat_imports(p) if i in mods and i != m} for m, p in mods.items()}


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    if top not in LAYER:
        raise AssertionError(f"{module} has no layer: add it to LAYERS in tests/test_layers.py")
    return LAYER[top]


def problems(g: dict[str, set[str]]) -> list[str]:
    out = []
    for m, deps in sorted(g.items()):
        if m == "jaxchat":
            continue
        for d in sorted(deps):
            if layer_of(d) > layer_of(m):
                out.append(f"upward import: {m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})")
            if m.startswith("jaxchat.tasks.") and d.startswith("jaxchat.") and d not in (
                    "jaxchat.tasks.common", "jaxchat.common") and m != "jaxchat.tasks.common":
                out.append(f"{m} imports {d}: task modules import only jaxchat.tasks.common")
        if m == "jaxchat.sharding" and deps - {"jaxchat.config"}:
            out.append(f"sharding must be a leaf (imports only config), imports {sorted(deps)}")
    # cycles: depth-first search over the module graph
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in sorted(g.get(m, ())):
            if state.get(d) == 1:
                out.append("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(g):
        if m not in state:
            visit(m, [m])
    return out


def test_jaxchat_imports_flow_one_way():
    assert problems(graph()) == []


@pytest.mark.parametrize("extra, expect", [
    ({"jaxchat.sharding": {"jaxchat.model"}}, "import cycle"),
    ({"jaxchat.model": {"jaxchat.train"}}, "upward import"),
    ({"jaxchat.tasks.arc": {"jaxchat.tasks.gsm8k"}}, "import only jaxchat.tasks.common"),
])
def test_the_check_catches_a_bad_import(extra, expect):
    g = graph()
    for m, deps in extra.items():
        g[m] = g[m] | deps
    assert any(expect in p for p in problems(g))


def test_imports_inside_functions_say_why():
    """An import inside a function is for an optional dependency or start-up time, and a comment says which."""
    bare = []
    for path in sorted(PKG.rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node.col_offset > 0:
                here, above = lines[node.lineno - 1], lines[node.lineno - 2].strip()
                if "#" not in here and not above.startswith("#"):
                    bare.append(f"{path.relative_to(PKG.parent)}:{node.lineno}: {here.strip()}")
    assert bare == []
