"""What a preemption costs: a SIGTERM inside an epoch, the save it makes, and the restart.

Trains on a real folder of files (``../shared/datasets/brain-tumor-mri.tar``, 224 px JPEGs,
the file pipeline) and, after ``--after`` seconds of training, sends the run a SIGTERM as a
scheduler or spot machine would. It records how long the run took to save inside the
epoch and exit, the size of ``state.safetensors``, then how long ``vitrain train --resume``
takes from its start to the log line ``resuming ... at step ...`` (printed once the data is
listed and the model and state are loaded, just before the first step), and how long the
saves that ``--save-every`` makes inside the epoch hold up the steps (the run logs each)::

    python benchmarks/preemption.py                         # writes runs/bench/preemption.json
    python benchmarks/preemption.py --model vit-ti16 --after 60

Each figure is one measurement on the machine it runs on; the JSON records the CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared" / "datasets" / "brain-tumor-mri.tar"


def cpu() -> str:
    """The CPU model and the flags that decide bf16 and vector width."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", info)
    flags = set(re.search(r"flags\s*:\s*(.*)", info)[1].split()) if "flags" in info else set()
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{model[1] if model else platform.processor()} ({', '.join(wanted)})"


def start(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)


def wait_for(proc: subprocess.Popen, pattern: str, timeout: float) -> tuple[float, str]:
    """Read the process's output until a line matches; (seconds it took, the line)."""
    t0, found = time.perf_counter(), re.compile(pattern)
    for line in proc.stdout:
        if found.search(line):
            return time.perf_counter() - t0, line.strip()
        if time.perf_counter() - t0 > timeout:
            break
    raise RuntimeError(f"no line matching {pattern!r} within {timeout} s (exit {proc.poll()})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ARCHIVE), help="a folder or archive of class folders")
    parser.add_argument("--model", default="vit-ti16")
    parser.add_argument("--after", type=float, default=45.0, help="seconds of training before the SIGTERM")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "preemption")
    args = parser.parse_args(argv)
    if not Path(args.data).exists():
        print(f"benchmarks/preemption.py needs {args.data}", file=sys.stderr)
        return 2
    run = args.out / "run"
    base = [sys.executable, "-m", "vitrain", "train", "--no-progress", "--compile", "off"]
    flags = ["--data", args.data, "--model", args.model, "--in-memory", "off", "--epochs", "2"]
    flags += ["--save-every", "5steps", "--out", str(run), "--overwrite"]
    first = start([*base, *flags])
    wait_for(first, r"^writing to ", 900)
    time.sleep(args.after)
    sent = time.perf_counter()
    first.send_signal(signal.SIGTERM)
    said, _ = first.communicate(timeout=600)
    stop_seconds = time.perf_counter() - sent
    stopped = re.search(r"stopped by SIGTERM at step (\d+) of epoch (\d+)", said)
    saves = [float(s) for s in re.findall(r"saved the run at step \d+ of epoch \d+ \((\d+\.\d+)s\)", said)]
    state_bytes = (run / "state.safetensors").stat().st_size
    resumed = start([*base, "--resume", str(run)])
    restart_seconds, line = wait_for(resumed, r"^resuming .* at step ", 900)
    resumed.send_signal(signal.SIGTERM)
    resumed.communicate(timeout=600)
    result = {
        "command": " ".join(["python", "benchmarks/preemption.py", *(argv if argv is not None else sys.argv[1:])]),
        "cpu": cpu(),
        "data": args.data,
        "model": args.model,
        "trained_seconds_before_sigterm": args.after,
        "stopped_at": stopped.group(0) if stopped else None,
        "sigterm_to_exit_seconds": round(stop_seconds, 2),
        "saves_inside_the_epoch_before_it": len(saves),
        "save_seconds": saves,
        "state_bytes": state_bytes,
        "resume_start_seconds": round(restart_seconds, 2),
        "resume_line": line,
        "exit_code": first.returncode,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "preemption.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
