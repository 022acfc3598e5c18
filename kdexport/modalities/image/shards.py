"""WebDataset tar shards as a streamed image source.

A shard set is ``data.source = "shards/train-{000000..000099}.tar"`` (WebDataset's brace
notation, expanded by ``webdataset``) or one ``.tar``: each sample is the files sharing a key
(``KEY.jpg`` and ``KEY.cls``, the class id as text; ``.png``/``.jpeg``/``.webp`` images and a
``.txt`` label name are read too), as ``webdataset.TarWriter`` writes them.

The shards are indexed once (tar headers and the small label files: no image is decoded, and
an uncompressed tar is skipped over, not read), so the split is made from the listing as for a
folder, and each image is read by seeking to its bytes: random access, the seeded epoch order
and ``--resume`` work exactly as for files, and under torchrun each rank reads only its part
of each epoch. A sample without an image, or without a label in a labeled source, is one line
naming the shard and key (or skipped and counted with ``data.skip_unreadable``).
"""

from __future__ import annotations

import io
import tarfile
from functools import partial
from pathlib import Path

import numpy as np

from kdexport.errors import KdxError
from kdexport.modalities.contract import Source
from kdexport.modalities.image.sources import (
    IMAGE_SUFFIXES,
    UNREADABLE,
    UNREADABLE_HINT,
    decode,
)
from kdexport.modalities.inputs import Finish, StreamedInputs, file_stamp, readable

LABEL_SUFFIXES = (".cls", ".txt")


def expand(spec: str) -> list[Path]:
    try:
        from webdataset.shardlists import expand_urls
    except ImportError:
        raise KdxError(
            f"data source '{spec}': reading WebDataset shards needs the webdataset package; "
            "pip install 'kdexport[shards]'"
        ) from None
    paths = [Path(p) for p in expand_urls(spec)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise KdxError(
            f"data source '{spec}': {missing[0]} does not exist ({len(missing)} missing)"
        )
    return paths


def _index(path: Path) -> dict[str, dict]:
    """Each key's image (offset, size, suffix) and label text, from the tar headers."""
    samples: dict[str, dict] = {}
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, dot, suffix = member.name.rpartition(".")
                if not dot:
                    continue
                sample = samples.setdefault(key, {})
                suffix = "." + suffix.lower()
                if suffix in IMAGE_SUFFIXES:
                    sample["image"] = (member.offset_data, member.size, suffix)
                elif suffix in LABEL_SUFFIXES:
                    text = tar.extractfile(member).read().decode("utf-8").strip()
                    sample["cls" if suffix == ".cls" else "txt"] = text
    except (OSError, tarfile.TarError, UnicodeDecodeError) as e:
        raise KdxError(
            f"{path}: not a readable uncompressed tar shard ({e}); write shards with "
            "webdataset.TarWriter (compressed shards cannot be read at random)"
        ) from None
    return samples


def read_member(entry: str, view, rng, **decoding) -> np.ndarray:
    """One image of a shard (``entry``: "shard.tar|offset|size|key"), decoded as a file is."""
    shard, offset, size, key = entry.split("|")
    with open(shard, "rb") as f:
        f.seek(int(offset))
        data = f.read(int(size))
    try:
        return decode(io.BytesIO(data), view, rng, **decoding)
    except UNREADABLE as e:
        raise KdxError(
            f"{shard}: sample '{key}' is not a readable image ({e}); {UNREADABLE_HINT}"
        ) from None


def shards(spec: str, opts: dict, labeled: bool) -> Source:
    paths = expand(spec)
    entries, names, bad = [], [], []
    for path in paths:
        for key, sample in _index(path).items():
            label = sample.get("cls", sample.get("txt"))
            fault = (
                "has no image"
                if "image" not in sample
                else "has no label (.cls or .txt)"
                if labeled and label in (None, "")
                else ""
            )
            if fault:
                if not opts["skip_unreadable"]:
                    raise KdxError(
                        f"{path}: sample '{key}' {fault}; add it, drop the sample, or set "
                        "data.skip_unreadable = true to skip such samples"
                    )
                bad.append(f"{path}:{key}")
                continue
            offset, size, _ = sample["image"]
            entries.append(f"{path}|{offset}|{size}|{key}")
            names.append(label or "")
    size, mode, crop = opts["image_size"], opts["image_mode"], opts["crop_fraction"]
    reader = partial(read_member, mode=mode, size=size, crop=crop)
    if opts["skip_unreadable"] and entries:
        ok = readable(entries, reader, opts["workers"])
        bad += [_name(e) for e, good in zip(entries, ok, strict=True) if not good]
        entries = [e for e, good in zip(entries, ok, strict=True) if good]
        names = [n for n, good in zip(names, ok, strict=True) if good]
    if not entries:
        raise KdxError(f"data source '{spec}': no samples with a readable image in its shards")
    y, labels = None, None
    if labeled:
        y, labels = _labels(names)
    pre = {"layout": "NCHW", "scale": 1 / 255, "image_mode": mode, "source": spec}
    pre.update({"shards": len(paths)})
    if size:
        pre["resize"] = size
    if crop:
        pre["crop_fraction"] = crop
    if opts["skip_unreadable"]:
        pre["skipped_unreadable"] = {"count": len(bad), "first": bad[:10]}
    first = entries[0]
    inputs = StreamedInputs(
        np.array(entries),
        reader,
        reader(first, None, None).shape,
        Finish(1 / 255),
        spec,
        opts["workers"],
        file_stamp(paths),
    )
    return Source(inputs, y, labels, pre)


def _name(entry: str) -> str:
    shard, _, _, key = entry.split("|")
    return f"{shard}:{key}"


def _labels(names: list[str]) -> tuple[np.ndarray, list[str] | None]:
    """Class ids from ``.cls`` texts (integers, names unknown) or class names (sorted)."""
    if all(n.lstrip("-").isdigit() for n in names):
        return np.array([int(n) for n in names], np.int64), None
    classes = sorted(set(names))
    index = {name: i for i, name in enumerate(classes)}
    return np.array([index[n] for n in names], np.int64), classes
