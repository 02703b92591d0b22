"""Makes FiftyOne find the plugin of a pip-installed package.

FiftyOne discovers plugins only as directories with a ``fiftyone.yml`` under
its plugins directory. This writes one whose entry point imports the
installed package, so there is no second copy of any code.
"""

import os

import yaml

from .manifest import PLUGIN_NAME, manifest

_ENTRY = '''"""AI search plugin entry point (written by install-plugin)."""

from fiftyone_ai_search.app import register  # noqa: F401
'''


def install_plugin(plugins_dir=None):
    """Writes the plugin directory under FiftyOne's plugins directory.

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

    path = os.path.join(plugins_dir, *PLUGIN_NAME.lstrip("@").split("/"))
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "fiftyone.yml"), "w") as f:
        yaml.safe_dump(manifest(), f, sort_keys=False)
    with open(os.path.join(path, "__init__.py"), "w") as f:
        f.write(_ENTRY)
    return path
