"""The package's layers, read from its import statements (``ast``, nothing is
imported): no import circle between its modules, no import from a lower
layer to a higher one, and internal imports at the top of a module except
the few listed in :data:`LAZY` with the reason each needs to wait.

The layers, lowest first (a module may import its own layer and those
below; the folders are the layers):

- base: ``config``, ``errors``, ``validate``, ``words`` (and the bundled demo world,
  ``demo.shapes``, whose tiny CLIP the model's messages name);
- ``store/``: the vector stores;
- ``embedding/``: the model, decoding, crops, the pipeline and its workers;
- ``index/``: what an index is of, its state, opening and dropping it;
- ``sync/`` and ``query/``: keeping an index in step; answering a search
  (neither imports the other);
- the facade: the package's ``__init__``, ``embeddings``, ``lifecycle``,
  ``search``, ``brain``, ``brain_registry``, ``duplicates``, ``results``,
  ``scheduler``;
- ``app/``: the FiftyOne operators and panel;
- entry points: ``__main__``, ``demo.quickstart`` (both can install the
  plugin) and ``testing``.
"""

import ast
import fnmatch
import pathlib
import re

import pytest

PACKAGE = "fiftyone_ai_search"
ROOT = pathlib.Path(__file__).resolve().parents[1] / "src" / PACKAGE

BASE = 0
STORE = 1
EMBEDDING = 2
INDEX = 3
SYNC = QUERY = 4
FACADE = 5
APP = 6
ENTRY = 7

#: the layer of each top-level module or folder of the package
LAYERS = {
    "config": BASE, "errors": BASE, "validate": BASE, "words": BASE,
    "demo": BASE, "demo.shapes": BASE,
    "store": STORE,
    "embedding": EMBEDDING,
    "index": INDEX,
    "sync": SYNC, "query": QUERY,
    "": FACADE, "embeddings": FACADE, "lifecycle": FACADE, "search": FACADE,
    "brain": FACADE, "brain_plain": FACADE, "brain_index": FACADE,
    "brain_frames": FACADE,
    "brain_registry": FACADE, "duplicates": FACADE, "uniqueness": FACADE,
    "results": FACADE, "frame_search": FACADE, "frame_views": FACADE,
    "clip_views": FACADE,
    "scheduler": FACADE, "refreshers": FACADE,
    "__main__": ENTRY, "demo.quickstart": ENTRY, "testing": ENTRY,
    "app": APP,
}

#: layers of the same rank that must not import each other
APART = [("sync", "query")]

#: the imports that wait for a function to run: (importer, imported) ->
#: why. Anything else internal is imported at the top of its module
LAZY = {
    # start-up cost: `import fiftyone_ai_search` loads neither PIL nor
    # fiftyone.brain (the decoding side of the pipeline imports PIL; the
    # Brain backend imports fiftyone.brain, ~1 s)
    ("embedding.model", "embedding.images"): "start-up: PIL",
    ("embedding.model", "demo"): "start-up: PIL (the demo world draws)",
    ("sync.images", "embedding.pipeline"): "start-up: PIL",
    ("sync.existing", "embedding.pipeline"): "start-up: PIL",
    ("sync.frames", "embedding.pipeline"): "start-up: PIL",
    # image runs and their workers never load OpenCV
    ("embedding.decode", "embedding.frames"): "start-up: OpenCV",
    ("frame_views", "embedding.frames"): "start-up: OpenCV",
    ("query.vectors", "embedding.pipeline"): "start-up: PIL",
    ("embeddings", "brain"): "start-up: fiftyone.brain",
    ("lifecycle", "store.server"): "start-up: qdrant-client",
    # the command line answers --help without the demo (PIL) or the
    # plugin's installer (PyYAML); the package itself is loaded first anyway
    ("__main__", "demo.quickstart"): "start-up: PIL",
    ("__main__", "app.install"): "start-up: PyYAML",
    # the test helpers run without the demo world until used
    ("testing", "demo"): "start-up: PIL (the demo world draws)",
    # the store's backends import their engines only when one is opened
    ("store", "store.edge"): "start-up: qdrant-edge",
    ("store", "store.server"): "start-up: qdrant-client",
    # the App's package imports its operators and panel (fiftyone.operators)
    # only when FiftyOne loads the plugin
    ("app", "app.operators"): "start-up: fiftyone.operators",
    ("app", "app.panel"): "start-up: fiftyone.operators",
}


