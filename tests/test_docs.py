"""The documentation runs as written: every ```python block of README.md and
docs/*.md is executed, page by page, in order, in one namespace per page,
against the test session's FiftyOne (its private mongod) with the bundled
tiny CLIP, so the docs cannot drift from the code again.

A block that cannot run on these machines (it needs CUDA, a Qdrant server,
weights that would be downloaded) is marked in the page, on the line
before it::

    <!-- skip: needs the ViT-B-32 weights (downloaded) -->

and is reported here as skipped with that reason. Each block is a test of
its own (``docs/sdk.md:57``, by its first line); running one runs the
page's blocks before it first, as a reader of the page would have.
"""

import contextlib
import glob
import os
import re
import textwrap
from dataclasses import dataclass

import fiftyone as fo
import pytest

import fiftyone_ai_search as ais

from tests.helpers import wait_until_idle

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs",
                                                             "*.md")))

#: a fenced block, possibly indented (inside a list item): its indent, its
#: language and its text, up to the fence that closes it at that indent
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.S | re.M)
SKIP = re.compile(r"^\s*<!--\s*skip:\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    code: str
    skip: str | None  # why it cannot run here, from its marker

    @property
    def name(self):
        return f"{self.page}:{self.line}"


def page_blocks(page):
    """The Python blocks of a page, dedented, with their skip reasons (the
    marker on the last non-blank line before the fence)."""
    with open(os.path.join(REPO, page)) as f:
        text = f.read()
    blocks = []
    for match in FENCE.finditer(text):
        if match.group(2) != "python":
            continue
        before = [line for line in text[:match.start()].splitlines()
                  if line.strip()]
        marker = SKIP.match(before[-1]) if before else None
        blocks.append(Block(page, text.count("\n", 0, match.start()) + 1,
                            textwrap.dedent(match.group(3)),
                            marker.group(1) if marker else None))
    return blocks


def all_blocks():
    return [block for page in PAGES for block in page_blocks(page)]


def test_the_pages_are_found():
    assert {"README.md", "docs/sdk.md", "docs/app.md", "docs/brain.md",
            "docs/objects.md", "docs/large-datasets.md",
            "docs/configuration.md", "docs/design.md",
            "docs/benchmarks.md", "docs/videos.md", "docs/cli.md",
            "docs/install.md", "docs/development.md"} <= set(PAGES)
    assert len(all_blocks()) >= 15


def test_every_page_of_the_docs_is_run():
    """Every markdown page under docs/ (in any folder) is one whose blocks
    run: a page added next week is run without a line here."""
    found = {os.path.relpath(p, REPO) for p in glob.glob(
        os.path.join(REPO, "docs", "**", "*.md"), recursive=True)}
    assert found and found <= set(PAGES), sorted(found - set(PAGES))


#: the first line of code that reads as Python
PYTHON = re.compile(r"^\s*(import \w|from [\w.]+ import |ais\.|fo\.|"
                    r"dataset\s*=)", re.M)


def test_no_python_hides_in_a_block_of_another_language():
    """A Python block is fenced ```python (else it would not be run): no
    block without a language, or of another, reads as Python."""
    hidden = []
    for page in PAGES:
        with open(os.path.join(REPO, page)) as f:
            text = f.read()
        for match in FENCE.finditer(text):
            if match.group(2) != "python" and PYTHON.search(
                    textwrap.dedent(match.group(3))):
                line = text.count("\n", 0, match.start()) + 1
                hidden.append(f"{page}:{line} (```{match.group(2)})")
    assert not hidden, hidden


def test_every_skip_marker_stands_before_a_python_block_and_says_why():
    for page in PAGES:
        with open(os.path.join(REPO, page)) as f:
            text = f.read()
        outside = FENCE.sub("", text)  # a marker shown as an example
        markers = [line for line in outside.splitlines()
                   if "<!-- skip" in line]
        skipped = [b for b in page_blocks(page) if b.skip is not None]
        assert len(markers) == len(skipped), page  # none stray
        assert all(b.skip for b in skipped), page  # each has its reason


def test_every_block_compiles():
    for block in all_blocks():
        compile(block.code, block.name, "exec")


LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(title):
    """GitHub's anchor of a heading."""
    title = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return title.replace(" ", "-")


def _anchors(path):
    with open(path) as f:
        text = FENCE.sub("", f.read())
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.*)$", text, re.M)}


