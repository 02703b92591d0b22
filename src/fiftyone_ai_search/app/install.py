"""Makes FiftyOne find the plugin of a pip-installed package.

FiftyOne discovers plugins only as directories with a ``fiftyone.yml`` under
its plugins directory. This writes one whose entry point imports the
installed package, so there is no second copy of any code.

It is the same directory, file for file, as the repository's
``plugins/ai-search/`` (what ``fiftyone plugins download`` copies; a test
keeps them equal), and lands where that download puts it, so installing both
ways leaves one plugin, not two of the same name.
"""

import os

import yaml

from .manifest import PLUGIN_NAME, REQUIREMENT, manifest

_INSTALL = f"fiftyone plugins requirements {PLUGIN_NAME} --install"
_PIP_INSTALL = f"pip install '{REQUIREMENT}'"

# the plugin's entry point: no logic, only the import of the package, and
# when the package is missing an error that says how to install it
_ENTRY = f'''"""Entry point of the AI search plugin ({PLUGIN_NAME}).

It holds no logic: the operators and panel live in the ``fiftyone-ai-search``
package, which must be installed where FiftyOne runs.
"""

try:
    from fiftyone_ai_search.app import register  # noqa: F401
except ModuleNotFoundError as e:
    if (e.name or "").partition(".")[0] != "fiftyone_ai_search":
        raise  # the package is installed; something it needs is not
    raise ImportError(
        "The AI search plugin needs the fiftyone-ai-search package, which "
        "is not installed in this Python environment. Install it with\\n"
        "    {_INSTALL}\\n"
        "or\\n"
        "    {_PIP_INSTALL}"
    ) from e
'''


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
        import fiftyone as fo

        plugins_dir = fo.config.plugins_dir
    if not plugins_dir:
        raise ValueError(
            "FiftyOne has no plugins directory: set FIFTYONE_PLUGINS_DIR"
        )

    path = os.path.join(plugins_dir, *PLUGIN_NAME.split("/"))
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "fiftyone.yml"), "w") as f:
        yaml.safe_dump(manifest(), f, sort_keys=False)
    with open(os.path.join(path, "__init__.py"), "w") as f:
        f.write(_ENTRY)
    with open(os.path.join(path, "requirements.txt"), "w") as f:
        f.write(REQUIREMENT + "\n")
    return path
