"""How counts read in the messages a user sees (the App's status, the
command line's rows): "1 video", "3 videos", "0 videos"."""


def counted(count: int, noun: str, plural: "str | None" = None) -> str:
    """``count`` followed by ``noun``, in the plural unless ``count`` is 1.

    Args:
        count: how many
        noun: the noun in the singular (``"video"``)
        plural (None): its plural where it is not ``noun + "s"``

    Returns:
        e.g. ``"1 video"``, ``"2 videos"``
    """
    return f"{count} {noun if count == 1 else plural or noun + 's'}"
