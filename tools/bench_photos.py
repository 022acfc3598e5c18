"""The natural-image recipe end to end (issue 21): a torchvision ResNet-18 teacher distilled into
timm's MobileNetV3-Small on real photographs, with and without function-matching augmentation.

    .venv-vision/bin/python tools/bench_photos.py [--out DIR] [--seeds 3] [--set K=V ...]

Needs the vision extra (run it in .venv-vision: ``bash tools/test-vision.sh`` makes it). Writes
the offline example (``python -m kdexport.modalities.image.example``: crops of the photographs
scikit-learn and matplotlib ship, 12 classes, 100 each, 112 px), runs ``kdexport distill-and-export
--recipe photos --baseline --seeds N`` (KD with ``crop-flip-jitter``, the teacher on every
augmented batch, against the student trained from scratch with the same augmentation), then
the same student distilled and trained from scratch without augmentation (``kdexport distill
--baseline`` on a copy of the run: the same teacher, its outputs cached). Reads: accuracies and
parameter counts, the speed-up at batch 1 on each fp32 target, parity, INT8, the teacher's
share of the distillation time. Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from run_figures import checks, fp32_targets, int8_students, kdx, model_figures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="work folder (default: a temporary folder)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of KD vs scratch (default 3)")
    ap.add_argument("--set", action="append", default=[], help="a recipe override KEY=VALUE")
    args = ap.parse_args()
    work = (args.out or Path(tempfile.mkdtemp(prefix="bench_photos-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "photos-example").is_dir():
        example = [sys.executable, "-m", "kdexport.modalities.image.example", "photos-example"]
        subprocess.run([*example, "--per-class", "100", "--size", "112"], check=True, cwd=work)
    sets = [a for s in args.set for a in ("--set", s)]
    run, plain = work / "run", work / "run-no-augment"
    seeds = ["--baseline", "--seeds", str(args.seeds)]
    kdx("distill-and-export", "--recipe", "photos", "--out", str(run), *seeds, *sets, cwd=work)
    shutil.rmtree(plain, ignore_errors=True)
    shutil.copytree(run, plain)
    no_aug = ["--set", "distill.augment='none'"]
    kdx("distill", str(plain), *seeds, *sets, *no_aug, cwd=work)

    augmented, without = checks(run, "baseline"), checks(plain, "baseline")
    student = checks(run, "student")
    figures = {
        "teacher": model_figures(run)["teacher"],
        "student": model_figures(run)["student"],
        "targets": fp32_targets(run, "1"),
        "int8": int8_students(run, "1"),
        "teacher_share_of_distill_time": student.get("time_shares"),
        "kd_function_matching": augmented["kd"],
        "scratch_augmented": augmented["scratch"],
        "kd_no_augmentation": without["kd"],
        "scratch_no_augmentation": without["scratch"],
        "kd_minus_scratch": {
            "augmented": augmented["kd_minus_scratch"],
            "no_augmentation": without["kd_minus_scratch"],
        },
        "run": str(run),
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
