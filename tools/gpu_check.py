#!/usr/bin/env python3
"""Every GPU check of kdexport in one run, written as one JSON file.

    OUT=/tmp/out python tools/gpu_check.py      # -> $OUT/gpu_check.json (default ./gpu-check-out)

Runs from the source tree without installing kdexport, and needs only torch, onnx, onnxscript,
onnxruntime(-gpu) and numpy. The checks, each recorded with its figures or its error (a failed
check never stops the run), and the JSON rewritten after each one:

- ``environment``, ``providers``: versions, GPUs, the onnxruntime build in use, and whether each
  GPU target (ort-cuda, ort-cuda-fp16, ort-cuda-graph, ort-tensorrt) can start here, or why not;
- ``distill``: a short train-teacher + distill on the GPU (bf16 autocast) through kdexport's own
  stages, on torch-generated data (10 classes of noisy 8x8 patterns); the student twice, with its
  data in the GPU's memory and in pinned host memory;
- ``export``: teacher and student to ONNX (kdexport.export.export_onnx);
- ``parity``: every GPU target's compiled teacher and student against PyTorch on CUDA (TF32 off)
  on 512 held-out inputs, with the provider that actually ran each model;
- ``latency``: compute-only (inputs bound on the GPU) and end-to-end latency at batch 1 and 64,
  teacher and student interleaved (kdexport.benchmark.time_models), and the student's speed-up;
- ``pytest_gpu``: the tests marked ``gpu``.

``goals`` says whether the GPU targets meet issues 8's and 12's bars. Without a usable CUDA GPU the GPU
checks are skipped with the reason, and the script still exits 0. ``--cpu`` rehearses every check
on the CPU (ort-cpu, torch on the CPU) to test this script where there is no GPU; its figures
say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # kdexport from this source tree, installed or not

import numpy as np

GPU_TARGETS = ["ort-cuda", "ort-cuda-fp16", "ort-cuda-graph", "ort-tensorrt"]
MODELS = {"teacher": "zoo:digits-cnn-large", "student": "zoo:digits-cnn-small"}
GOALS = {  # issues 8 and 12; parity bars are the profiles' own bounds (kdexport.backends.profiles.PARITY)
    "fp32_parity": "ort-cuda",
    "fp16_parity": "ort-cuda-fp16",
    "student_batch1_p50_ms": {"ort-cuda": 0.2, "ort-cuda-graph": 0.035},
}
TIMING = {
    "batch_sizes": [1, 64],
    "warmup_iters": 50,
    "warmup_s": 0.3,
    "min_iters": 200,
    "min_time_s": 1.0,
    "rounds": 5,
    "repeats": 3,
}
QUICK_TIMING = {**TIMING, "warmup_iters": 5, "warmup_s": 0.0, "min_iters": 20, "min_time_s": 0.1}
# The packages tests/conftest.py (the whole pipeline through the CLI) needs beyond the above.
CONFTEST_NEEDS = ("click", "rich", "sklearn", "tomli_w", "matplotlib")


class Report:
    """The JSON being built: each check's figures or error, written out after every check."""

    def __init__(self, path: Path, cpu: bool):
        self.path, self.start = path, time.perf_counter()
        self.data = {"schema": 1, "rehearsal_on_cpu": cpu, "checks": {}, "goals": {}}

    def write(self) -> None:
        self.data["wall_s"] = round(time.perf_counter() - self.start, 1)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True, default=str) + "\n")
        tmp.replace(self.path)

    def check(self, name: str, fn, *args):
        """Run one check and record its figures (``fn`` returns a dict, or a pair: the dict and
        a value for later checks) or its error. Returns the value, or None if it failed."""
        t0 = time.perf_counter()
        print(f"[gpu_check] {name} ...", flush=True)
        try:
            result = fn(*args)
            record, result = result if isinstance(result, tuple) else (result, result)
            entry = {"ok": True, **record}
        except Exception as e:  # every failure is a finding to record, not a reason to stop
            result = None
            tail = traceback.format_exc().strip().splitlines()[-12:]
            entry = {"ok": False, "error": f"{type(e).__name__}: {e}"[:800], "traceback": tail}
        entry["wall_s"] = round(time.perf_counter() - t0, 2)
        self.data["checks"][name] = entry
        print(f"[gpu_check] {name}: {'ok' if entry['ok'] else entry['error']}", flush=True)
        self.write()
        return result

    def skip(self, name: str, reason: str) -> None:
        self.data["checks"][name] = {"ok": None, "skipped": reason}
        print(f"[gpu_check] {name}: skipped ({reason})", flush=True)
        self.write()


