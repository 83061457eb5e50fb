"""``tregpd hypotheses``: refit a model structure under each SAT0261 regimen hypothesis and report how much the
conclusions move (see :mod:`tregpd.fitting.regimen_hypotheses`).

Writes into ``--out`` (default ``out/hypotheses``), each file atomically:

* ``hypotheses.csv``: one row per hypothesis (fit, SAT0261 predictions, conclusion quantities, fitted values);
* ``hypotheses.md``: the hypotheses, the per-hypothesis table, the min-max range of each conclusion quantity
  and the best-fitting hypothesis;
* ``provenance.json``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("hypotheses", help="SAT0261 regimen uncertainty: fit under each regimen hypothesis",
                       description="Refit a model structure to the calibration dataset under each stated "
                                   "hypothesis about the SAT0261 regimen (course spacing, sampling phase) and "
                                   "report how much the conclusions move.")
    p.add_argument("--out", type=Path, default=Path("out/hypotheses"), help="output folder")
    from tregpd.model.models_cli import add_model_option
    add_model_option(p)
    p.add_argument("--only", nargs="+", default=None, metavar="NAME", help="fit only these hypotheses")
    p.add_argument("--max-nfev", type=int, default=400, help="evaluation budget per fit (default 400)")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tregpd.io import atomic_write_frame, atomic_write_json, atomic_write_text, model_record, provenance
    from tregpd.model.structures import get_model

    from .regimen_hypotheses import conclusion_ranges, fit_under_hypotheses, get_hypotheses, summary_markdown

    structure = get_model(getattr(args, "model", None))  # unknown names fail before any fitting
    hyps = get_hypotheses(args.only)
    if args.max_nfev < 1 or args.workers < 1:
        from .joint import JointFitError
        raise JointFitError("--max-nfev and --workers must be >= 1")
    t0 = time.perf_counter()

    def progress(row):
        print(f"  {row['hypothesis']:<16} chi2 {row['chi2']:8.2f}  combo Treg {row['combo_treg_fold']:.3g}x  "
              f"ratio {row['combo_ratio_fold']:.3g}x  ({row['seconds']:.0f} s)", flush=True)

    print(f"tregpd hypotheses: {len(hyps)} regimen hypotheses, model {structure.name}", flush=True)
    table = fit_under_hypotheses(structure.name, hyps, max_nfev=args.max_nfev, workers=args.workers,
                                 progress=progress)
    seconds = time.perf_counter() - t0
    md = summary_markdown(table, structure.name, seconds=seconds)
    prov = provenance(None, None, None, command="tregpd hypotheses", model=model_record(structure), hypotheses=[h.name for h in hyps],
                      max_nfev=args.max_nfev, seconds=round(seconds, 1),
                      best=str(table.loc[table["chi2"].idxmin(), "hypothesis"]),
                      ranges=conclusion_ranges(table).to_dict(orient="records"))
    out = Path(args.out)
    files = {"table": atomic_write_frame(out / "hypotheses.csv", table),
             "report": atomic_write_text(out / "hypotheses.md", md + "\n")}
    prov["files"] = {k: str(v) for k, v in files.items()}
    atomic_write_json(out / "provenance.json", prov)
    print(f"wrote {out}/hypotheses.csv, hypotheses.md, provenance.json ({seconds:.0f} s)")
    return 0
