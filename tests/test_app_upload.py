"""Search by an uploaded image, as the App's file input sends it (issue 26,
point 9): the form's checks, and the search it runs; the path on the App
server's machine stays an option."""

import base64
import io

import PIL.Image
import pytest

import fiftyone_ai_search as ais
from fiftyone_ai_search.app import forms
from fiftyone_ai_search.app.panel import results_summary
from fiftyone_ai_search.demo import shapes

from tests.helpers import shapes_dataset, wait_until_idle
from tests.test_operators import _execute, _form, _shown
from tests.test_operators import repo_as_plugin  # noqa: F401 (the plugin, found)


def _upload(data, name="query.png", kind="image/png", content=True):
    """The value of the form's file input: its metadata while the form is
    filled in (lite), the content too when it runs."""
    value = {"name": name, "type": kind, "size": len(data),
             "last_modified": 0}
    if content:
        value["content"] = base64.b64encode(data).decode()
    return value


def _png(color="green", shape="circle"):
    image = shapes.render(shapes.sample_spec(seed=7, index=0, color=color,
                                             shape=shape),
                          image_size=128, seed=7)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    dataset = shapes_dataset(tmp_path_factory.mktemp("upload"),
                             num_samples=60)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    wait_until_idle(dataset)
    return dataset


def test_the_image_form_offers_an_upload_and_checks_it(indexed):
    form = _form(indexed, params={"mode": "image"})
    upload = form["image_upload"]
    assert upload["view"]["name"] == "FileView"
    # FiftyOne's file input takes name endings, not "image/*"
    assert ".jpg" in upload["view"]["types"].split(",")
    assert ".PNG" in upload["view"]["types"].split(",")
    assert upload["view"]["lite"]
    assert upload["view"]["max_size"] == forms.MAX_UPLOAD_BYTES
    assert "image_path" not in form
    assert not form["image_upload"].get("invalid")  # nothing chosen yet

    # not an image, too big: said under the input, Execute blocked
    form = _form(indexed, params={"mode": "image", "image_upload": _upload(
        b"%PDF-1.4", "notes.pdf", "application/pdf", content=False)})
    assert form["image_upload"]["invalid"]
    assert form["image_upload"]["error_message"] == (
        "notes.pdf is not an image (application/pdf): choose a JPEG, PNG, "
        "WebP or other image file.")
    big = dict(_upload(b"", content=False), size=forms.MAX_UPLOAD_BYTES + 1)
    form = _form(indexed, params={"mode": "image", "image_upload": big})
    assert "too big" in form["image_upload"]["error_message"]
    assert "A file on the App server" in form["image_upload"][
        "error_message"]

    # the path on the App server's machine, where it is chosen
    form = _form(indexed, params={"mode": "image",
                                  "image_source": "server_path"})
    assert "image_path" in form and "image_upload" not in form


def test_an_uploaded_image_is_searched_and_named_by_its_file(indexed,
                                                              tmp_path):
    _, asked = _execute(indexed, "ai_search", params={
        "mode": "image", "image_upload": _upload(_png(), "my circle.png"),
        "limit": 5})
    labels = _shown(indexed, asked).values("ground_truth.label")
    # (60 samples: about 2 of each of the 30 colour x shape classes)
    assert labels[0] == "green circle" and labels.count("green circle") >= 2
    (latest,) = [c for c in ais.list_collections(indexed)
                 if c["name"] == ais.TEMPORARY_COLLECTION]
    # the upload is kept nowhere: the results name its file, and record no
    # path that could be taken for one to read again
    query = latest["query"]
    assert query["mode"] == "image" and query["image"] is None
    assert query["image_name"] == "my circle.png"
    assert results_summary(indexed)["query"] == (
        "uploaded image 'my circle.png' (not kept)")
    # searching again by what the record holds says what is missing
    with pytest.raises(ValueError, match="Give exactly one of"):
        ais.perform_ai_search(indexed, image=query["image"])
    # a file of the App server is recorded by its path, which stays true
    path = tmp_path / "on the server.png"
    path.write_bytes(_png())
    _execute(indexed, "ai_search", params={
        "mode": "image", "image_source": "server_path",
        "image_path": str(path), "limit": 5})
    (latest,) = [c for c in ais.list_collections(indexed)
                 if c["name"] == ais.TEMPORARY_COLLECTION]
    assert latest["query"]["image"] == str(path)
    assert "image_name" not in latest["query"]
    assert results_summary(indexed)["query"] == "image 'on the server.png'"
    # a PIL image given to the SDK is in memory too, but no upload
    with PIL.Image.open(path) as image:
        ais.perform_ai_search(indexed, image=image, limit=5)
    assert results_summary(indexed)["query"] == (
        "image 'on the server.png' given in memory (not kept)")


def test_a_broken_upload_is_refused_saying_why(indexed):
    with pytest.raises(ValueError, match="did not arrive whole"):
        _execute(indexed, "ai_search", params={
            "mode": "image", "image_upload": dict(
                _upload(_png()), content="not base64!")})
    with pytest.raises(ValueError, match="No image uploaded"):
        _execute(indexed, "ai_search", params={"mode": "image"})
    # bytes that are no image: the decoder's reason, the file's name
    with pytest.raises(ValueError, match="query.png: cannot read"):
        _execute(indexed, "ai_search", params={
            "mode": "image", "image_upload": _upload(b"garbage" * 10)})
    # a name is only a name: nothing is written, and only its base is kept
    _, asked = _execute(indexed, "ai_search", params={
        "mode": "image", "image_upload": _upload(_png(), "../../x.png"),
        "limit": 1})
    assert asked["set_view"]
    (latest,) = [c for c in ais.list_collections(indexed)
                 if c["name"] == ais.TEMPORARY_COLLECTION]
    assert latest["query"]["image_name"] == "x.png"
