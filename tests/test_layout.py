"""The package's house rules, read from the source (ast), not from a running import:
no import circles between modules of redml_reduce, no import of the study package
(redml_study), and no module importing a higher layer (LAYERS below, lowest first).
Every import counts, those inside functions too."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "redml_reduce"

# Layer of each module (dotted name below redml_reduce, a subpackage stands for all its modules).
# A module may import its own layer and those below it, never one above.
LAYERS = [
    ["_core", "plugins", "arrays", "progress"],            # the C++ core and filter plugin, argument checks
    ["codec", "spots", "background", "automask",           # the codec and the core's other jobs (crystals: a
     "lattice"],                                           # chunk's lattice region is part of the format)
    ["jungfrau", "ml"],                                    # raw JUNGFRAU frames, learned spot finding
    ["pipeline"],                                          # raw frame -> photons -> ROI -> chunk
    ["formats"],                                           # filter, writer, codecs, readers
    ["recompress", "acquire"],                             # the two jobs
    ["cli", "__init__"],                                   # the command line and the package's face
]
LAYER = {name: k for k, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known) -> set:
    """Modules of redml_reduce (or redml_study) that `name` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            # `from pkg import module` imports that module
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            found.update(subs or [target])
    return {m for m in found if m.split(".")[0] in ("redml_reduce", "redml_study")}


def graph() -> dict:
    mods = modules()
    known = set(mods) | {"redml_reduce._core"}
    return {name: imports(name, path, known) for name, path in mods.items()}


def layer_of(module: str) -> int:
    parts = module.split(".")[1:] or ["__init__"]
    return LAYER[parts[0]]


def test_every_module_has_a_layer():
    missing = [m for m in modules() if (m.split(".")[1:] or ["__init__"])[0] not in LAYER]
    assert not missing, f"modules without a layer in LAYERS: {missing}"


def test_no_study_import():
    bad = {m: sorted(i for i in deps if i.startswith("redml_study")) for m, deps in graph().items()}
    assert not {m: d for m, d in bad.items() if d}, "the product imports the study package"


def test_no_import_from_a_higher_layer():
    bad = [f"{m} (layer {layer_of(m)}) imports {d} (layer {layer_of(d)})"
           for m, deps in graph().items() for d in sorted(deps)
           if d.startswith("redml_reduce") and layer_of(d) > layer_of(m)]
    assert not bad, "\n".join(bad)


def test_no_import_circles():
    g = {m: {d for d in deps if d.startswith("redml_reduce")} for m, deps in graph().items()}
    circles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        stack.append(m)
        for d in sorted(g.get(m, ())):
            if state.get(d) == "open":
                circles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m, [])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_the_checks_see_a_circle_and_a_climb(tmp_path):
    """The checks themselves: a made-up package with a circle and an upward import fails them."""
    pkg = tmp_path / "redml_reduce"
    (pkg / "formats").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "formats" / "__init__.py").write_text("")
    (pkg / "codec.py").write_text("from .spots import x\nfrom .formats import writer\n")
    (pkg / "spots.py").write_text("def f():\n    from . import codec\n")
    (pkg / "formats" / "writer.py").write_text("import redml_study.sim\n")
    real = globals()["PACKAGE"]
    globals()["PACKAGE"] = pkg
    try:
        for check in (test_no_import_circles, test_no_import_from_a_higher_layer, test_no_study_import):
            try:
                check()
            except AssertionError:
                continue
            raise AssertionError(f"{check.__name__} passed on a bad package")
    finally:
        globals()["PACKAGE"] = real
