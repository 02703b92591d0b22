"""The FiftyOne App layer: operators (and panels) that call the SDK."""

from .manifest import PLUGIN_NAME, manifest


def register(plugin):
    """Registers the plugin's operators; called by FiftyOne's plugin loader."""
    from .operators import OPERATORS  # start-up: fiftyone.operators
    from .panel import AISearchPanel  # start-up: fiftyone.operators

    for cls in OPERATORS + (AISearchPanel,):
        plugin.register(cls)


__all__ = ["PLUGIN_NAME", "manifest", "register"]
