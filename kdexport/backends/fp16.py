"""float32 -> float16 conversion of an ONNX model, by ONNX Runtime's own converter.

``onnxruntime.transformers.float16.convert_float_to_float16`` (it ships in the onnxruntime and
onnxruntime-gpu wheels) turns weights and activations to float16 and leaves the ops in its
default block list in float32. With ``keep_io_types`` the model's inputs and outputs stay
float32 (Cast nodes at both ends), so callers feed and read the same arrays as before. The
converter appends those Cast nodes at the end of the graph; the graph is sorted again so that the
result passes ``onnx.checker``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from kdexport.errors import KdxError
from kdexport.onnxfile import check_onnx_file, external_data_files

_EXTERNAL_OVER = 1_800 * 2**20  # protobuf's 2 GiB limit: larger models keep weights beside them


def convert(
    src: Path, dst: Path, keep_io_types: bool = True, op_block_list: list[str] | None = None
) -> dict:
    """Write the float16 form of ``src`` to ``dst``; return ``dst``'s facts (inputs, outputs...).

    ``op_block_list`` adds op types to keep in float32 to the converter's default list.
    """
    import onnx
    from onnxruntime.transformers import float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(src))  # with its external data, if any
    blocked = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(op_block_list or []))
    # The converter warns about every weight it clamps into float16's range: keep the log quiet.
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = float16.convert_float_to_float16(
                model, keep_io_types=keep_io_types, op_block_list=blocked
            )
    except Exception as e:  # the converter raises ValueError, AssertionError and others
        raise KdxError(
            f"{src.name}: float16 conversion failed ({str(e).splitlines()[0][:200]}); "
            "use an fp32 target or add the failing op to options.fp16_op_block_list"
        ) from None
    OnnxModel(converted).topological_sort()
    big = external_data_files(src) or converted.ByteSize() > _EXTERNAL_OVER
    if big:
        onnx.save(converted, str(dst), save_as_external_data=True, location=f"{dst.name}.data")
    else:
        onnx.save(converted, str(dst))
    return check_onnx_file(dst)