def environment() -> dict:
    import torch  # first, as ONNX Runtime advises: its CUDA and cuDNN libraries are then loaded

    # isort: split
    import onnxruntime as ort

    from kdexport.backends import ort as backend
    from kdexport.timing import fingerprint

    cuda = torch.cuda.is_available()
    env = {
        **fingerprint(),
        "python_executable": sys.executable,
        "pythonpath": os.environ.get("PYTHONPATH", ""),
        "torch_cuda": torch.version.cuda,
        "torch_cuda_available": cuda,
        "onnxruntime": ort.__version__,
        "onnxruntime_build": backend.build_in_use(),
        "onnxruntime_file": ort.__file__,
        "onnxruntime_distributions": {k: str(v) for k, v in backend.ort_distributions().items()},
        "available_providers": ort.get_available_providers(),
        "preload_dlls": backend.preload_gpu_libraries(),
    }
    if cuda:
        props = torch.cuda.get_device_properties(0)
        env["torch_device"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
            "count": torch.cuda.device_count(),
            "cudnn": torch.backends.cudnn.version(),
        }
    return env


def providers(names: list[str]) -> dict:
    from kdexport.backends.profiles import load_target

    return {"targets": {n: {"unavailable": load_target(n).unavailable_reason()} for n in names}}


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """10 classes of 8x8 inputs: a fixed smooth pattern per class plus noise (torch-generated)."""
    import torch

    fixed = torch.Generator().manual_seed(1234)
    patterns = torch.nn.functional.avg_pool2d(torch.randn(10, 1, 10, 10, generator=fixed), 3, 1)
    patterns = patterns / patterns.std()
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = patterns[y] + 1.2 * torch.randn(n, 1, 8, 8, generator=g)
    return x.numpy().astype(np.float32), y.numpy().astype(np.int64)