def _name(path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules():
    return {_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _top_level(tree):
    """The statements run when the module is imported (also inside a
    module-level ``if`` or ``try``), but not ``if TYPE_CHECKING:``."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If):
            if "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody
            for handler in node.handlers:
                todo += handler.body


def _type_checking(tree):
    """The import statements under ``if TYPE_CHECKING:`` (annotations only:
    never run)."""
    return {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
            and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}


def imports():
    """``[(importer, imported, at_top, line)]`` of the package's internal
    imports, names relative to the package ("" for its ``__init__``)."""
    modules = _modules()
    edges = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        top = {id(n) for n in _top_level(tree)}
        skip = _type_checking(tree)
        package = name if path.name == "__init__.py" else name.rpartition(
            ".")[0]
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".") if package else []
                    base = base[:len(base) - node.level + 1]
                    base = ".".join(base + ([node.module] if node.module
                                            else []))
                elif (node.module or "").split(".")[0] == PACKAGE:
                    base = node.module[len(PACKAGE) + 1:]
                else:
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}" if base else alias.name
                    targets.append(sub if sub in modules else base)
            elif isinstance(node, ast.Import):
                targets = [a.name[len(PACKAGE) + 1:] for a in node.names
                           if a.name.split(".")[0] == PACKAGE]
            for target in targets:
                if target != name:
                    edges.append((name, target, id(node) in top,
                                  node.lineno))
    return edges


def layer_of(module):
    """The layer of a module: its own entry, else its folder's; None if it
    has neither (a new top-level module: give it its layer in LAYERS)."""
    while module not in LAYERS:
        if "." not in module:
            return None
        module = module.rpartition(".")[0]
    return LAYERS[module]


def _group(module):
    for a, b in APART:
        for g in (a, b):
            if module == g or module.startswith(g + "."):
                return g
    return None


def test_every_module_has_a_layer():
    missing = [m for m in _modules() if layer_of(m) is None]
    assert not missing, f"give these modules their layer in LAYERS: {missing}"


def test_no_import_from_a_lower_layer_to_a_higher_one():
    upward = [f"{a} (layer {layer_of(a)}) imports {b or PACKAGE} (layer "
              f"{layer_of(b)}), line {line}"
              for a, b, _, line in imports()
              # (a module without a layer fails the test above)
              if None not in (layer_of(a), layer_of(b))
              and layer_of(a) < layer_of(b)]
    assert not upward, "\n".join(upward)


def test_sync_and_query_stay_apart():
    crossing = [f"{a} imports {b}, line {line}"
                for a, b, _, line in imports()
                if _group(a) and _group(b) and _group(a) != _group(b)]
    assert not crossing, "\n".join(crossing)


def test_no_import_circle():
    graph = {}
    for a, b, _, _ in imports():
        graph.setdefault(a, set()).add(b)
    # a module's package runs first: importing sync.images runs sync's
    # __init__; those edges are implied, and __init__ files import nothing
    # but what they list
    circles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, "\n".join(
        " -> ".join(m or PACKAGE for m in c) for c in circles)


def test_internal_imports_are_at_the_top_but_the_listed_lazy_ones():
    lazy = {(a, b): line for a, b, top, line in imports() if not top}
    unlisted = [f"{a}:{line} imports {b or PACKAGE} in a function"
                for (a, b), line in sorted(lazy.items()) if (a, b) not in LAZY]
    assert not unlisted, "\n".join(unlisted)
    # and the list holds no stale entry
    stale = sorted(set(LAZY) - set(lazy))
    assert not stale, stale


def _says_why(lines, lineno):
    """Whether the import at ``lineno`` carries a comment: on its own line,
    or just above it (over the imports grouped with it)."""
    if "#" in lines[lineno - 1]:
        return True
    for line in reversed(lines[:lineno - 1]):
        line = line.strip()
        if line.startswith("#"):
            return True
        if not line.startswith(("import ", "from ")):
            return False
    return False


def test_every_lazy_internal_import_says_why():
    """A function-level import of the package's own modules says in a
    one-line comment why it waits (the start-up cost of what it loads):
    the import lines say what depends on what, and when it does not, why."""
    modules = _modules()
    silent = []
    for a, b, top, line in imports():
        if top:
            continue
        lines = modules[a].read_text().splitlines()
        if not _says_why(lines, line):
            silent.append(f"{a}:{line} imports {b or PACKAGE} in a function "
                          f"without a comment saying why")
    assert not silent, "\n".join(silent)


def test_the_plugin_imports_the_facade_or_the_app_only():
    """The plugin's entry point imports the package or its App layer."""
    plugin = ROOT.parents[1] / "plugin" / "__init__.py"
    if not plugin.exists():
        pytest.skip("no plugin/ directory in this checkout")
    tree = ast.parse(plugin.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(
                ".")[0] == PACKAGE:
            assert node.module in (PACKAGE, f"{PACKAGE}.app"), node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    assert alias.name in (PACKAGE, f"{PACKAGE}.app")


def _class_bases(tree):
    """``{class name: [base names]}`` of a module's classes (a base
    written ``errors.X`` or ``X`` both read ``X``)."""
    return {node.name: [ast.unparse(b).rpartition(".")[2] for b in node.bases]
            for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}


def test_every_public_error_is_defined_in_errors_py():
    """The package's errors (every subclass of ``AISearchError``) are
    defined in ``errors.py``, in one place a caller can read; the modules
    that raise them import them from there (and may re-export them under
    an old path)."""
    errors = set(_class_bases(ast.parse((ROOT / "errors.py").read_text())))
    assert "AISearchError" in errors
    elsewhere = []
    for name, path in _modules().items():
        if name == "errors":
            continue
        for cls, bases in _class_bases(ast.parse(path.read_text())).items():
            if set(bases) & errors:
                elsewhere.append(f"{name}.{cls}({', '.join(bases)})")
    assert not elsewhere, (
        "define these errors in errors.py (re-export them here if an old "
        f"path must keep working): {elsewhere}")


def test_the_moved_errors_keep_their_old_paths():
    from fiftyone_ai_search import errors
    from fiftyone_ai_search.index import state
    from fiftyone_ai_search.sync import images

    assert state.StaleGeneration is errors.StaleGeneration
    assert images.SyncCancelled is errors.SyncCancelled
    assert issubclass(errors.SyncCancelled, errors.AISearchError)
    assert issubclass(errors.StaleGeneration, errors.AISearchError)


#: docs/development.md, whose "Layout" block names every module
DEVELOPMENT = ROOT.parents[1] / "docs" / "development.md"


def _layout_names():
    """``{folder: names}`` of the modules docs/development.md's "Layout"
    block names (``"recent*.py"`` too) in each folder's section of
    ``src/fiftyone_ai_search/`` (``""``: the package's top level). A
    section is a line indented by two under the package's line (``store/
    ...`` opens one, ``config.py ...`` the top level's), with the lines
    indented deeper that follow it."""
    text = DEVELOPMENT.read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    names, section = {}, None
    for line in block.splitlines():
        if not line.startswith(" "):
            section = None  # the package's own line, or the repository's
        elif not line.startswith("   ") and line.strip():
            first = line.split()[0]
            section = first[:-1] if first.endswith("/") else ""
        if section is not None:
            names.setdefault(section, set()).update(
                re.findall(r"[\w*]+\.py\b", line))
    return names


def test_the_layout_in_the_docs_names_every_module():
    """A module added under src/ is named in docs/development.md's layout
    (the newcomer's map), in its folder's section; a folder's
    ``__init__.py`` goes without saying."""
    names = _layout_names()
    missing = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT)
        folder = "/".join(relative.parts[:-1])
        if folder and relative.name == "__init__.py":
            continue
        if not any(fnmatch.fnmatch(relative.name, name)
                   for name in names.get(folder, ())):
            missing.append(str(relative))
    assert not missing, (
        f"not named in docs/development.md's layout: {missing}")
