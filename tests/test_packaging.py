"""Packaging as users meet it: the dependencies pip installs, what
``fiftyone plugins download`` copies from this repository, and the plugin
entry point where the package is missing."""

import ast
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import fiftyone as fo
import fiftyone.operators  # noqa: F401 (fo.operators.list_operators)
import fiftyone.plugins as fop
import fiftyone.plugins.core as fopc
import fiftyone.utils.github as foug

from fiftyone_ai_search.app.install import install_plugin
from fiftyone_ai_search.app.manifest import (
    PLUGIN_NAME,
    PY_ENTRY,
    REQUIREMENT,
    URL,
    manifest,
)

from tests.conftest import REPO_DIR

SRC_DIR = os.path.join(REPO_DIR, "src", "fiftyone_ai_search")
PLUGIN_ENTRY = os.path.join(REPO_DIR, *PY_ENTRY.split("/"))
REPO_URL = URL


# --- dependencies ----------------------------------------------------------


def _imported_modules():
    """Every absolute module the package imports: {module: [where]}."""
    modules = {}
    for root, _, files in os.walk(SRC_DIR):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            with open(path) as f:
                tree = ast.parse(f.read(), filename=path)
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    found = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    found = [node.module]
                else:
                    continue
                where = f"{os.path.relpath(path, REPO_DIR)}:{node.lineno}"
                for module in found:
                    modules.setdefault(module, []).append(where)
    return modules


def _owning_distributions(module, candidates):
    """Of the distributions that install ``module``'s top-level name, those
    that install ``module`` itself (namespace packages such as ``fiftyone``
    are shared: ``fiftyone.brain`` is fiftyone-brain's, ``fiftyone.core``
    fiftyone's)."""
    if len(candidates) == 1:
        return set(candidates)
    parts = module.split(".")
    for k in range(len(parts), 0, -1):
        prefix = "/".join(parts[:k])
        owners = set()
        for dist in candidates:
            for f in importlib.metadata.distribution(dist).files or ():
                f = str(f)
                if f == prefix + "/__init__.py" or (
                        f.startswith(prefix + ".")
                        and "/" not in f[len(prefix):]
                        and f.endswith((".py", ".so", ".pyd"))):
                    owners.add(dist)
                    break
        if owners:
            return owners
    return set(candidates)


