"""Wall and CPU time of the quick-look commands (issue 13): ``tregpd --help``, an argument error, a warm
single-patient ``tregpd simulate`` and ``tregpd scenarios run --library --population 5`` (with and without
figures).

    python benchmarks/quicklook.py [--tregpd PATH] [--repeat N] [--library-repeat M] [--out DIR]

``--tregpd`` defaults to the ``tregpd`` next to this interpreter; point it at another installation (e.g. a fresh
venv with the built wheel) to compare. The first run of each command is discarded (it fills the numba cache on a
fresh install; its time is printed as "first"). CPU time is user + sys of the command and its children, which is
what a busy machine cannot hide: on a shared machine compare CPU times, and wall times only from quiet runs.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(cmd, cwd) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 2):
        raise SystemExit(f"{' '.join(map(str, cmd))} failed with {proc.returncode}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tregpd", default=str(Path(sys.executable).with_name("tregpd")))
    ap.add_argument("--repeat", type=int, default=5, help="runs of the quick commands (default 5)")
    ap.add_argument("--library-repeat", type=int, default=2, help="runs of the library commands (default 2)")
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args(argv)
    work = Path(args.out or tempfile.mkdtemp(prefix="tregpd-quicklook-"))
    work.mkdir(parents=True, exist_ok=True)
    t = args.tregpd
    cases = [
        ("tregpd --help", [t, "--help"], args.repeat),
        ("argument error", [t, "simulate", "--no-such-flag"], args.repeat),
        ("simulate (1 patient, 24 wk)", [t, "simulate", "--out", "sim"], args.repeat),
        ("library x5, --no-figures", [t, "scenarios", "run", "--library", "--population", "5", "--no-progress",
                                      "--no-figures", "--out", "lib_nofig"], args.library_repeat),
        ("library x5, figures", [t, "scenarios", "run", "--library", "--population", "5", "--no-progress",
                                 "--out", "lib"], args.library_repeat),
    ]
    print(f"tregpd: {t}; cpus: {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'command':32s} {'first wall':>10s} {'wall min':>9s} {'wall med':>9s} {'cpu min':>8s} {'cpu med':>8s}")
    for label, cmd, n in cases:
        first = timed(cmd, work)
        runs = [timed(cmd, work) for _ in range(max(1, n))]
        walls, cpus = [r[0] for r in runs], [r[1] for r in runs]
        print(f"{label:32s} {first[0]:10.2f} {min(walls):9.2f} {statistics.median(walls):9.2f} "
              f"{min(cpus):8.2f} {statistics.median(cpus):8.2f}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
