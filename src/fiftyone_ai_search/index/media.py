"""Which samples of a dataset AI search indexes, and how the samples a user
passes resolve to them.

-   An image dataset: all its samples.
-   A grouped dataset: every sample of every image slice, whatever slice is
    active (its other slices, video or 3D, are left out). A search honours
    the slice(s) of what it is given: the grouped dataset itself searches
    its active slice, ``dataset.select_group_slices(["left", "right"])``
    both.
-   A patches view (``to_patches()``, ``to_evaluation_patches()``): the
    samples its patches belong to, in its source dataset.
-   Video, 3D and point-cloud datasets, and frames or clips views, are
    refused with :class:`UnsupportedMediaError` (a video dataset's frames
    have their own index: ``enable_embeddings(video_dataset,
    frames=True)`` and ``search_frames``).

A frame index (:func:`video_samples`) indexes the videos of a video
dataset, or every sample of every video slice of a grouped dataset,
whatever slice is active, as image indexes take every image slice.

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

from ..errors import UnsupportedMediaError

#: what AI search indexes, as error messages say it
SUPPORTED = (
    "AI search indexes image datasets, and grouped datasets with image "
    "slices (all image slices are indexed)"
)


def _video_hint(name, grouped=False):
    # frames are indexed in place (issue 24): no image dataset to clone
    if grouped:
        return (
            "To search the frames of its video slices, enable frame search "
            "on the grouped dataset with fiftyone_ai_search."
            f"enable_embeddings(fo.load_dataset({name!r}), frames=True) "
            "(every video slice is indexed) and search them with "
            "fiftyone_ai_search.search_frames(grouped_dataset, prompt=...), "
            "or search one slice with search_frames(grouped_dataset."
            "select_group_slices('<video slice>'), prompt=...)"
        )
    return (
        "To search the frames of its videos, enable AI search on the "
        f"video dataset with fiftyone_ai_search.enable_embeddings("
        f"fo.load_dataset({name!r}), frames=True) and search them with "
        "fiftyone_ai_search.search_frames(video_dataset, prompt=...); "
        "fiftyone_ai_search.frames_view(video_dataset, hits) opens the "
        "hits as a frames view"
    )


def source_dataset(samples, arg="samples"):
    """The dataset ``samples`` come from, whose index serves them.

    Cheap: reads no samples. Patches views resolve to their source dataset
    (``samples._dataset`` of a patches view is the hidden dataset FiftyOne
    generates for it).

    Args:
        samples: a :class:`fiftyone.core.dataset.Dataset` or
            :class:`fiftyone.core.view.DatasetView`
        arg ("samples"): the argument's name, for the messages

    Returns:
        a :class:`fiftyone.core.dataset.Dataset`

    Raises:
        ValueError: if ``samples`` is not a dataset or a view
        UnsupportedMediaError: for frames and clips views (of videos)
    """
    import fiftyone.core.collections as foc  # start-up: FiftyOne, on first use

    if not isinstance(samples, foc.SampleCollection):
        got = "None" if samples is None else type(samples).__name__
        raise ValueError(
            f"{arg} must be a FiftyOne Dataset or DatasetView, got {got}"
        )
    if samples._is_frames or samples._is_clips:
        # (patches of a frames view are frames too)
        root = samples._root_dataset
        kind = "frames" if samples._is_frames else "clips"
        grouped = is_grouped(root)
        of = (f"the video slices of the grouped dataset '{root.name}'"
              if grouped else f"the video dataset '{root.name}'")
        raise UnsupportedMediaError(
            f"{arg} is a {kind} view of {of}; "
            f"{SUPPORTED}. {_video_hint(root.name, grouped)}"
        )
    if samples._is_generated:
        return samples._root_dataset
    return samples._dataset


def resolve(samples, arg="samples"):
    """The dataset whose index serves ``samples``, and which of its indexed
    samples ``samples`` means.

    Args:
        samples: a :class:`fiftyone.core.dataset.Dataset` or
            :class:`fiftyone.core.view.DatasetView`
        arg ("samples"): the argument's name, for the messages

    Returns:
        a tuple ``(dataset, view)``: ``view`` is None when ``samples`` means
        all that AI search indexes of ``dataset`` (an image dataset itself),
        else a collection of ``dataset`` whose samples are meant: the
        active slice for a grouped dataset itself (the dataset), the source
        samples for a patches view, ``samples`` itself for any other view

    Raises:
        ValueError: if ``samples`` is not a dataset or a view
        UnsupportedMediaError: for frames and clips views (of videos)
    """
    dataset = source_dataset(samples, arg)
    if samples._is_patches:
        # the samples the patches belong to, each once, in the patches' order
        ids = list(dict.fromkeys(samples.values("sample_id")))
        return dataset, indexed_samples(dataset).select(ids, ordered=True)
    if samples is dataset and not is_grouped(dataset):
        return dataset, None
    return dataset, samples


def is_grouped(dataset):
    """Whether ``dataset`` is a grouped dataset."""
    return dataset.media_type == "group"


def check_supported(dataset):
    """Checks that AI search can index ``dataset``: an image dataset, an
    empty one (its media type comes with its first samples) or a grouped
    dataset with an image slice (or no slice yet).

    Args:
        dataset: a :class:`fiftyone.core.dataset.Dataset`

    Returns:
        the dataset

    Raises:
        UnsupportedMediaError: if it is not; the message says what is
            supported and, for videos, how to search their frames
    """
    media_type = dataset.media_type
    if media_type in (None, "image"):
        return dataset
    if media_type == "group":
        slices = dataset.group_media_types
        if not slices or "image" in slices.values():
            return dataset
        kinds = ", ".join(f"{k!r} ({v})" for k, v in sorted(slices.items()))
        hint = (f" {_video_hint(dataset.name, grouped=True)}"
                if "video" in slices.values() else "")
        raise UnsupportedMediaError(
            f"Dataset '{dataset.name}' is a grouped dataset with no image "
            f"slice (slices: {kinds}); {SUPPORTED}.{hint}"
        )
    hint = f" {_video_hint(dataset.name)}" if media_type == "video" else ""
    raise UnsupportedMediaError(
        f"Dataset '{dataset.name}' is a {media_type} dataset; "
        f"{SUPPORTED}.{hint}"
    )


def indexed_samples(dataset):
    """The samples of ``dataset`` that AI search indexes: the dataset itself
    for an image dataset (nothing gets slower there), all samples of all
    image slices of a grouped dataset, whatever slice is active.

    Args:
        dataset: a :class:`fiftyone.core.dataset.Dataset`

    Returns:
        a :class:`fiftyone.core.collections.SampleCollection`
    """
    if not is_grouped(dataset):
        return dataset
    # flat: one collection of the samples of every image slice; empty (not
    # an error) when there is none
    return dataset.select_group_slices(media_type="image")


def has_videos(dataset):
    """Whether ``dataset`` is a video dataset, or a grouped dataset with a
    video slice."""
    if dataset.media_type == "video":
        return True
    return is_grouped(dataset) and "video" in (
        dataset.group_media_types or {}).values()


def video_samples(dataset):
    """The videos whose frames a frame index of ``dataset`` indexes: the
    dataset itself for a video dataset, all samples of all video slices of
    a grouped dataset, whatever slice is active (a flat collection of
    videos, which FiftyOne's ``to_frames`` takes).

    Args:
        dataset: a video or grouped :class:`fiftyone.core.dataset.Dataset`

    Returns:
        a :class:`fiftyone.core.collections.SampleCollection`
    """
    if not is_grouped(dataset):
        return dataset
    # empty (not an error) when there is no video slice yet
    return dataset.select_group_slices(media_type="video")