def _declared_dependencies():
    with open(os.path.join(REPO_DIR, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    return {canonicalize_name(Requirement(r).name)
            for r in project["dependencies"]}


def test_every_imported_distribution_is_a_declared_dependency():
    """A package the code imports but pyproject does not name installs today
    only because something else happens to pull it in."""
    top_level = importlib.metadata.packages_distributions()
    declared = _declared_dependencies()

    missing, unknown = {}, {}
    for module, where in sorted(_imported_modules().items()):
        top = module.partition(".")[0]
        if top in sys.stdlib_module_names or top == "fiftyone_ai_search":
            continue
        if top not in top_level:
            unknown[module] = where
            continue
        owners = _owning_distributions(module, top_level[top])
        if not {canonicalize_name(d) for d in owners} & declared:
            missing[module] = (sorted(owners), where)

    assert not unknown, f"imported, but no installed distribution: {unknown}"
    assert not missing, f"imported, but not in [project].dependencies: " \
                        f"{missing}"


def test_the_dependency_check_sees_the_imports_it_checks():
    modules = _imported_modules()
    # direct imports that no declaration covered before this test existed
    for module in ("pymongo", "sklearn.cluster", "threadpoolctl", "yaml"):
        assert module in modules
    top_level = importlib.metadata.packages_distributions()
    assert _owning_distributions("fiftyone.core.odm",
                                 top_level["fiftyone"]) == {"fiftyone"}


# --- fiftyone plugins download ---------------------------------------------

# what GitHub's archives of the repository hold at its top level (the rest is
# export-ignore'd in .gitattributes): the plugin, and the package it runs,
# which is not on PyPI, so that the downloaded plugin installs it with pip
ARCHIVED_TOP_LEVEL = ["LICENSE", "README.md", "fiftyone.yml", "plugin",
                      "pyproject.toml", "requirements.txt", "src"]


def _git(*args, stdin=None):
    return subprocess.run(["git", *args], cwd=REPO_DIR, input=stdin,
                          capture_output=True, check=True).stdout


def _repository_files():
    """The files an archive of a commit of this working tree holds (tracked
    and new, not ignored, less what .gitattributes marks ``export-ignore``):
    what GitHub's zipball of it would contain."""
    if shutil.which("git") is None or not os.path.isdir(
            os.path.join(REPO_DIR, ".git")):
        pytest.skip("not a git checkout")
    out = _git("ls-files", "-z", "--cached", "--others", "--exclude-standard")
    paths = sorted(p for p in set(out.decode().split("\0")) if p and
                   os.path.isfile(os.path.join(REPO_DIR, p)))

    # git archive leaves out a path marked export-ignore, and everything
    # under a directory that is: ask about every path and its directories
    asked = sorted({"/".join(p.split("/")[:k]) for p in paths
                    for k in range(1, p.count("/") + 2)})
    out = _git("check-attr", "-z", "--stdin", "export-ignore",
               stdin="\0".join(asked).encode()).decode().split("\0")
    ignored = {path for path, _, value in zip(out[0::3], out[1::3],
                                             out[2::3]) if value == "set"}
    return [p for p in paths
            if not any("/".join(p.split("/")[:k]) in ignored
                       for k in range(1, p.count("/") + 2))]


@pytest.fixture(scope="module")
def repository_zipball(tmp_path_factory):
    """This repository as ``https://api.github.com/repos/<repo>/zipball``
    serves it: one top-level ``<owner>-<repo>-<sha>/`` directory."""
    files = _repository_files()
    path = str(tmp_path_factory.mktemp("zipball") / "download.zip")
    with zipfile.ZipFile(path, "w") as z:
        for p in files:
            z.write(os.path.join(REPO_DIR, p),
                    f"fiftyone-ai-search-fiftyone-ai-search-0123abc/{p}")
    return path, files


@pytest.fixture
def downloaded(repository_zipball, tmp_path, monkeypatch):
    """``fiftyone plugins download <repo>`` for real, except that GitHub's
    zipball is this working tree's: ``(plugins_dir, {name: directory})``."""
    zip_path, _ = repository_zipball

    def download(self, outdir):  # GitHubRepository.download, offline
        shutil.copy(zip_path, os.path.join(outdir, "download.zip"))
        with zipfile.ZipFile(os.path.join(outdir, "download.zip")) as z:
            z.extractall(outdir)
        os.remove(os.path.join(outdir, "download.zip"))

    plugins_dir = tmp_path / "plugins"
    plugins_dir.mkdir()
    monkeypatch.setattr(foug.GitHubRepository, "download", download)
    monkeypatch.setattr(fo.config, "plugins_dir", str(plugins_dir))
    return str(plugins_dir), fopc.download_plugin(REPO_URL)


def test_archives_leave_out_what_only_developers_need(repository_zipball):
    _, files = repository_zipball
    assert sorted({p.split("/")[0] for p in files}) == ARCHIVED_TOP_LEVEL
    assert "src/fiftyone_ai_search/demo/tiny_clip/" \
           "open_clip_model.safetensors" in files


def test_fiftyone_finds_exactly_the_plugin_at_the_root(repository_zipball,
                                                       tmp_path):
    """FiftyOne's own search of a downloaded tree (what
    ``download_plugin`` walks) finds one plugin: the repository's root."""
    zip_path, files = repository_zipball
    assert {"fiftyone.yml", "requirements.txt", PY_ENTRY} <= set(files)
    with zipfile.ZipFile(zip_path) as z:
        z.extractall(tmp_path)

    found = list(fopc._iter_plugin_metadata_files(root_dir=str(tmp_path),
                                                  strict=True))
    assert [os.path.relpath(p, tmp_path) for p in found] == [
        "fiftyone-ai-search-fiftyone-ai-search-0123abc/fiftyone.yml"]
    assert fopc._parse_plugin_metadata(found[0]).name == PLUGIN_NAME


def test_plugins_download_copies_the_archive(repository_zipball, downloaded):
    """``fiftyone plugins download <repo>`` copies the directory of the
    ``fiftyone.yml`` it finds, the root: all the archive holds, which is
    kept to the plugin and its package."""
    _, files = repository_zipball
    plugins_dir, plugins = downloaded

    assert list(plugins) == [PLUGIN_NAME]
    plugin_dir = plugins[PLUGIN_NAME]
    assert plugin_dir == os.path.join(plugins_dir, "@fiftyone-ai-search",
                                      "ai-search")
    copied = sorted(
        os.path.relpath(os.path.join(root, f), plugin_dir).replace(os.sep,
                                                                   "/")
        for root, _, names in os.walk(plugin_dir) for f in names)
    assert copied == files
    for part in ("tests", "bench", "docs", "tools", "examples"):
        assert not any(p.startswith(part + "/") for p in copied)

    # and ``fiftyone plugins requirements <name>`` names the package at the
    # version of this checkout, which the installed package satisfies
    with open(os.path.join(REPO_DIR, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    assert fopc.load_plugin_requirements(PLUGIN_NAME) == [REQUIREMENT]
    requirement = Requirement(REQUIREMENT)
    assert requirement.name == project["name"]
    assert not requirement.extras and requirement.url is None
    assert str(requirement.specifier) == f"=={project['version']}"
    fopc.ensure_plugin_requirements(PLUGIN_NAME, error_level=0)


def test_the_downloaded_plugin_loads_every_operator_and_the_panel(
        downloaded):
    """What the App loads from the downloaded directory: the entry point
    ``plugin/__init__.py`` registers every operator and the panel."""
    from fiftyone.plugins.context import PluginContext

    plugin = fop.get_plugin(PLUGIN_NAME)
    assert plugin.directory == downloaded[1][PLUGIN_NAME]
    assert plugin.py_entry == PY_ENTRY and plugin.has_py
    context = PluginContext(plugin)
    context.register_all()
    assert not context.errors, context.errors
    assert sorted(op.name for op in context.instances) == sorted(
        manifest()["operators"] + manifest()["panels"])
    assert sorted(o.name for o in fo.operators.list_operators(
        enabled="all")
        if o.plugin_name == PLUGIN_NAME) == sorted(
        manifest()["operators"] + manifest()["panels"])


def test_the_downloaded_plugin_directory_builds_the_package(downloaded,
                                                            tmp_path):
    """The package is not on PyPI: ``pip install <the downloaded plugin
    directory>`` (README, and the entry point's error) builds it from the
    source the download copied; here, its wheel, without the network."""
    plugin_dir = downloaded[1][PLUGIN_NAME]
    out = tmp_path / "wheel"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps",
         "--no-build-isolation", "--no-index", "-w", str(out), plugin_dir],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = os.listdir(out)
    assert wheel.startswith(
        f"fiftyone_ai_search-{importlib.metadata.version('fiftyone-ai-search')}-")
    with zipfile.ZipFile(out / wheel) as z:
        names = set(z.namelist())
    for name in ("fiftyone_ai_search/__init__.py", "fiftyone_ai_search/py.typed",
                 "fiftyone_ai_search/app/install.py",
                 "fiftyone_ai_search/demo/tiny_clip/"
                 "open_clip_model.safetensors"):
        assert name in names
    # the plugin's files are written by install-plugin, not shipped
    assert not any(n.startswith("plugin/") for n in names)


# --- the entry point without the package -------------------------------------


def _import_without_the_package(entry):
    """Imports a plugin entry point where ``fiftyone_ai_search`` is not
    importable: ``(exception name, message)``."""
    code = f"""
import importlib.util, sys
try:
    import fiftyone_ai_search
except ModuleNotFoundError:
    pass
else:
    sys.exit("fiftyone_ai_search is importable here")
spec = importlib.util.spec_from_file_location("plugin_entry", {entry!r})
try:
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
except ImportError as e:
    print(type(e).__name__)
    print(e)
else:
    sys.exit("imported")
"""
    # -I -S: no site-packages, no PYTHONPATH, no user site: the package (and
    # everything else installed) is not importable, the stdlib is
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", code],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kind, message = proc.stdout.split("\n", 1)
    return kind, message


def test_plugin_entry_without_the_package_says_how_to_install_it():
    """Downloaded, the plugin directory is a copy of the repository: the
    entry point's error gives the pip command that installs the package from
    it, and how to check."""
    kind, message = _import_without_the_package(PLUGIN_ENTRY)
    assert kind == "ImportError"
    assert f"pip install '{REPO_DIR}'\n" in message
    assert "not on PyPI" in message
    assert f"fiftyone plugins requirements {PLUGIN_NAME} --ensure" in message
    assert "git+" not in message


def test_installed_plugin_entry_without_the_package_points_at_a_clone(
        tmp_path):
    """Written by install-plugin, the directory has no source beside it: the
    error names a clone of the repository instead."""
    path = install_plugin(plugins_dir=str(tmp_path))
    kind, message = _import_without_the_package(
        os.path.join(path, *PY_ENTRY.split("/")))
    assert kind == "ImportError"
    assert f"pip install /path/to/fiftyone-ai-search  (a clone of {URL})" \
           in message
    assert f"fiftyone plugins requirements {PLUGIN_NAME} --ensure" in message


def test_every_public_function_is_type_hinted():
    """What ``fiftyone_ai_search`` exports is hinted, arguments and return
    (``**overrides`` aside), and the hints resolve with the names the
    modules import for type checkers only."""
    import inspect
    import typing
    from collections.abc import Callable, Sequence

    import datetime
    import numpy as np

    import fiftyone.core.collections as foc
    import fiftyone.core.dataset as fod
    import fiftyone.core.view as fov
    import PIL.Image

    import fiftyone_ai_search as ais
    from fiftyone_ai_search.config import Settings

    checking = dict(foc=foc, fod=fod, fov=fov, np=np, datetime=datetime,
                    os=os, PIL=PIL, Callable=Callable, Sequence=Sequence,
                    Settings=Settings, SyncReport=ais.SyncReport)
    functions = [getattr(ais, n) for n in ais.__all__
                 if inspect.isfunction(getattr(ais, n))]
    assert len(functions) > 20
    for function in functions:
        hints = typing.get_type_hints(
            function, globalns=dict(function.__globals__, **checking))
        parameters = [p.name for p in inspect.signature(
            function).parameters.values() if p.kind is not p.VAR_KEYWORD]
        missing = set(parameters) - set(hints)
        assert not missing, f"{function.__name__}: {sorted(missing)}"
        assert "return" in hints, f"{function.__name__}: no return hint"


def test_the_installed_package_says_it_is_typed():
    """PEP 561: type checkers read the package's hints only where it ships a
    ``py.typed`` marker (in CI the package is installed from a wheel, so
    this checks what the wheel holds)."""
    import importlib.resources

    marker = importlib.resources.files("fiftyone_ai_search") / "py.typed"
    assert marker.is_file()


#: the errors of errors.py that no caller of the package meets: raised and
#: caught inside a computation (-> why)
INTERNAL_ERRORS = {
    "StaleGeneration": "a computation's own stop, caught by the runner",
}


def test_every_public_error_is_exported_from_the_package():
    """A caller catches what the docs name as ``ais.<Name>Error``: every
    public error of errors.py (``SyncCancelled`` of
    ``calculate_embeddings(wait=True)`` included) is exported, but the
    internal ones listed in :data:`INTERNAL_ERRORS`, and every error the
    README or docs/ name exists there (issue 26, item 5: three README
    errors were not exported)."""
    import re
    from pathlib import Path

    import fiftyone_ai_search as ais
    from fiftyone_ai_search import errors

    public = {name for name, value in vars(errors).items()
              if isinstance(value, type) and issubclass(value, Exception)
              and not name.startswith("_")}
    assert set(INTERNAL_ERRORS) <= public
    assert public - set(INTERNAL_ERRORS) - set(ais.__all__) == set()
    for name in public - set(INTERNAL_ERRORS):
        assert getattr(ais, name) is getattr(errors, name)
    root = Path(__file__).resolve().parent.parent
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    named = {m for page in pages if page.exists() for m in re.findall(
        r"\b([A-Z][A-Za-z]+Error)\b", page.read_text())}
    ours = {n for n in named if n in public or hasattr(ais, n)
            or n.startswith(("Index", "AISearch", "Qdrant"))}
    assert ours - public == set(), "named in the docs, not in errors.py"
