"""The house rule on imports between the project's folders, checked by parsing every module with ``ast``.

Imports run one way, from the bottom up (a folder may import only the folders listed under it):

    misc, opt          import nothing of the project (misc: TF-free helpers for files, images, processes;
                       opt: the learning-rate schedules)
    src                misc, opt                    (network, targets, post-processing, inference, training)
    dataset            misc, src                    (readers, patches, augmentation, dataflows)
    metrics            misc, src                    (scores; the CLI reads src.config)
    benchmarks         misc, src, dataset, metrics
    xla_runner         misc, opt, src, dataset, benchmarks
    scripts, tests, the root command lines (train.py, infer.py, extract_patches.py)   anything

So ``src`` never imports ``dataset`` (train.py passes the dataflow factories into ``src.training``), and no
package imports a root command line (their library code lives in the packages). Every import counts, also
one inside a function.
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
    "xla_runner": {"misc", "opt", "src", "dataset", "benchmarks"},
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


def test_the_rule_is_acyclic_and_sees_the_imports():
    # No folder may reach itself through the allowed imports (a folder loop).
    def below(package, seen=()):
        for other in ALLOWED[package]:
            assert other not in seen + (package,), f"loop {seen + (package, other)}"
            below(other, seen + (package,))

    for package in ALLOWED:
        below(package)
    # The parser finds imports inside functions too (src/wsi_cluster.py imports src.predictor in one).
    assert {"src", "misc"} <= _imported_tops(ROOT / "src" / "wsi_cluster.py")
    assert _imported_tops(ROOT / "train.py") >= {"src", "dataset", "misc"}


# The modules whose import loads TensorFlow or tensorpack (ARCHITECTURE.md, "Layers"). Every other module of the
# packages is importable without them, so the numpy cores, the weights-file and run-folder owners and the XLA
# runner work on a machine with numpy alone; a command line imports a TensorFlow module only inside the function
# that needs it.
TENSORFLOW_MODULES = {
    "src/model/graph.py", "src/model/losses.py", "src/model/weights.py", "src/model/export.py", "src/predictor.py",
    "src/training.py", "dataset/dataflow.py", "benchmarks/dataflow_speed.py", "benchmarks/infer_speed.py",
    "benchmarks/overfit.py",
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