def distill_check(run: Path, device: str, precision: str, epochs: tuple[int, int]) -> dict:
    """train-teacher and distill through kdexport's stages, on ``device`` with autocast; the
    student twice: its data in the GPU's memory, then in pinned host memory (per batch)."""
    import torch

    from kdexport.context import Run
    from kdexport.distill import distill
    from kdexport.teacher import train_teacher

    x, y = synthetic(3000, 0)
    np.savez(run.parent / "synthetic.npz", x=x, y=y)
    data = {"source": str(run.parent / "synthetic.npz"), "seed": 0}
    common = {"device": device, "precision": precision, "batch_size": 64}
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    out = {"device": device, "precision": precision}
    t0 = time.perf_counter()
    art = train_teacher(Run(run, data), model=MODELS["teacher"], epochs=epochs[0], **common)
    out["teacher"] = {"wall_s": time.perf_counter() - t0, **_trained(art)}
    for placement in ("device", "host"):
        t0 = time.perf_counter()
        art = distill(
            Run(run, data),
            student=MODELS["student"],
            epochs=epochs[1],
            data_placement=placement,
            **common,
        )
        history = json.loads((art.path / "history.json").read_text())
        out[f"student_data_{placement}"] = {
            "wall_s": time.perf_counter() - t0,
            "epoch_train_s_median": float(np.median([h["train_s"] for h in history])),
            **_trained(art),
        }
    if device == "cuda":
        out["cuda_peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _trained(art) -> dict:
    keys = ("val_accuracy", "test_accuracy", "epochs_run", "data_placement")
    return {k: art.checks.get(k) for k in keys}


def models(run: Path, trained: bool) -> tuple[dict, dict]:
    """Teacher and student in eval mode on the CPU: the distilled ones, else fresh (seeded)."""
    import torch

    from kdexport.zoo import create_model, load_checkpoint

    nets = {}
    for name, spec in MODELS.items():
        torch.manual_seed(0)
        model = create_model(spec, 10, 1)
        if trained:
            load_checkpoint(model, run / name / "model.pt", spec)
        nets[name] = model.eval()
    weights = "distilled here" if trained else "fresh weights (the distill check failed)"
    return {"weights": weights, "specs": MODELS}, nets


def export_check(nets: dict, work: Path, x: np.ndarray) -> dict:
    import torch

    from kdexport.export import export_onnx

    opts = {"opset": 18, "example_batch": 4, "tolerance": 1e-4, "external_data_mb": 1800}
    out = {}
    for name, net in nets.items():
        facts = export_onnx(
            net, work / f"{name}.onnx", torch.from_numpy(x[:4]), x, opts, {"role": name}
        )
        out[name] = {k: facts[k] for k in ("exporter", "opset", "batch_check_max_abs_diff")}
    return out


def torch_outputs(nets: dict, x: np.ndarray, device: str) -> dict[str, np.ndarray]:
    """PyTorch's float32 logits on ``device``, TF32 off (float32 means float32 here)."""
    import torch

    if device == "cuda":
        for api in (torch.backends.cuda.matmul, torch.backends.cudnn.conv):
            if hasattr(api, "fp32_precision"):
                api.fp32_precision = "ieee"
        if not hasattr(torch.backends.cudnn.conv, "fp32_precision"):
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
    out = {}
    with torch.no_grad():
        for name, net in nets.items():
            model = net.to(device)
            out[name] = model(torch.from_numpy(x).to(device)).float().cpu().numpy()
            net.to("cpu")
    return out


def reference_check(nets: dict, x: np.ndarray, device: str) -> tuple[dict, dict]:
    """PyTorch's outputs on ``device`` (the reference) and on the CPU, and how far apart."""
    ref = {"device": torch_outputs(nets, x, device), "cpu": torch_outputs(nets, x, "cpu")}
    gap = {m: float(np.abs(ref["device"][m] - ref["cpu"][m]).max()) for m in MODELS}
    return {"device": device, "samples": len(x), "max_abs_diff_device_vs_cpu": gap}, ref


def compile_check(target_name: str, work: Path, x: np.ndarray, ref: dict, ref_cpu: dict) -> dict:
    """Compile teacher and student for the target; parity against PyTorch; what ran them."""
    from kdexport.backends import backend
    from kdexport.backends.profiles import load_target
    from kdexport.evaluate import parity

    target = load_target(target_name)
    module = backend(target.backend, target.name)
    folder = work / target.name
    folder.mkdir(exist_ok=True)
    out = {"profile": target.as_dict()}
    for name in MODELS:
        main = module.compile(work / f"{name}.onnx", folder, name, target, None)
        runner = module.load(main, target)
        outputs = runner.run(x)
        on_cpu = runner.info["nodes_by_provider"].get("CPUExecutionProvider", 0)
        out[name] = {
            "file": str(main),
            "parity": parity(
                outputs,
                ref[name],
                target.atol,
                rtol=target.rtol,
                min_agreement=target.min_agreement,
            ),
            "max_abs_diff_vs_torch_cpu": float(np.abs(outputs - ref_cpu[name]).max()),
            "runtime": runner.info,
            "cpu_nodes": on_cpu if runner.info["provider"] != "CPUExecutionProvider" else None,
        }
    return out


def latency_check(target_name: str, compiled: dict, x: np.ndarray, timing: dict) -> dict:
    from kdexport.backends import backend
    from kdexport.backends.profiles import load_target
    from kdexport.benchmark import time_models

    target = load_target(target_name)
    module = backend(target.backend, target.name)
    loaders = {m: (lambda p=Path(compiled[m]["file"]): module.load(p, target)) for m in MODELS}
    timed = time_models(loaders, x, timing)
    out = {"timing": timing}
    for m in MODELS:
        out[m] = {
            size: {
                "compute_p50_ms": st["p50_ms"],
                "compute_p90_ms": st["p90_ms"],
                "end_to_end_p50_ms": st["end_to_end"]["p50_ms"],
                "end_to_end_p90_ms": st["end_to_end"]["p90_ms"],
                "throughput_per_s": st["throughput_per_s"],
                "unstable": st["unstable"],
            }
            for size, st in timed[m]["latency"].items()
        }
        out[m]["provider"] = timed[m]["runtime"]["provider"]
        out[m]["cold_start"] = timed[m]["cold_start"]
    sizes = out["student"].keys() - {"provider", "cold_start"}
    out["speedup"] = {
        s: {
            "compute": out["teacher"][s]["compute_p50_ms"] / out["student"][s]["compute_p50_ms"],
            "end_to_end": out["teacher"][s]["end_to_end_p50_ms"]
            / out["student"][s]["end_to_end_p50_ms"],
        }
        for s in sorted(sizes, key=int)
    }
    return out


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


def pytest_check(out_dir: Path) -> dict:
    """The tests marked gpu, in a child process; without conftest's packages, those of
    tests/test_gpu.py that need no fixture of conftest.py."""
    if not _importable("pytest"):
        raise RuntimeError("pytest is not installed here; the gpu tests were not run")
    args = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "no:cacheprovider", "-rA", "-q"]
    missing = [m for m in CONFTEST_NEEDS if not _importable(m)]
    if missing:  # conftest.py runs the whole pipeline through the CLI: leave those tests out
        args += ["--noconftest", "-k", "not pipeline", "tests/test_gpu.py"]
    else:
        args.append("tests")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    log = done.stdout + done.stderr
    (out_dir / "pytest_gpu.log").write_text(log)
    lines = log.strip().splitlines()
    result = {
        "returncode": done.returncode,
        "summary": lines[-1] if lines else "",
        "left_out": (
            f"tests outside test_gpu.py and the pipeline test (conftest needs {', '.join(missing)})"
            if missing
            else None
        ),
        "results": [ln for ln in lines if ln.startswith(("PASSED", "FAILED", "ERROR", "SKIPPED"))],
    }
    if done.returncode not in (0, 5):
        raise RuntimeError(f"pytest -m gpu failed: {result['summary']} (see pytest_gpu.log)")
    return result


