"""The house rule on imports between the project's folders, checked by parsing every module with ``ast``.

Imports run one way, from the bottom up (a folder may import only the folders listed under it):

    misc, opt          import nothing of the project (misc: TF-free helpers for files, images, processes;
                       opt: the learning-rate schedules)
    src                misc, opt                    (network, targets, post-processing, inference, training)
    dataset            misc, src                    (readers, patches, augmentation, dataflows)
    metrics            misc, src                    (scores; the CLI reads src.config)
    benchmarks         misc, src, dataset, metrics
    xla_runner         misc, opt, src, dataset
    scripts, tests, the root command lines (train.py, infer.py, extract_patches.py)   anything

So ``src`` never imports ``dataset`` (train.py passes the dataflow factories into ``src.train.trainer``), and no
package imports a root command line (their library code lives in the packages). Every import counts, also
one inside a function.

Inside ``src`` the parts are layered the same way (:data:`SRC_ALLOWED`):

    config, geometry   the config object and every size derived from it
    maps               nothing of src                       (targets, post-processing: the numpy cores)
    model              config, geometry                     (network, losses, the weights file)
    infer              config, geometry, maps, model        (windows, tiles, blocks, slides, the predictor)
    train              config, geometry, maps, model, infer (the trainer, the run folder)
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("misc", "opt", "src", "dataset", "metrics", "benchmarks", "xla_runner")
SCRIPTS = ("train", "infer", "extract_patches")
ALLOWED = {
    "misc": set(),
    "opt": set(),
    "src": {"misc", "opt"},
    "dataset": {"misc", "src"},
    "metrics": {"misc", "src"},
    "benchmarks": {"misc", "src", "dataset", "metrics"},
    "xla_runner": {"misc", "opt", "src", "dataset"},
}
SRC_ALLOWED = {
    "geometry": set(),
    "config": {"geometry"},
    "maps": set(),
    "model": {"config", "geometry"},
    "infer": {"config", "geometry", "maps", "model"},
    "train": {"config", "geometry", "maps", "model", "infer"},
}


def _imported_tops(path: Path) -> set[str]:
    """Top-level names of every absolute import in the module at ``path``."""
    tops = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            tops.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return tops


def _violations() -> set[tuple[str, str]]:
    found = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for top in _imported_tops(path) & (set(PACKAGES) | set(SCRIPTS)):
                if top != package and top not in ALLOWED[package]:
                    found.add((path.relative_to(ROOT).as_posix(), top))
    return found


def test_every_package_imports_only_the_folders_below_it():
    assert _violations() == set()


def _src_part(path: Path) -> str:
    return path.relative_to(ROOT / "src").parts[0].removesuffix(".py")


def _imported_src_parts(path: Path) -> set[str]:
    parts = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
        parts.update(n.split(".")[1] for n in names if n.startswith("src.") and n.count(".") >= 1)
    return parts


def test_the_parts_of_src_import_only_the_parts_below_them():
    """Issue 21.7: src/ in parts that show what they are; the numpy cores (maps) import nothing of the network,
    inference imports nothing of training."""
    modules = [p for p in sorted((ROOT / "src").rglob("*.py")) if p.name != "__init__.py" or p.parent != ROOT / "src"]
    assert {_src_part(p) for p in modules} == set(SRC_ALLOWED)  # every module is in a listed part
    found = {(p.relative_to(ROOT).as_posix(), part) for p in modules for part in _imported_src_parts(p)
             if part != _src_part(p) and part not in SRC_ALLOWED[_src_part(p)]}
    assert found == set()
    assert _imported_src_parts(ROOT / "src" / "train" / "trainer.py") >= {"infer", "model"}  # the parser sees them


def test_the_rule_is_acyclic_and_sees_the_imports():
    # No folder may reach itself through the allowed imports (a folder loop).
    def below(package, seen=()):
        for other in ALLOWED[package]:
            assert other not in seen + (package,), f"loop {seen + (package, other)}"
            below(other, seen + (package,))

    for package in ALLOWED:
        below(package)

    def below_in_src(part, seen=()):
        for other in SRC_ALLOWED[part]:
            assert other not in seen + (part,), f"loop {seen + (part, other)}"
            below_in_src(other, seen + (part,))

    for part in SRC_ALLOWED:
        below_in_src(part)
    # The parser finds imports inside functions too (src/infer/cluster.py imports src.infer.predictor in one).
    assert {"src", "misc"} <= _imported_tops(ROOT / "src" / "infer" / "cluster.py")
    assert _imported_tops(ROOT / "train.py") >= {"src", "dataset", "misc"}


# The modules whose import loads TensorFlow or tensorpack (ARCHITECTURE.md, "Layers"). Every other module of the
# packages is importable without them, so the numpy cores, the weights-file and run-folder owners and the XLA
# runner work on a machine with numpy alone; a command line imports a TensorFlow module only inside the function
# that needs it.
TENSORFLOW_MODULES = {
    "src/model/graph.py", "src/model/losses.py", "src/model/weights.py", "src/model/export.py",
    "src/infer/predictor.py", "src/train/trainer.py", "dataset/dataflow.py", "benchmarks/dataflow_speed.py",
    "benchmarks/infer_speed.py", "benchmarks/overfit.py",
}


def _module_level_imports(path: Path) -> set[str]:
    """Dotted names imported when the module at ``path`` is imported: module-body imports, not function bodies."""
    names = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                visit([n for field in ("body", "orelse", "finalbody", "handlers") for n in getattr(node, field, [])])
            elif isinstance(node, ast.ExceptHandler):
                visit(node.body)

    visit(ast.parse(path.read_text(), filename=str(path)).body)
    return names


def test_only_the_tensorflow_modules_import_tensorflow():
    tf_modules = {p[:-3].replace("/", ".") for p in TENSORFLOW_MODULES}
    found = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).as_posix()
            if relative in TENSORFLOW_MODULES:
                continue
            for name in _module_level_imports(path):
                if name.split(".")[0] in ("tensorflow", "tensorpack") or name in tf_modules:
                    found.add((relative, name))
    assert found == set()
    assert all((ROOT / p).is_file() for p in TENSORFLOW_MODULES)  # the list names real files
