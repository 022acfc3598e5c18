"""Inputs for timing any ONNX model: every graph input's shape resolved, random data per dtype.

Shapes come from the model. Symbolic axes come from ``--shape``: ``1,3,224,224`` for a model
with one input, ``NAME=DIMS`` per input otherwise; a size given for a named axis (``seq``) holds
for every input that shares the name. The batch axis is axis 0 of the first input whose axis 0
is symbolic, and every axis of that name: the batch sizes set it (the size ``--shape`` gives it
when no batch sizes were given). A model whose inputs are all fixed is timed as it is: at its
fixed batch when every input has rank 2 or more and one axis 0, else as one sample.

Random data, seeded: floats standard normal; integers 0 or 1 (valid as token ids, indices and
masks whatever the vocabulary); booleans half true.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kdexport.errors import KdxError

BATCH = "batch"  # an axis set by the batch size
Feed = dict[str, np.ndarray]
_KINDS = [
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "bool",
]


@dataclass
class Inputs:
    """The resolved inputs of a model: ``shapes`` hold ints and BATCH."""

    dtypes: dict[str, str]
    shapes: dict[str, list]
    batch: int | None  # the fixed batch (1 for a model without a batch axis); None: variable
    batch_axis: bool  # False: timed as one sample at its fixed shape
    shape_batch: int | None = None  # the batch --shape gave

    def feed(self, size: int) -> Feed:
        rng = np.random.default_rng(0)
        out = {}
        for name, dims in self.shapes.items():
            shape = tuple(size if d == BATCH else d for d in dims)
            dtype = np.dtype(self.dtypes[name])
            if dtype.kind == "f":
                out[name] = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind == "b":
                out[name] = rng.random(shape) < 0.5
            else:
                out[name] = rng.integers(0, 2, shape, dtype=dtype)
        return out

    def describe(self) -> str:
        return ", ".join(f"{n}: {self.dtypes[n]}{self.shapes[n]}" for n in self.shapes)


def parse_shapes(values: tuple[str, ...] | list[str]) -> dict[str | None, list[int]]:
    """``--shape`` values: ``1,3,224,224`` (key None) or ``NAME=1,128``."""
    out: dict[str | None, list[int]] = {}
    for value in values:
        name, _, dims = value.rpartition("=")
        try:
            sizes = [int(d) for d in dims.split(",")]
        except ValueError:
            sizes = []
        if not sizes or min(sizes) < 1:
            raise KdxError(
                f"--shape {value!r}: give sizes >= 1 separated by commas, "
                "e.g. --shape 1,3,224,224 or --shape NAME=1,128 (one per input)"
            )
        key = name or None
        if key in out:
            raise KdxError(f"--shape is given twice for {name or 'the input'}; give it once")
        out[key] = sizes
    return out


def _given(facts: dict, given: dict, file: str) -> dict[str, list[int]]:
    names = [i["name"] for i in facts["inputs"]]
    if not names:
        raise KdxError(f"{file} has no inputs to feed (all are initializers); nothing to time")
    if None in given:
        if len(given) > 1 or len(names) != 1:
            raise KdxError(
                f"{file} has {len(names)} inputs ({', '.join(names)}): give one "
                f"--shape NAME=DIMS per input, e.g. --shape {names[0]}=1,128"
            )
        given = {names[0]: given[None]}
    for name in given:
        if name not in names:
            raise KdxError(
                f"--shape names '{name}', which is not an input of {file} (its inputs: {', '.join(names)})"
            )
    return given


def _check_input(value: dict, file: str) -> None:
    if value["dtype"] not in _KINDS:
        raise KdxError(
            f"input '{value['name']}' of {file} is {value['dtype']}: kdexport generates only "
            "numeric and bool tensors; time or package this model with its runtime's own tools"
        )


def _batch_name(facts: dict):
    """The name of the batch axis (None for an unnamed one), or False when there is none."""
    for value in facts["inputs"]:
        if value["shape"] and not isinstance(value["shape"][0], int):
            return value["shape"][0]
    return False


def _is_batch(dim, axis: int, batch_name) -> bool:
    """Axis 0 when the batch axis is unnamed; every axis of its name when it is named."""
    if batch_name is False or isinstance(dim, int):
        return False
    return dim == batch_name and (axis == 0 or dim is not None)


def _example(value: dict, single: bool, batch_name) -> str:
    dims = ",".join(
        "1" if _is_batch(d, axis, batch_name) else str(d or "?")
        for axis, d in enumerate(value["shape"])
    )
    return f"--shape {dims}" if single else f"--shape {value['name']}={dims}"


def resolve(facts: dict, given: dict, file: str) -> Inputs:
    """Each input's dtype and shape, from the model and ``--shape`` (see the module docstring)."""
    given = _given(facts, given, file)
    batch_name = _batch_name(facts)
    named: dict = {}  # symbolic axis name -> (size, the input that gave it)
    shape_batch = None
    for value in facts["inputs"]:
        _check_input(value, file)
        if value["name"] not in given:
            continue
        dims, model_dims = given[value["name"]], value["shape"]
        if len(dims) != len(model_dims):
            raise KdxError(
                f"--shape has {len(dims)} dims but input '{value['name']}' has {len(model_dims)}"
            )
        for axis, (size, dim) in enumerate(zip(dims, model_dims, strict=True)):
            if isinstance(dim, int) and size != dim:
                raise KdxError(
                    f"--shape gives input '{value['name']}' axis {axis} = {size} but {file} fixes it at {dim}"
                )
            if _is_batch(dim, axis, batch_name):
                if shape_batch not in (None, size):
                    raise KdxError(
                        f"--shape gives the batch axis {shape_batch} and {size}; give one size"
                    )
                shape_batch = size
            elif isinstance(dim, str):
                if named.get(dim, (size,))[0] != size:
                    raise KdxError(
                        f"--shape gives axis '{dim}' {named[dim][0]} and {size}; give one size"
                    )
                named[dim] = (size, value["name"])
    shapes = {}
    single = len(facts["inputs"]) == 1
    for value in facts["inputs"]:
        dims = []
        for axis, dim in enumerate(value["shape"]):
            if _is_batch(dim, axis, batch_name):
                dims.append(BATCH)
            elif isinstance(dim, int):
                dims.append(dim)
            elif value["name"] in given:
                dims.append(given[value["name"]][axis])
            elif dim in named:
                dims.append(named[dim][0])
            else:
                raise KdxError(
                    f"input '{value['name']}' has shape {value['shape']}: axis {axis} "
                    f"('{dim or '?'}') is symbolic; give the full shape, e.g. "
                    f"{_example(value, single, batch_name)} with a number for each name"
                )
        shapes[value["name"]] = dims
    dtypes = {v["name"]: v["dtype"] for v in facts["inputs"]}
    if batch_name is not False:
        return Inputs(dtypes, shapes, None, True, shape_batch)
    firsts = {d[0] if len(d) >= 2 else None for d in shapes.values()}
    fixed = next(iter(firsts)) if len(firsts) == 1 and None not in firsts else None
    return Inputs(dtypes, shapes, fixed or 1, fixed is not None)


INPUT_KEY = "input:"  # io_sample.npz and calibration.npz: a model input's array is "input:NAME"


def save_sample(path, inputs: Feed, **arrays: np.ndarray) -> None:
    """Write named model inputs (and other arrays: labels, outputs) to one .npz."""
    np.savez(path, **{f"{INPUT_KEY}{n}": a for n, a in inputs.items()}, **arrays)


def load_sample(path) -> tuple[Feed, dict[str, np.ndarray]]:
    """(the named inputs, the other arrays) of a file ``save_sample`` wrote."""
    with np.load(path) as f:
        inputs = {k[len(INPUT_KEY) :]: f[k] for k in f.files if k.startswith(INPUT_KEY)}
        return inputs, {k: f[k] for k in f.files if not k.startswith(INPUT_KEY)}


def for_model(inputs: Feed, names: list[str], count: int | None = None) -> Feed:
    """The inputs one model takes, by its input names (the first ``count`` samples)."""
    missing = [n for n in names if n not in inputs]
    if missing:
        raise KdxError(f"no sample for model inputs {missing}; export the run again")
    return {n: inputs[n][:count] for n in names}
