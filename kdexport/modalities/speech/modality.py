"""Speech through the modality contract: keyword clips as float32 waveforms (N, samples), one
ONNX input ``audio`` whose graph holds the log-mel front end, WAV files read on the device by
``run.py`` exactly as here."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated

import numpy as np

from kdexport.errors import KdxError
from kdexport.modalities.contract import Augmentation, Modality, Source
from kdexport.modalities.inputs import StreamedInputs, file_stamp, readable
from kdexport.options import Range

SAMPLE_RATE = 16000  # the front end's rate (frontend.DEFAULT_CONFIG): clips are resampled to it


def speech_data(
    *,
    clip_seconds: Annotated[float, Range(0.05, 30.0)] = 1.0,
    resample: bool = True,
    noise: str = "",
) -> None:
    """The speech keys of [data]: each clip is a window of ``clip_seconds`` at 16 kHz (shorter
    clips padded with zeros at the end, longer ones refused); a clip at another rate is
    resampled (counted in the run's record) unless ``resample`` is false, when it is refused;
    ``noise``: a folder of background-noise WAV clips for ``augment = "noise"`` (default:
    generated white, pink, brown noise and hum)."""


def samples_of(options: dict) -> int:
    return round(options["clip_seconds"] * SAMPLE_RATE)


def _headers(paths: list[Path], options: dict) -> dict:
    """Check each clip by its header (libsndfile reads no samples): mono, not empty, not
    longer than the window, at 16 kHz unless ``resample``; how many will be resampled, from
    which rates. A silent clip is found when it is read."""
    from kdexport.modalities.speech.audio import header

    samples, rates = samples_of(options), {}
    for path in paths:
        rate = header(path, SAMPLE_RATE, samples)
        if rate != SAMPLE_RATE:
            if not options["resample"]:
                raise KdxError(
                    f"{path}: {rate} Hz, and data.resample is false (the clips must "
                    f"be {SAMPLE_RATE} Hz); convert it (`sox {path.name} -r {SAMPLE_RATE} out.wav`)"
                    " or set data.resample = true"
                )
            rates[rate] = rates.get(rate, 0) + 1
    return {"resampled": sum(rates.values()), "from_rates": sorted(rates)} if rates else {}


def read_entry(entry: str, view, rng, samples: int) -> np.ndarray:
    """One clip of a streamed split: its float32 window at 16 kHz (``audio.load_clip``)."""
    from kdexport.modalities.speech.audio import read_clip

    return read_clip(entry, SAMPLE_RATE, samples)


def read_speech(spec: str, options: dict, labeled: bool) -> Source:
    """A folder of class sub-folders of WAV clips, or a ``path,label`` manifest (labeled); a
    folder of WAV clips anywhere below it (a transfer set). Streamed: listed and checked by
    their headers here, decoded in the DataLoader workers."""
    from kdexport.modalities.speech.audio import list_clips

    source = Path(spec)
    if labeled:
        paths, labels, classes = list_clips(source)
        y = np.asarray(labels, np.int64)
    else:
        paths = sorted(source.rglob("*.wav")) if source.is_dir() else []
        if not paths:
            raise KdxError(
                f"{source}: no .wav clips in it; point data.transfer at a folder of clips"
            )
        y, classes = None, None
    reader = partial(read_entry, samples=samples_of(options))
    pre = {"source": spec, "sample_rate": SAMPLE_RATE, "samples": samples_of(options)}
    pre["padding"] = "zeros at the end"
    if options["skip_unreadable"]:
        ok = readable(paths, reader, options["workers"])
        skipped = [str(p) for p, good in zip(paths, ok, strict=True) if not good]
        paths = [p for p, good in zip(paths, ok, strict=True) if good]
        y = None if y is None else y[ok]
        pre["skipped_unreadable"] = {"count": len(skipped), "first": skipped[:10]}
    pre.update(_headers(paths, options))
    inputs = StreamedInputs(
        np.array([str(p) for p in paths]),
        reader,
        (samples_of(options),),
        source=spec,
        workers=options["workers"],
        stamp=file_stamp(paths),
    )
    return Source(inputs, y, classes, pre)


def _noise_clips(folder: str):
    """The background-noise clips of ``folder``, as a (K, samples) tensor of 1 s pieces."""
    import torch

    from kdexport.modalities.speech.audio import decode, resample

    pieces = []
    for path in sorted(Path(folder).glob("*.wav")):
        data, rate = decode(path)
        wave = resample(data.mean(axis=1), rate, SAMPLE_RATE)
        pieces += [
            wave[i : i + SAMPLE_RATE] for i in range(0, len(wave) - SAMPLE_RATE + 1, SAMPLE_RATE)
        ]
    if not pieces:
        raise KdxError(f"data.noise {folder}: no .wav clip of 1 s or more in it; add noise clips")
    return torch.from_numpy(np.stack(pieces).astype(np.float32))


class Speech(Modality):
    name = "speech"
    default_student = "speech:ds-cnn-small"
    input_name = "audio"
    options = {"data": speech_data}
    augmentations = ("noise",)

    @property
    def schemes(self) -> dict:
        from kdexport.modalities.speech.models import SCHEMES

        return SCHEMES

    def read(self, spec: str, options: dict, labeled: bool, cache_dir: Path) -> Source:
        return read_speech(spec, options, labeled)

    def _augmentation(self, name: str, options: dict) -> Augmentation:
        """Time shift (up to 100 ms), gain (-6..+6 dB) and, for 80% of the clips, background
        noise at 0-20 dB SNR (``augment.augment``)."""
        from kdexport.modalities.speech.augment import augment

        noise = _noise_clips(options["noise"]) if options.get("noise") else None
        return Augmentation(
            lambda x, gen: augment(x, gen, noise.to(x.device) if noise is not None else None)
        )

    def float_nodes(self, model) -> list[str]:
        """The log-mel front end: the first Log and every node it depends on. Quantized, its
        8-bit input and spectrum lose the quiet bands (measured on the speech recipe's student:
        83% against 99.25% fp32); in float it costs nothing in accuracy."""
        nodes = list(model.graph.node)
        at = next((i for i, n in enumerate(nodes) if n.op_type == "Log"), None)
        if at is None:
            return []
        needed, kept = set(nodes[at].input), [nodes[at].name]
        for node in reversed(nodes[:at]):
            if needed.intersection(node.output):
                kept.append(node.name)
                needed.update(node.input)
        return kept

    def bundle_section(self, root: Path, recorded: dict, onnx_facts: dict, run: dict) -> dict:
        """What run.py needs to read a WAV file as the run did: the rate and the window (the
        log-mel front end is inside the model's graph)."""
        return {
            "sample_rate": recorded["sample_rate"],
            "samples": recorded["samples"],
            "padding": recorded["padding"],
            "input": onnx_facts["inputs"][0]["name"],
            "frontend": "log-mel inside the model (kdexport.modalities.speech.frontend)",
        }


SPEECH = Speech()
