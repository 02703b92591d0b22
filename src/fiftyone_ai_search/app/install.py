"""Makes FiftyOne find the plugin of a pip-installed package.

FiftyOne discovers plugins only as directories with a ``fiftyone.yml`` under
its plugins directory. This writes one whose entry point imports the
installed package, so there is no second copy of any code.

It writes the repository's own plugin files, file for file (a test keeps
them equal): ``fiftyone.yml``, ``requirements.txt`` and
``plugin/__init__.py``, the files of the repository's root that make it the
plugin directory ``fiftyone plugins download`` copies. It lands where that
download puts it, so installing both ways leaves one plugin, not two of the
same name.
"""

import os
import string

import yaml

import fiftyone_ai_search

from .manifest import PLUGIN_NAME, PY_ENTRY, REQUIREMENT, URL, manifest

# the plugin's entry point: no logic, only the import of the package, and
# when the package is missing an error that says how to install it (from the
# source beside it, where ``fiftyone plugins download`` copied the repository)
_ENTRY = string.Template('''"""Entry point of the AI search plugin ($name).

It holds no logic: the operators and panel live in the ``fiftyone-ai-search``
package, which must be installed where FiftyOne runs.
"""

import os

try:
    from fiftyone_ai_search.app import register  # noqa: F401
except ModuleNotFoundError as e:
    if (e.name or "").partition(".")[0] != "fiftyone_ai_search":
        raise  # the package is installed; something it needs is not
    # the package is not on PyPI; a plugin directory that ``fiftyone plugins
    # download`` made holds its source (pyproject.toml, src/)
    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isfile(os.path.join(_root, "pyproject.toml")):
        _install = "pip install '" + _root + "'"
    else:
        _install = ("pip install /path/to/fiftyone-ai-search  (a clone of "
                    "$url)")
    raise ImportError(
        "The AI search plugin needs the fiftyone-ai-search package "
        "($version), which is not installed in this Python environment (it "
        "is not on PyPI). Install it from its source with\\n"
        "    " + _install + "\\n"
        "and check with\\n"
        "    fiftyone plugins requirements $name --ensure"
    ) from e
''')

_REQUIREMENTS = string.Template("""\
# the fiftyone-ai-search package at the plugin's version; it is not on PyPI:
# install it from this repository as README.md ("The FiftyOne App") says
$requirement
""")


def plugin_files():
    """The plugin directory's files: ``{relative path: text}``."""
    return {
        "fiftyone.yml": yaml.safe_dump(manifest(), sort_keys=False),
        "requirements.txt": _REQUIREMENTS.substitute(requirement=REQUIREMENT),
        PY_ENTRY: _ENTRY.substitute(
            name=PLUGIN_NAME, url=URL,
            version=fiftyone_ai_search.__version__),
    }


def install_plugin(plugins_dir=None):
    """Writes the plugin directory under FiftyOne's plugins directory.

    The directory is ``<plugins_dir>/@fiftyone-ai-search/ai-search``, where
    ``fiftyone plugins download`` puts the plugin too.

    Args:
        plugins_dir (None): the plugins directory; default
            ``fiftyone.config.plugins_dir``

    Returns:
        the plugin directory
    """
    if plugins_dir is None:
        import fiftyone as fo  # start-up: FiftyOne, on first use

        plugins_dir = fo.config.plugins_dir
    if not plugins_dir:
        raise ValueError(
            "FiftyOne has no plugins directory: set FIFTYONE_PLUGINS_DIR"
        )

    path = os.path.join(plugins_dir, *PLUGIN_NAME.split("/"))
    for relpath, text in plugin_files().items():
        filepath = os.path.join(path, *relpath.split("/"))
        os.makedirs(os.path.dirname(filepath), exist_ok=True)
        with open(filepath, "w") as f:
            f.write(text)
    return path
