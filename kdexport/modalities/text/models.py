"""Text classifier specs: the teacher (``hf:``) and the student built from it.

Teacher specs (a ``transformers`` sequence classifier and its fast tokenizer):

- ``hf:PATH``: a local folder as ``save_pretrained`` writes it (config.json, the weights and
  tokenizer.json);
- ``hf:ORG/NAME``: a model already in the Hugging Face cache (``HF_HOME``), looked up with
  ``local_files_only``: kdexport never downloads; fetch it beforehand with ``hf download``.

Student specs: ``hf-config:PATH`` (a config.json, or a folder holding one) or a dict of
overrides of the teacher's config (``{"num_hidden_layers": 2}``). The student shares the
teacher's tokenizer and classes. Where every tensor's shape allows, it starts from the teacher as
DistilBERT did (Sanh et al. 2019, arXiv:1910.01108): embeddings, head and every k-th layer
(student layer j from teacher layer j*k, k = teacher layers // student layers); otherwise from
random weights. Which rule was applied is returned as a record for the run to store.

transformers is imported inside the functions (the ``text`` extra), never at ``import kdexport``.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdexport.errors import KdxError

INSTALL = "pip install 'kdexport[text]'"
TOKENIZER_FILE = "tokenizer.json"
# Config keys the student takes from the teacher: it predicts the teacher's classes.
INHERITED = ("id2label", "label2id", "pad_token_id")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_INDEXED = re.compile(r"^(.*?)\.(\d+)\.")  # "bert.encoder.layer.3.attention...": prefix, 3


@dataclass
class TextModel:
    """A loaded text classifier: the model (eval mode), its tokenizer, where it came from."""

    model: Any  # a transformers PreTrainedModel for sequence classification
    tokenizer: Any  # a fast (tokenizers-backed) transformers tokenizer
    spec: str
    folder: Path
    info: dict = field(default_factory=dict)

    @property
    def max_positions(self) -> int:
        """The longest input the position embeddings allow (``max_position_embeddings``)."""
        return int(self.model.config.max_position_embeddings)

    @property
    def labels(self) -> list[str]:
        """The class names, in class-id order."""
        id2label = self.model.config.id2label
        return [str(id2label[i]) for i in range(len(id2label))]


def require_text_extra() -> None:
    """Raise the one-line install hint when transformers or tokenizers is missing."""
    for module in ("transformers", "tokenizers"):
        try:
            __import__(module)
        except ImportError:
            raise KdxError(
                f"text models need the {module} package, which is not installed: {INSTALL}"
            ) from None


def is_hf_spec(spec: str) -> bool:
    """Whether ``spec`` names a text model (``hf:...``)."""
    return isinstance(spec, str) and spec.startswith("hf:")


def resolve_hf(spec: str) -> tuple[Path, str]:
    """The local folder an ``hf:`` spec names, and how it was found ("folder" or "hub cache")."""
    if not is_hf_spec(spec) or not spec[3:]:
        raise KdxError(f"model spec '{spec}': use hf:PATH (a local folder) or hf:ORG/NAME")
    name = spec[3:]
    path = Path(name).expanduser()
    if path.is_dir():
        return path, "folder"
    if path.exists():
        raise KdxError(f"{spec}: {path} is a file; give the folder save_pretrained wrote")
    if not _REPO_ID.fullmatch(name):
        raise KdxError(f"{spec}: no such folder; give a folder save_pretrained wrote, or ORG/NAME")
    return _from_hub_cache(spec, name), "hub cache"


def _from_hub_cache(spec: str, repo_id: str) -> Path:
    require_text_extra()
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(huggingface_hub.snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError):
        raise KdxError(
            f"{spec}: not a local folder and not in the Hugging Face cache "
            f"({huggingface_hub.constants.HF_HUB_CACHE}); kdexport never downloads: fetch it "
            f"beforehand with `hf download {repo_id}`, or give a folder as hf:PATH"
        ) from None


def load_text_model(spec: str, labels: list[str] | None = None) -> TextModel:
    """Load the classifier and fast tokenizer that ``spec`` (``hf:PATH`` or ``hf:ORG/NAME``)
    names, offline, in eval mode.

    ``labels``: class names for a model whose head is to be (re)trained on them: a head of
    another size is replaced by a new one (listed in ``info["new_weights"]``)."""
    require_text_extra()
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.disable_progress_bar()  # one line per stage is kdexport's own progress
    folder, found = resolve_hf(spec)
    if not (folder / "config.json").is_file():
        raise KdxError(
            f"{spec}: {folder} has no config.json; save the model there with save_pretrained"
        )
    tokenizer = _tokenizer(spec, folder)
    kwargs: dict = {"local_files_only": True, "output_loading_info": True}
    if labels is not None:
        kwargs.update(label_config(labels), ignore_mismatched_sizes=True)
    try:
        model, loading = AutoModelForSequenceClassification.from_pretrained(folder, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise KdxError(f"{spec}: not a loadable sequence classifier ({_first_line(e)})") from None
    new = sorted(
        {*loading.get("missing_keys", ()), *(m[0] for m in loading.get("mismatched_keys", ()))}
    )
    info = {"found_in": found, "new_weights": new, "model_type": model.config.model_type}
    return TextModel(model.eval(), tokenizer, spec, folder, info)


def load_tokenizer(spec: str) -> tuple[Any, int]:
    """The fast tokenizer of the ``hf:`` folder ``spec`` names, and the model's
    ``max_position_embeddings`` (from its config.json; 0 when it has none)."""
    require_text_extra()
    folder, _ = resolve_hf(spec)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    return _tokenizer(spec, folder), int(config.get("max_position_embeddings") or 0)


def _tokenizer(spec: str, folder: Path):
    from transformers import AutoTokenizer

    if not (folder / TOKENIZER_FILE).is_file():
        raise KdxError(
            f"{spec}: no {TOKENIZER_FILE} in {folder}; kdexport needs the fast tokenizer file (bundles ship it): save it there with tokenizer.save_pretrained"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise KdxError(f"{spec}: the tokenizer does not load ({_first_line(e)})") from None
    if not tokenizer.is_fast:
        raise KdxError(
            f"{spec}: the tokenizer loads as a slow (Python) one; kdexport needs a fast one"
        )
    return tokenizer


def label_config(labels: list[str]) -> dict:
    """The config keys that make a model predict ``labels`` (class id = list index)."""
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {name: i for i, name in enumerate(labels)},
    }


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def save_text_model(model, tokenizer, folder: str | Path) -> Path:
    """Write ``model`` and ``tokenizer`` with ``save_pretrained`` into ``folder`` (a folder
    ``hf:FOLDER`` loads). It appears complete or not at all: written beside it, then renamed."""
    import shutil
    import tempfile

    from transformers.utils import logging

    logging.disable_progress_bar()
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def student_config(teacher: TextModel, student: str | dict):
    """The student's config: ``hf-config:PATH``, or the teacher's with ``student``'s overrides;
    classes and padding id always the teacher's."""
    base = teacher.model.config
    if isinstance(student, str):
        if not student.startswith("hf-config:"):
            raise KdxError(
                f"student spec '{student}': use hf-config:PATH or a table of config overrides"
            )
        config = config_file(student[len("hf-config:") :])
    elif isinstance(student, dict):
        config = _overridden(base, student)
    else:
        raise KdxError(
            f"student spec {student!r}: use hf-config:PATH or a table of config overrides"
        )
    for key in INHERITED:
        setattr(config, key, getattr(base, key))
    if teacher.tokenizer is not None and config.vocab_size < len(teacher.tokenizer):
        raise KdxError(
            f"student vocab_size {config.vocab_size} is smaller than the teacher's tokenizer ({len(teacher.tokenizer)} tokens), which the student shares; set vocab_size = {base.vocab_size}"
        )
    return config