def test_every_link_between_the_pages_leads_somewhere():
    """Relative links (to a file, and to a heading in it) resolve, so a
    page moved or a heading renamed cannot leave a dead link."""
    dead = []
    for page in PAGES:
        with open(os.path.join(REPO, page)) as f:
            text = FENCE.sub("", f.read())
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            path = os.path.normpath(os.path.join(
                REPO, os.path.dirname(page), path)) if path else os.path.join(
                REPO, page)
            if not os.path.exists(path):
                dead.append(f"{page}: {target}")
            elif anchor and path.endswith(".md") and (
                    anchor not in _anchors(path)):
                dead.append(f"{page}: {target} (no such heading)")
    assert not dead, dead


def _the_demo_ran(workdir):
    """What the README's blocks start from: the datasets the quick start's
    demo leaves (fewer images, same steps)."""
    from fiftyone_ai_search.demo.quickstart import run_demo

    run_demo(num_samples=60, images_dir=os.path.join(workdir, "demo"))


#: what a page's blocks start from, as the page says
SETUPS = {"README.md": _the_demo_ran}


class _Page:
    """One page's run: its namespace and how far it got."""

    def __init__(self, page, workdir):
        self.blocks = page_blocks(page)
        self.namespace = {"__name__": "__docs__"}
        self.done = 0
        self.failed = None
        self.workdir = workdir
        if page in SETUPS:
            SETUPS[page](workdir)

    def run_through(self, block):
        """Runs the page's blocks up to this one (skipped ones left out)."""
        upto = self.blocks.index(block) + 1
        while self.done < upto:
            if self.failed is not None:
                pytest.fail(f"an earlier block of the page failed: "
                            f"{self.failed}")
            current = self.blocks[self.done]
            self.done += 1
            if current.skip is not None:
                continue
            try:
                with _cwd(self.workdir):
                    exec(compile(current.code, current.name, "exec"),  # noqa: S102
                         self.namespace)
            except BaseException:
                self.failed = current.name
                raise


@contextlib.contextmanager
def _cwd(path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """The pages' runs, made as their blocks come; at the end, the
    datasets the pages made are left idle (no worker still running)."""
    before = set(fo.list_datasets())
    runs = {}

    def run_of(page):
        if page not in runs:
            runs[page] = _Page(page, str(tmp_path_factory.mktemp("docs")))
        return runs[page]

    yield run_of
    for name in set(fo.list_datasets()) - before:
        dataset = fo.load_dataset(name)
        if ais.is_embeddings_enabled(dataset):
            wait_until_idle(dataset)


def _brain_page_did_what_it_says(namespace):
    from fiftyone_ai_search import brain

    dataset = namespace["dataset"]
    assert namespace["part"].total_index_size == 10
    assert namespace["whole"].total_index_size == 40
    assert dataset.has_field("uniqueness")
    assert "img" not in dataset.list_brain_runs()
    assert {brain.DEFAULT_BRAIN_KEY, "img2"} <= set(brain.runs_of(dataset))
    assert namespace["report"].failed == 0


def _readme_tour_did_what_it_says(namespace):
    ais = namespace["ais"]
    dataset, scenes = namespace["dataset"], namespace["scenes"]
    assert "red circles" in [c["name"] for c in ais.list_collections(dataset)]
    assert len(namespace["patches"]) == 5  # objects, as patches
    assert scenes.name == "ai-search-demo-objects"


#: what a page's blocks say they did, checked after its last block
CHECKS = {"README.md": _readme_tour_did_what_it_says,
          "docs/brain.md": _brain_page_did_what_it_says}


def test_the_brain_page_has_its_blocks():
    assert len(page_blocks("docs/brain.md")) == 5


def _params():
    """Each block a test; the docs pages' in the slow tier (about a minute
    in all: they build datasets and compute embeddings), the README's in
    the fast one."""
    return [pytest.param(block, id=block.name,
                         marks=() if block.page == "README.md"
                         else pytest.mark.slow)
            for block in all_blocks()]


@pytest.mark.parametrize("block", _params())
def test_the_block_runs(block, pages):
    if block.skip is not None:
        pytest.skip(f"{block.name}: {block.skip}")
    run = pages(block.page)
    run.run_through(block)
    if block == run.blocks[-1] and block.page in CHECKS:
        CHECKS[block.page](run.namespace)
