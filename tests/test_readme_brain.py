"""README "Use it from FiftyOne Brain": every code block of the section
runs as written, in order, on a dataset of shape images whose AI search
uses the bundled tiny CLIP (the names the section says it assumes:
``dataset``, ``id1``, ``id2``, ``vector``)."""

import os
import re
import textwrap

import numpy as np
import pytest

import fiftyone_ai_search as ais
from fiftyone_ai_search import brain

from helpers import shapes_dataset

README = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "README.md")
SECTION = "## Use it from FiftyOne Brain"


def section_blocks(readme=README, title=SECTION):
    """The python code blocks of a README section (its subsections too),
    dedented: some stand inside list items."""
    with open(readme) as f:
        text = f.read()
    start = text.index(title + "\n")
    end = text.find("\n## ", start + len(title))
    body = text[start:end if end >= 0 else None]
    return [textwrap.dedent(m.group(2)) for m in re.finditer(
        r"^( *)```python\n(.*?)^\1```", body, re.S | re.M)]


def test_the_section_has_its_blocks():
    assert len(section_blocks()) == 3


@pytest.mark.slow
def test_the_brain_section_runs_as_written(tmp_path):
    dataset = shapes_dataset(tmp_path, num_samples=40)
    ais.calculate_embeddings(dataset, wait=True, progress=False)
    id1, id2 = dataset.take(2, seed=0).values("id")
    vector = np.random.default_rng(0).standard_normal(
        ais.get_embeddings(dataset)[1].shape[1])
    namespace = {"dataset": dataset, "id1": id1, "id2": id2,
                 "vector": vector}
    for number, block in enumerate(section_blocks()):
        code = compile(block, f"README Brain block {number + 1}", "exec")
        exec(code, namespace)  # noqa: S102 - the README's own code
    # what the blocks say they did
    assert namespace["part"].total_index_size == 10
    assert namespace["whole"].total_index_size == 40
    assert dataset.has_field("uniqueness")
    assert "img" not in dataset.list_brain_runs()
    assert {brain.DEFAULT_BRAIN_KEY, "img2"} <= set(brain.runs_of(dataset))
    assert namespace["report"].failed == 0
