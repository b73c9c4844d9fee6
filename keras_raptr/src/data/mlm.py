"""Packed BERT sequences and masked-LM examples, in numpy."""

import numpy as np

from keras_raptr.src.utils import check_int


def pack_sequences(token_docs, sequence_length, cls_id, sep_id):
    """Packs tokenized documents into full `[CLS] ... [SEP]` sequences.

    Documents are concatenated in order, separated by `[SEP]`, and cut into
    chunks of `sequence_length - 2` tokens; the incomplete last chunk is
    dropped, so every sequence is full (no padding).

    Returns:
        int32 array of shape `(num_sequences, sequence_length)`.
    """
    check_int("sequence_length", sequence_length, 8)
    body = sequence_length - 2
    stream = []
    for ids in token_docs:
        if len(ids):
            stream.extend(ids)
            stream.append(sep_id)
    count = len(stream) // body
    if count == 0:
        raise ValueError(
            "Invalid value for `token_docs`. Fewer tokens "
            f"({len(stream)}) than one sequence of {sequence_length}. "
            f"Received: {len(token_docs)} documents"
        )
    chunks = np.asarray(stream[: count * body], dtype="int32")
    chunks = chunks.reshape(count, body)
    cls = np.full((count, 1), cls_id, dtype="int32")
    sep = np.full((count, 1), sep_id, dtype="int32")
    return np.concatenate([cls, chunks, sep], axis=1)


def mask_tokens(
    token_ids,
    vocabulary_size,
    mask_id,
    special_ids,
    mask_rate=0.15,
    max_predictions=None,
    pad_id=0,
    seed=0,
):
    """BERT masking: picks ~`mask_rate` of the non-special tokens per row;
    80% become `[MASK]`, 10% a random token, 10% stay.

    Args:
        token_ids: int array `(batch, seq)`.
        vocabulary_size: int. Random replacements are drawn from the ids
            that are not special.
        mask_id: int. Id of `[MASK]`.
        special_ids: ids never picked nor drawn (`[PAD]`, `[CLS]`, ...).
        mask_rate: float in (0, 1). Defaults to `0.15`.
        max_predictions: int. Picks per row (the width of `mask_positions`).
            Defaults to `None`: `round(mask_rate * seq)`.
        pad_id: int. Id of `[PAD]`; `padding_mask` is 0 there. Defaults
            to `0`.
        seed: int. Defaults to `0`.

    Returns:
        `(x, labels, sample_weight)`: `x` is the `BertMaskedLM` input dict
        (`token_ids`, `segment_ids`, `padding_mask`, `mask_positions`);
        `labels` the original ids at `mask_positions`; `sample_weight` 1
        where a position was picked, 0 for padding picks.
    """
    if not 0.0 < mask_rate < 1.0:
        raise ValueError(
            "Invalid value for `mask_rate`. Expected a float in (0, 1). "
            f"Received: mask_rate={mask_rate!r}"
        )
    token_ids = np.asarray(token_ids, dtype="int32")
    batch, length = token_ids.shape
    if max_predictions is None:
        max_predictions = max(1, int(round(mask_rate * length)))
    rng = np.random.default_rng(seed)
    special = np.isin(token_ids, np.asarray(list(special_ids)))
    candidates = ~special
    # Random order of candidate positions; specials sort last.
    scores = np.where(candidates, rng.random((batch, length)), 2.0)
    order = np.argsort(scores, axis=1)[:, :max_predictions]
    wanted = np.maximum(
        1, np.round(mask_rate * candidates.sum(axis=1))
    ).astype(int)
    picked = np.arange(max_predictions)[None, :] < np.minimum(
        wanted, candidates.sum(axis=1)
    )[:, None]
    positions = np.sort(np.where(picked, order, length), axis=1)
    picked = positions < length
    positions = np.where(picked, positions, 0).astype("int32")
    rows = np.arange(batch)[:, None]
    labels = np.where(picked, token_ids[rows, positions], 0).astype("int32")

    masked = token_ids.copy()
    roll = rng.random((batch, max_predictions))
    normal_ids = np.setdiff1d(
        np.arange(vocabulary_size), np.asarray(list(special_ids))
    )
    random_ids = rng.choice(normal_ids, size=(batch, max_predictions))
    replacement = np.where(
        roll < 0.8, mask_id, np.where(roll < 0.9, random_ids, labels)
    )
    sel_rows, sel_cols = np.nonzero(picked)
    masked[sel_rows, positions[sel_rows, sel_cols]] = replacement[
        sel_rows, sel_cols
    ]
    x = {
        "token_ids": masked,
        "segment_ids": np.zeros_like(masked),
        "padding_mask": (token_ids != pad_id).astype("int32"),
        "mask_positions": positions,
    }
    return x, labels, picked.astype("float32")
