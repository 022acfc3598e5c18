"""The CUDA target on a real GPU (skipped where CUDAExecutionProvider cannot start)."""

import pytest

from kdexport.compile import compile


@pytest.mark.gpu
def test_ort_cuda_compiles_with_parity_on_the_gpu(run_copy):
    art = compile(run_copy, targets=["ort-cuda"], skip_unavailable=False)
    result = art.checks["targets"]["ort-cuda"]
    for model in ("teacher", "student"):
        assert result[model]["runtime"]["providers"][0] == "CUDAExecutionProvider"
        assert result[model]["parity"]["passed"]


def test_cuda_unavailable_is_one_clear_reason():
    from kdexport.targets import load_target

    reason = load_target("ort-cuda").unavailable_reason()
    if reason is not None:
        assert "CUDAExecutionProvider" in reason or "onnxruntime-gpu" in reason