def goals(checks: dict, targets: list[str]) -> dict:
    """The bars, each passed (True/False) or not measured (None) with the reason: parity within
    the profile's bound (|a - b| <= atol + rtol·|b|, top-1 agreement), the student's batch-1
    compute p50 per target, and the student faster than the teacher at every batch size."""
    out = {}
    for goal, target in (
        ("fp32_parity", GOALS["fp32_parity"]),
        ("fp16_parity", GOALS["fp16_parity"]),
    ):
        entry = checks.get(f"parity:{target}", {})
        if not entry.get("ok"):
            out[goal] = {"passed": None, "why": f"{target} not measured"}
            continue
        figures = {m: entry[m]["parity"] for m in MODELS}
        keys = (
            "max_abs_diff",
            "frac_out_of_bound",
            "top1_agreement",
            "atol",
            "rtol",
            "min_agreement",
        )
        out[goal] = {
            "passed": all(f["passed"] for f in figures.values()),
            **{m: {k: f.get(k) for k in keys} for m, f in figures.items()},
        }
    for target, bar in GOALS["student_batch1_p50_ms"].items():
        lat = checks.get(f"latency:{target}", {})
        name = f"student_batch1_compute_p50:{target}"
        if lat.get("ok"):
            p50 = lat["student"]["1"]["compute_p50_ms"]
            out[name] = {"passed": p50 <= bar, "p50_ms": p50, "bar_ms": bar}
        else:
            out[name] = {"passed": None, "why": f"{target} latency not measured"}
    faster = {
        t: {s: v["compute"] > 1 for s, v in checks[f"latency:{t}"]["speedup"].items()}
        for t in targets
        if checks.get(f"latency:{t}", {}).get("ok")
    }
    out["student_faster_every_batch"] = {
        "passed": all(all(v.values()) for v in faster.values()) if faster else None,
        "by_target": faster,
    }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="rehearse every check on the CPU")
    parser.add_argument("--quick", action="store_true", help="short timing (figures are rough)")
    parser.add_argument("--no-pytest", action="store_true", help="leave out the gpu tests")
    args = parser.parse_args()
    out_dir = Path(os.environ.get("OUT") or "gpu-check-out").resolve()
    report = Report(out_dir / "gpu_check.json", args.cpu)
    report.data["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report.data["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    try:
        run_checks(report, args, work, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        report.write()
    cuda = report.data.get("cuda", {})
    print(f"[gpu_check] CUDA available: {cuda.get('available')} {cuda.get('reason') or ''}")
    print(f"[gpu_check] goals met: {report.data.get('all_goals_met')}; wrote {report.path}")
    return 0


def _cuda_state(report: Report, ready: dict | None) -> tuple[bool, bool]:
    """Whether ONNX Runtime's CUDA provider and PyTorch's CUDA work here; records why not."""
    ort_why = (
        "the providers check failed"
        if ready is None
        else ready["targets"]["ort-cuda"]["unavailable"]
    )
    try:
        import torch

        torch_why = (
            None if torch.cuda.is_available() else f"PyTorch {torch.__version__} sees no CUDA GPU"
        )
    except ImportError as e:
        torch_why = f"torch cannot be imported: {e}"
    reason = "; ".join(f"{k}: {v}" for k, v in (("ort-cuda", ort_why), ("torch", torch_why)) if v)
    report.data["cuda"] = {
        "available": not reason,
        "reason": reason or None,
        "onnxruntime": ort_why,
        "torch": torch_why,
    }
    return ort_why is None, torch_why is None


def run_checks(report: Report, args, work: Path, out_dir: Path) -> None:
    report.data["python"] = platform.python_version()
    report.check("environment", environment)
    ready = report.check("providers", providers, sorted({"ort-cpu", *GPU_TARGETS}))
    ort_cuda, torch_cuda = _cuda_state(report, ready)
    names = ["ort-cpu"] if args.cpu else GPU_TARGETS
    if args.cpu or ort_cuda or torch_cuda:
        targets = [n for n in names if ready and not ready["targets"][n]["unavailable"]]
        for n in sorted(set(names) - set(targets)):
            why = ready["targets"][n]["unavailable"] if ready else "the providers check failed"
            report.skip(f"parity:{n}", why)
        gpu_checks(report, args, work, "cuda" if torch_cuda and not args.cpu else "cpu", targets)
    else:
        for name in ("distill", "export", "parity", "latency"):
            report.skip(name, "no usable CUDA here (cuda.reason says why)")
    if args.no_pytest:
        report.skip("pytest_gpu", "--no-pytest")
    else:
        report.check("pytest_gpu", pytest_check, out_dir)
    report.data["goals"] = goals(report.data["checks"], names)
    met = [g["passed"] for g in report.data["goals"].values()]
    report.data["all_goals_met"] = None if None in met else all(met)


def gpu_checks(report: Report, args, work: Path, device: str, targets: list[str]) -> None:
    precision = "bf16" if device == "cuda" else "fp32"
    epochs = (2, 2) if args.quick else (6, 10)
    run, trained = work / "run", False
    if device == "cuda" or args.cpu:
        trained = report.check("distill", distill_check, run, device, precision, epochs) is not None
    else:
        report.skip(
            "distill", "PyTorch sees no CUDA GPU (cuda.torch); the models keep fresh weights"
        )
    x, _ = synthetic(512, 99)  # held-out inputs
    nets = report.check("models", models, run, trained)
    if nets is None or report.check("export", export_check, nets, work, x[:64]) is None:
        return
    ref = report.check("reference", reference_check, nets, x, device)
    if ref is None:
        return
    timing = QUICK_TIMING if args.quick or args.cpu else TIMING
    for name in targets:
        compiled = report.check(
            f"parity:{name}", compile_check, name, work, x, ref["device"], ref["cpu"]
        )
        if compiled and name == "ort-tensorrt":  # every fresh session builds its engines again
            report.skip(f"latency:{name}", "TensorRT rebuilds its engines per session: parity only")
        elif compiled:
            report.check(f"latency:{name}", latency_check, name, compiled, x, timing)


if __name__ == "__main__":
    sys.exit(main())