def config_file(path: str | Path):
    """The transformers config of a config.json (or of a folder holding one)."""
    require_text_extra()
    from transformers import AutoConfig

    path = Path(path).expanduser()
    file = path / "config.json" if path.is_dir() else path
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
        model_type = raw.pop("model_type")
        return AutoConfig.for_model(model_type, **raw)
    except OSError as e:
        raise KdxError(f"hf-config:{path}: cannot read {file} ({e.strerror})") from None
    except (json.JSONDecodeError, AttributeError) as e:
        raise KdxError(
            f"hf-config:{path}: {file} is not a JSON object ({_first_line(e)})"
        ) from None
    except KeyError:
        raise KdxError(f'hf-config:{path}: {file} names no model_type (e.g. "bert")') from None
    except ValueError as e:
        raise KdxError(f"hf-config:{path}: {_first_line(e)}") from None


def _overridden(base, overrides: dict):
    known = set(base.to_dict()) | set(getattr(base, "attribute_map", {}))
    for key in overrides:
        if key in ("model_type", "num_labels", *INHERITED):
            raise KdxError(
                f"student config: '{key}' is the teacher's; for another architecture give hf-config:PATH"
            )
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3, cutoff=0.5)
            hint = f"close: {', '.join(close)}" if close else "see the teacher's config.json"
            raise KdxError(f"student config: {base.model_type} has no key '{key}'; {hint}")
    return type(base).from_dict({**base.to_dict(), **overrides})


