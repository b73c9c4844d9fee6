"""The Colab tutorials under examples/tutorials/.

Each tutorial is a jupytext "percent" script (the source) with its notebook
beside it. The tests check that the notebook matches its source, and run the
script end to end on the current backend at toy sizes, offline: its text
wheel is built from tests/data in tmp_path.
"""

import json
import os
import re
import subprocess
import sys
import zipfile

import keras
import pytest

from keras_raptr.src.data.text import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIALS = os.path.join(ROOT, "examples", "tutorials")
SAMPLE = os.path.join(ROOT, "tests", "data", "wiki_sample.jsonl")
BERT = os.path.join(TUTORIALS, "pretrain_bert_with_raptr.py")


def tutorial_sources():
    return sorted(
        os.path.join(TUTORIALS, name)
        for name in os.listdir(TUTORIALS)
        if name.endswith(".py")
    )


def _cells(notebook):
    return [
        (cell.cell_type, cell.source.strip()) for cell in notebook.cells
    ]


@pytest.mark.parametrize(
    "source", tutorial_sources(), ids=os.path.basename
)
def test_notebook_matches_its_source(source):
    jupytext = pytest.importorskip("jupytext")
    notebook_path = source[: -len(".py")] + ".ipynb"
    assert os.path.isfile(notebook_path), (
        f"{notebook_path} is missing; run: "
        f"jupytext --to ipynb {os.path.relpath(source, ROOT)}"
    )
    expected = jupytext.read(source)
    committed = jupytext.read(notebook_path)
    assert _cells(committed) == _cells(expected), (
        f"{os.path.relpath(notebook_path, ROOT)} is out of date; run: "
        f"jupytext --to ipynb {os.path.relpath(source, ROOT)}"
    )
    # Colab opens it with a GPU runtime and the Python 3 kernel.
    assert committed.metadata.get("accelerator") == "GPU"
    assert committed.metadata["kernelspec"]["name"] == "python3"


def _with_settings(code, **settings):
    """`code` with each `NAME = ...` line of its settings cell replaced."""
    for name, value in settings.items():
        code, count = re.subn(
            rf"^{name} = .*$", f"{name} = {value!r}", code, flags=re.M
        )
        assert count == 1, f"setting {name} not found once in the tutorial"
    return code


def _text_wheel(directory, code):
    """The tutorial's text wheel, holding the test sample."""
    wheel = re.search(r'^WHEEL = "(.+)"$', code, re.M).group(1)
    member = re.search(r'^MEMBER = "(.+)"$', code, re.M).group(1)
    articles = {
        document["title"]: {"title": document["title"],
                            "extract": document["text"]}
        for document in read_jsonl(SAMPLE)
    }
    os.makedirs(directory, exist_ok=True)
    with zipfile.ZipFile(os.path.join(directory, wheel), "w") as archive:
        archive.writestr(member, json.dumps(articles))


def test_bert_tutorial_runs_end_to_end(tmp_path):
    with open(BERT, encoding="utf-8") as f:
        code = f.read()
    data_dir = str(tmp_path / "data")
    _text_wheel(data_dir, code)
    code = _with_settings(
        code,
        NUM_LAYERS=4,
        HIDDEN_DIM=32,
        NUM_HEADS=2,
        SEQUENCE_LENGTH=32,
        BATCH_SIZE=4,
        STEPS=6,
        SCHEDULE="2-3-4",
        VOCABULARY_SIZE=200,
        DATA_DIR=data_dir,
    )
    script = tmp_path / "tutorial.py"
    script.write_text(code, encoding="utf-8")
    env = {
        **os.environ,
        "KERAS_BACKEND": keras.config.backend(),
        "MPLBACKEND": "Agg",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        # No pip download: the wheel is already in DATA_DIR.
        "PIP_NO_INDEX": "1",
    }
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    out = result.stdout

    # Part 1: four of eight blocks trained per step, always 0 and 7.
    trained = [
        json.loads(found)
        for found in re.findall(r"blocks that trained: (\[.*\])", out)
    ]
    assert len(trained) == 4, out
    for blocks in trained:
        assert len(blocks) == 4 and blocks[0] == 0 and blocks[-1] == 7, out
    assert len({tuple(blocks) for blocks in trained}) > 1, out

    # Parts 2-3: both runs trained and were evaluated; the scheduler went
    # through the three stages.
    assert re.search(r"baseline: 6 steps in [\d.]+ s, held-out MLM loss", out)
    assert re.search(r"RaPTr: 6 steps in [\d.]+ s, held-out MLM loss", out)
    for stage in (1, 2, 3):
        assert f"stage {stage}/3 at step" in out, out
    assert "| RaPTr 2-3-4 |" in out and "| 75% |" in out, out

    # Part 4: the exported plain backbone loads with keras_hub and matches.
    assert "BertBackbone from" in out, out
    assert "the exported backbone computes the same outputs: True" in out, out
