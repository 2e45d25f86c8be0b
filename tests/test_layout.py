"""The code's layout keeps its rules: no module reaches into another module's private names (a leading
underscore means "this module only"; what another module needs is named and documented), the few
private names and modules of libraries the code uses are each used from the one module listed here,
and no class grows past about 200 lines without saying why in its docstring."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "leap_ray"
# Libraries' private names the code calls, and the one module that may call each (with why, there).
LIBRARY_PRIVATES = {
    "_get_add_time_ids": "engines/sdxl_pipelines.py",
    "_encode_vae_image": "engines/sdxl_pipelines.py",
    "_get_global_client": "testing/cluster.py",
    "_dynamo": "engines/sdxl_fast.py",  # torch._dynamo.config.recompile_limit, named in torch.compile's docs
}
LIBRARY_PRIVATE_MODULES = {  # Ray's own startup steps, which `serve run` and `ray start` take
    "ray.serve._private": "serve/launch.py",
    "ray._private": "serve/launch.py",  # ray_constants: the single-machine switch ray.init lacks
    "ray._private.authentication.authentication_token_setup": "testing/cluster.py",
    "ray._raylet": "testing/cluster.py",
    # the folder inductor keeps its C++ kernels in (TORCHINDUCTOR_CACHE_DIR or its default)
    "torch._inductor.runtime.cache_dir_utils": "engines/compile_cache.py",
    "torch._inductor.codecache": "engines/compile_cache.py",  # which C++ kernels compiled code loaded
    "torch._dynamo.utils": "engines/compile_cache.py",  # counters: torch's only count of cache misses
}
MAX_CLASS_LINES = 210


def modules(root: Path) -> dict[str, ast.Module]:
    return {str(path.relative_to(root)): ast.parse(path.read_text()) for path in root.rglob("*.py")}


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def defined_here(tree: ast.Module) -> set[str]:
    """The private names a module defines: functions, classes, assigned names and attributes."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name | ast.arg):
            names.add(node.id if isinstance(node, ast.Name) else node.arg)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.keyword) and node.arg:
            names.add(node.arg)  # PipelineView(pipeline, _interrupt=False): an attribute made here
    return {name for name in names if private(name)}


def private_reaches(root: Path) -> list[str]:
    """`from x import _name`, and `obj._name` for a `_name` this module does not define."""
    found = []
    for module, tree in sorted(modules(root).items()):
        own = defined_here(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                found += [f"{module}:{node.lineno} imports {a.name}" for a in node.names if private(a.name)]
                parts = (node.module or "").split(".")
                if (
                    any(private(part) for part in parts)
                    and LIBRARY_PRIVATE_MODULES.get(node.module) != module
                ):
                    found.append(f"{module}:{node.lineno} imports from {node.module}")
            elif isinstance(node, ast.Attribute) and private(node.attr) and node.attr not in own:
                if LIBRARY_PRIVATES.get(node.attr) != module:
                    found.append(f"{module}:{node.lineno} reaches {ast.unparse(node)}")
    return found


def long_classes(root: Path) -> list[str]:
    return [
        f"{module}: {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for module, tree in modules(root).items()
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES
        and "lines because" not in (ast.get_docstring(node) or "")
    ]


def test_no_module_reaches_into_another_modules_private_names():
    assert private_reaches(PACKAGE) == []


def test_no_class_is_over_about_200_lines_without_a_reason_in_its_docstring():
    assert long_classes(PACKAGE) == []


def test_the_checks_find_a_planted_reach_and_a_planted_long_class(tmp_path):
    (tmp_path / "a.py").write_text("from b import _hidden\nfrom c._inner import x\nvalue = other._state\n")
    (tmp_path / "b.py").write_text("class Big:\n" + "    x = 1\n" * MAX_CLASS_LINES)
    assert private_reaches(tmp_path) == [
        "a.py:1 imports _hidden",
        "a.py:2 imports from c._inner",
        "a.py:3 reaches other._state",
    ]
    assert long_classes(tmp_path) == [f"b.py: Big ({MAX_CLASS_LINES + 1} lines)"]