def build_student(
    teacher: TextModel, student: str | dict, seed: int = 0, from_teacher: bool = True
) -> tuple[Any, dict]:
    """The student (train mode off: eval), and the record of how it was initialised: from the
    teacher where shapes allow (``init_from_teacher``), or from random weights when
    ``from_teacher`` is false (a baseline trained from scratch).

    The record: ``{"init": "every-k-th-layer", "k", "layers": {student: teacher}, "copied"}``
    or ``{"init": "random", "reason": "random init: ..."}``, plus both parameter counts."""
    import torch
    from transformers import AutoModelForSequenceClassification

    config = student_config(teacher, student)
    torch.manual_seed(seed)
    try:
        model = AutoModelForSequenceClassification.from_config(config)
    except (ValueError, KeyError, AttributeError) as e:
        raise KdxError(f"student config: {_first_line(e)}") from None
    if from_teacher:
        record = init_from_teacher(model, teacher.model)
    else:
        record = {"init": "random", "reason": "random init: trained from scratch, no teacher"}
    record["parameters"] = {"teacher": _count(teacher.model), "student": _count(model)}
    return model.eval(), record


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def init_from_teacher(student, teacher) -> dict:
    """Copy the teacher's embeddings, head and every k-th layer into ``student`` when every
    tensor's shape allows (DistilBERT's rule); return the record of what was done."""
    s, t = student.config, teacher.config
    reason = _why_not_copied(s, t)
    if reason:
        return {"init": "random", "reason": f"random init: {reason}"}
    k = t.num_hidden_layers // s.num_hidden_layers
    t_state, new = teacher.state_dict(), {}
    layer = _layer_list(t_state, t.num_hidden_layers)
    for name, tensor in student.state_dict().items():
        src = _teacher_name(name, layer, k)
        if src not in t_state or t_state[src].shape != tensor.shape:
            got = tuple(t_state[src].shape) if src in t_state else "absent"
            why = f"{name} {tuple(tensor.shape)} has no teacher match ({src}: {got})"
            return {"init": "random", "reason": f"random init: {why}"}
        new[name] = t_state[src]
    student.load_state_dict(new)
    layers = {str(j): j * k for j in range(s.num_hidden_layers)}
    other = sorted({_group(name) for name in new if not name.startswith(f"{layer}.")})
    return {"init": "every-k-th-layer", "k": k, "layers": layers, "copied": other}


def _layer_list(state: dict, num_layers: int) -> str:
    """The prefix of the transformer layers' parameters ("bert.encoder.layer"): the numbered
    module list with as many entries as the config has layers."""
    counts: dict[str, set[int]] = {}
    for name in state:
        if m := _INDEXED.match(name):
            counts.setdefault(m.group(1), set()).add(int(m.group(2)))
    found = [p for p, idx in counts.items() if idx == set(range(num_layers))]
    return found[0] if found else ""


def _teacher_name(name: str, layer: str, k: int) -> str:
    """The teacher parameter student parameter ``name`` starts from: layer j from layer j*k."""
    if not layer or not name.startswith(f"{layer}."):
        return name
    index, rest = name[len(layer) + 1 :].split(".", 1)
    return f"{layer}.{int(index) * k}.{rest}"


def _group(name: str) -> str:
    """The module a parameter belongs to, for the record: bert.embeddings, classifier."""
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 2 else parts[0]


def _why_not_copied(s, t) -> str:
    if s.model_type != t.model_type:
        return f"architecture differs (teacher {t.model_type}, student {s.model_type})"
    if s.hidden_size != t.hidden_size:
        return f"hidden size differs (teacher {t.hidden_size}, student {s.hidden_size})"
    if s.num_hidden_layers > t.num_hidden_layers:
        return f"more layers than the teacher ({s.num_hidden_layers} > {t.num_hidden_layers})"
    return ""
