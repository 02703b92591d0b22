"""The scope of a search: the samples (or objects) it may return, and how
a view is searched without reading all its ids.

| Copyright the fiftyone-ai-search authors, Apache-2.0.
"""

from ..index import media


def make_scope(samples, image_id_scope):
    """The samples to search within: None for all that the index holds, a
    list of sample ids, or a :class:`ViewScope`.

    The index of a grouped dataset holds all its image slices, so the
    dataset itself is a scope (its active slice); a patches view searches
    the samples its patches belong to (see
    :func:`fiftyone_ai_search.index.media.resolve`).
    """
    dataset, view = media.resolve(samples)
    if image_id_scope is not None:
        check_known_ids(dataset, image_id_scope, "image_id_scope")
        if view is None:
            return image_id_scope
        # in the view's order
        return view.select(image_id_scope).values("id")
    if view is None:
        return None
    return ViewScope(view)


class ViewScope:
    """A view of the dataset as a search scope, its ids read only if needed.

    Reading all ids of a large view costs more than the search itself
    (measured: 50k ids of a 100k dataset ~0.5 s, a search ~25 ms), so a
    large view is searched like any large scope, by over-fetching from the
    whole index (:func:`fiftyone_ai_search.query.topk.nearest`), and MongoDB is asked which of the
    hits are in the view (an ``_id`` lookup within the view's pipeline).
    """

    def __init__(self, view):
        self.view = view
        self._size = None
        self._ids = None
        self._member = {}

    @property
    def size(self):
        """The number of samples of the view if counted already, else
        None."""
        return self._size

    def __len__(self):
        if self._size is None:
            self._size = self.view.count()
        return self._size

    def ids(self):
        """All sample ids of the view, in its order."""
        if self._ids is None:
            self._ids = self.view.values("id")
            self._size = len(self._ids)
        return self._ids

    def contains(self, sample_ids):
        """The subset of ``sample_ids`` in the view."""
        unknown = [i for i in sample_ids if i not in self._member]
        if unknown:
            found = set(self.view.select(unknown).values("id"))
            for i in unknown:
                self._member[i] = i in found
        return {i for i in sample_ids if self._member[i]}


class ObjectsOfView(ViewScope):
    """The objects of the samples of a view as a search scope: their label
    ids, read from the samples (a patches view of the whole view would
    first write a patch of each of its objects)."""

    def __init__(self, view, objects):
        super().__init__(view)
        self.objects = objects

    def __len__(self):
        if self._size is None:
            self._size = self.objects.count(self.view)
        return self._size

    def ids(self):
        if self._ids is None:
            self._ids = (self.view.values(f"{self.objects.path}.id",
                                          unwind=True)
                         if self.objects.exists else [])
            self._size = len(self._ids)
        return self._ids

    def contains(self, sample_ids):
        unknown = [i for i in sample_ids if i not in self._member]
        if unknown and self.objects.exists:
            found = set(self.view.select_labels(
                ids=unknown, fields=self.objects.field
            ).values(f"{self.objects.path}.id", unwind=True))
            for i in unknown:
                self._member[i] = i in found
        return {i for i in sample_ids if self._member.get(i)}


def known_size(scope):
    return scope.size if isinstance(scope, ViewScope) else len(scope)


def check_known_ids(dataset, ids, arg):
    # select() matches on _id (indexed); F("_id").is_in() would be an $expr
    # that scans the whole collection (~65 ms at 100k samples)
    # (of any image slice of a grouped dataset, not only the active one)
    found = set(media.indexed_samples(dataset).select(ids).values("id"))
    unknown = [i for i in ids if i not in found]
    if unknown:
        raise ValueError(
            f"{arg}: {len(unknown)} sample id(s) not in dataset "
            f"'{dataset.name}': {unknown[:5]}"
        )
