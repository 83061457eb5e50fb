"""``tregpd calibrate``: joint fit of every model structure to the calibration dataset, model comparison,
the chosen structure's profiles, and a calibrated parameter file.

Writes into ``--out`` (default ``out/calibration``):

* ``model_comparison.csv`` / ``.md``: every structure fitted to the same rows (AIC, BIC, chi-square of the
  numbers and of the soft facts, free parameters), ranked by AIC, with the choice explained;
* ``fit_report.txt``: lmfit's report of the chosen structure (values, standard errors, correlations);
* ``residuals.csv``: every calibration row and fact at the fitted values;
* ``profiles.csv`` and ``profiles.png``: profile likelihood of each free parameter (Δchi2 against the
  best fit; the 95 % threshold 3.84); a parameter whose profile stays below 3.84 at a bound is "bounded only";
* ``calibrated_parameters.toml``: the parameter file with the fitted values, each entry's ``role``
  (``calibrated``, ``bounded`` or ``prior``) and the studies that calibrate it;
* ``report.md`` and ``provenance.json``.

The choice rule: the structure with the lowest AIC; when a simpler structure (fewer free parameters) is within
ΔAIC 2 of it, the simpler one is chosen (the evidence does not demand the extra mechanism).
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import replace
from pathlib import Path


#: structures compared by default (every bundled one)
DEFAULT_COMPARISON = ("sat0261_v1", "v1_gc_off", "v1_gc_all", "v1_rapa_th17", "v1_il2_consumption", "v1_waning",
                      "v2", "v2_lean")


def register(sub) -> None:
    p = sub.add_parser("calibrate", help="joint fit of the model structures to all public evidence; comparison",
                       description="Fit every model structure to the calibration dataset (fitting/data/"
                                   "calibration.csv), compare them by AIC/BIC, profile the chosen one and write "
                                   "a calibrated parameter file.")
    p.add_argument("--out", type=Path, default=Path("out/calibration"), help="output folder")
    p.add_argument("--models", nargs="+", default=None, help="structures to compare (default: all bundled)")
    p.add_argument("--no-profiles", action="store_true", help="skip the profile likelihoods")
    p.add_argument("--profile-points", type=int, default=5, help="grid points per profile (default 5)")
    p.add_argument("--workers", type=int, default=2, help="processes for the profiles (default 2)")
    p.add_argument("--population", type=int, default=0,
                   help="also refit the chosen structure in population mode with this many virtual patients per "
                        "study (common random numbers; default 0 = typical mode only)")
    p.set_defaults(func=run)


def choose(fits: list) -> "StructureFit":  # noqa: F821
    """Lowest AIC, unless a structure with fewer free parameters is within DELTA_AIC_SIMPLER of it."""
    from .joint import DELTA_AIC_SIMPLER
    best = min(fits, key=lambda f: f.aic)
    simpler = [f for f in fits if f.n_free < best.n_free and f.aic - best.aic <= DELTA_AIC_SIMPLER]
    return min(simpler, key=lambda f: (f.n_free, f.aic)) if simpler else best


def _profile_job(args):
    from .joint import JointProblem, fit_structure, profile
    model, values, name, n_points = args
    prob = JointProblem(model)
    fit = fit_structure(prob, start=values, max_nfev=60)
    return profile(fit, name, n_points=n_points, max_nfev=60)


def profiles(fit, n_points: int = 5, workers: int = 2):
    import pandas as pd
    from tregpd.scenarios.backends import process_pool
    from .joint import profile
    names = list(fit.problem.parameter_names)
    jobs = [(fit.problem.model, fit.values, n, n_points) for n in names]
    if workers > 1:
        with process_pool(max_workers=min(workers, len(jobs))) as ex:  # workers reaped on error/interrupt
            frames = list(ex.map(_profile_job, jobs))
    else:
        frames = [profile(fit, n, n_points=n_points, max_nfev=60) for n in names]
    out = pd.concat(frames, ignore_index=True)
    # Δchi2 against the best fit found anywhere (a profile point may improve on the optimum)
    out["delta_chi2"] = out["chi2"] - min(out["chi2"].min(), fit.chi2)
    return out


def classify(prof, name: str, lower: float, upper: float) -> str:
    """'identified' (Δchi2 > 3.84 on both sides), 'bounded' (one side only) or 'not identified'."""
    import numpy as np
    from .optimise import DELTA_CHI2_95
    d = prof[prof["parameter"] == name].sort_values("value")
    if d.empty:
        return "not profiled"
    i = int(np.argmin(d["delta_chi2"].to_numpy()))
    left = d["delta_chi2"].to_numpy()[:i + 1].max() > DELTA_CHI2_95
    right = d["delta_chi2"].to_numpy()[i:].max() > DELTA_CHI2_95
    return "identified" if (left and right) else ("bounded" if (left or right) else "not identified")


def studies_of(problem) -> str:
    return ", ".join(dict.fromkeys(list(problem.rows["study"]) + list(problem.checks["study"])))


def calibrated_parameter_set(fit, roles: dict[str, str]):
    """The parameter file of the chosen structure: fitted values with role and calibrating studies."""
    ps = fit.problem.parameter_set(fit.values)
    studies = studies_of(fit.problem)
    params = dict(ps.parameters)
    for n, p in params.items():
        if n in fit.problem.free:
            role = "calibrated" if roles.get(n) == "identified" else "bounded"
            src = p.source.split(" | CALIBRATED")[0].split(" | BOUNDED")[0]
            tag = "CALIBRATED" if role == "calibrated" else "BOUNDED ONLY"
            params[n] = replace(p, fitted=True, role=role,
                                source=f"{src} | {tag} by the joint fit ({fit.problem.model}, typical mode, "
                                       f"profile: {roles.get(n, 'not profiled')}) to: {studies}")
        elif roles.get(n, "").startswith("prior"):
            params[n] = replace(p, fitted=False, role="prior",
                                source=p.source + " | profile flat in the joint fit: NOT IDENTIFIED by the "
                                                  "calibration dataset, fixed at this prior")
        else:
            params[n] = replace(p, fitted=False, role="prior")
    return replace(ps, parameters=params, name=f"calibrated {fit.problem.model}",
                   description=f"joint calibration to {len(fit.problem.rows)} numbers and "
                               f"{len(fit.problem.checks)} facts; potency_chinese_rhil2 = "
                               f"{fit.values.get('potency_chinese_rhil2', 1.0):.3g} (a dose multiplier, not a "
                               f"model parameter)")


def _plot_profiles(prof, path):
    from .optimise import DELTA_CHI2_95
    from tregpd.io import atomic_save_figure
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    names = list(dict.fromkeys(prof["parameter"]))
    ncol = 3
    nrow = math.ceil(len(names) / ncol)
    fig = Figure(figsize=(4 * ncol, 2.8 * nrow), layout="constrained")
    for k, n in enumerate(names):
        ax = fig.add_subplot(nrow, ncol, k + 1)
        d = prof[prof["parameter"] == n].sort_values("value")
        ax.plot(d["value"], d["delta_chi2"], "o-")
        ax.axhline(DELTA_CHI2_95, color="grey", ls="--", lw=0.8)
        if (d["value"] > 0).all():
            ax.set_xscale("log")
        ax.set_title(n, fontsize=9)
        ax.set_ylabel("Δχ² (profile)")
    return atomic_save_figure(path, fig)


def run_calibration(out: Path, models=None, do_profiles: bool = True, n_points: int = 5, workers: int = 2,
                    progress=print, population: int = 0) -> dict:
    import pandas as pd
    from tregpd.io import atomic_write_frame, atomic_write_json, atomic_write_text, provenance
    from .joint import DELTA_AIC_SIMPLER, JointProblem, compare_structures, fit_structure, fit_summary, \
        residual_table
    t0 = time.perf_counter()
    models = list(models or DEFAULT_COMPARISON)
    fits, table = compare_structures(models, progress=lambda f: progress(
        f"   {f.problem.model}: chi2 {f.chi2:.2f} ({f.n_free} free, {f.seconds:.1f} s)"))
    chosen = choose(fits)
    best_aic = min(fits, key=lambda f: f.aic)
    table["chosen"] = table["model"] == chosen.problem.model
    files = {}
    files["comparison"] = atomic_write_frame(out / "model_comparison.csv", table)
    prof = None
    roles: dict[str, str] = {}
    if do_profiles:
        progress(f"   profiles of {chosen.n_free} parameters of {chosen.problem.model}")
        prof = profiles(chosen, n_points=n_points, workers=workers)
        for n in chosen.problem.parameter_names:
            lo, hi = chosen.problem.lmfit_parameters()[n].min, chosen.problem.lmfit_parameters()[n].max
            roles[n] = classify(prof, n, lo, hi)
        files["profiles"] = atomic_write_frame(out / "profiles.csv", prof)
        files["profiles_png"] = _plot_profiles(prof, out / "profiles.png")
    unidentified = [n for n, r in roles.items() if r == "not identified" and n in chosen.problem.free]
    if unidentified:
        # the data cannot identify these: fix them at their sourced priors and refit the rest
        progress(f"   not identified, fixed at priors and refitted: {', '.join(unidentified)}")
        prob = JointProblem(chosen.problem.model, free=[n for n in chosen.problem.free if n not in unidentified])
        chosen = fit_structure(prob, start=chosen.values)
        for n in unidentified:
            roles[n] = "prior (not identified)"
    res = residual_table(chosen)
    files["residuals"] = atomic_write_frame(out / "residuals.csv", res)
    pop_fit = None
    if population:
        progress(f"   population mode: {population} virtual patients per study, starting from the typical fit")
        pprob = JointProblem(chosen.problem.model, free=chosen.problem.free, mode="population",
                             n_population=population)
        pop_fit = fit_structure(pprob, start=chosen.values, max_nfev=80)
        files["fit_report_population"] = atomic_write_text(out / "fit_report_population.txt",
                                                           fit_summary(pop_fit) + "\n")
    files["fit_report"] = atomic_write_text(out / "fit_report.txt", fit_summary(chosen) + "\n")
    ps = calibrated_parameter_set(chosen, roles)
    files["parameters"] = atomic_write_text(out / "calibrated_parameters.toml", ps.to_toml())
    why = (f"`{chosen.problem.model}` has the lowest AIC" if chosen.problem.model == best_aic.problem.model else
           f"`{chosen.problem.model}` is within ΔAIC {DELTA_AIC_SIMPLER:g} of the lowest-AIC structure "
           f"`{best_aic.problem.model}` with fewer free parameters, so the evidence does not demand the extra "
           "mechanism")
    md = ["# Joint calibration and model comparison", "",
          f"{len(chosen.problem.rows)} numbers and {len(chosen.problem.checks)} qualitative facts (soft "
          "constraints) from the calibration dataset; every structure fitted to the same rows (typical "
          "patient).", "",
          _md(table.drop(columns=["hypotheses"])), "",
          f"**Chosen: `{chosen.problem.model}`.** {why}. Hypotheses: "
          + "; ".join(chosen.problem.structure.hypotheses) + ".", "",
          "## Fitted values", "",
          _md(pd.DataFrame([{"parameter": n, "value": v, "profile": roles.get(n, "not profiled")}
                            for n, v in chosen.values.items()]
                           + [{"parameter": n, "value": chosen.problem.base.value(n), "profile": r}
                              for n, r in roles.items() if r.startswith("prior")])), "",
          "Residuals: `residuals.csv`; lmfit report: `fit_report.txt`; calibrated parameter file: "
          "`calibrated_parameters.toml`.", ""]
    if pop_fit is not None:
        md += ["## Population mode", "",
               f"The chosen structure refitted with {population} virtual patients per study (fixed seed; the "
               "prediction of a row is the statistic the study reports): chi2 numbers "
               f"{pop_fit.chi2_gauss:.2f} (typical {chosen.chi2_gauss:.2f}), facts {pop_fit.chi2_hinge:.2f} "
               f"(typical {chosen.chi2_hinge:.2f}). The calibrated parameter file keeps the typical-mode values.",
               "",
               _md(pd.DataFrame([{"parameter": n, "typical": chosen.values[n], "population": pop_fit.values[n]}
                                 for n in chosen.values])), ""]
    files["report"] = atomic_write_text(out / "report.md", "\n".join(md))
    prov = provenance(ps, None, None, command="tregpd calibrate", chosen=chosen.problem.model,
                      values=chosen.values, runtime_s=time.perf_counter() - t0)
    files["provenance"] = atomic_write_json(out / "provenance.json", prov)
    return {"files": files, "chosen": chosen, "fits": fits, "table": table, "profiles": prof, "population": pop_fit,
            "parameters": ps, "markdown": "\n".join(md), "runtime_s": time.perf_counter() - t0}


def _md(frame) -> str:
    cols = list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in frame.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from tregpd.errors import TregpdError
    if args.profile_points < 3:
        raise TregpdError(f"--profile-points must be >= 3, got {args.profile_points}")
    if not 1 <= args.workers <= 8:
        raise TregpdError(f"--workers must be in 1..8, got {args.workers}")
    if args.population < 0 or args.population == 1:
        raise TregpdError(f"--population must be 0 or >= 2, got {args.population}")
    r = run_calibration(Path(args.out), args.models, not args.no_profiles, args.profile_points, args.workers,
                        population=args.population)
    print(r["markdown"])
    for p in r["files"].values():
        print(f"wrote {p}")
    return 0


def bundle(calibrated: Path, bundled: Path, free_in_cohort_fit: tuple[str, ...] = ()) -> list[str]:
    """Copy the calibrated values, roles and sources into the bundled parameter file (a maintainer step:
    ``python -c "from tregpd.fitting.calibrate import bundle; ..."``), keeping its comments and order.

    ``fitted`` in the bundled file keeps its meaning, "free in the cohort fit of ``tregpd fit``": it is set
    true for ``free_in_cohort_fit`` and false elsewhere. Returns the names changed.
    """
    import re
    from tregpd.model.parameters import load_parameters
    from tregpd.safeio import load_toml
    cal = load_parameters(calibrated)
    text = Path(bundled).read_text()
    raw = load_toml(text, str(bundled))
    changed = []

    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    for name, entry in raw.items():
        if name == "meta" or name not in cal.parameters:
            continue
        p = cal[name]
        block = re.search(rf"(?ms)^\[{re.escape(name)}\]\n(.*?)(?=^\[|\Z)", text)
        body = block.group(1)
        new = re.sub(r"(?m)^value = .*$", f"value = {p.value!r}", body)
        new = re.sub(r"(?m)^fitted = .*$", f"fitted = {'true' if name in free_in_cohort_fit else 'false'}", new)
        new = re.sub(r"(?m)^role = .*\n", "", new)
        new = re.sub(r"(?m)^source = .*$", lambda m: f"source = {q(p.source)}", new)
        if p.role != "prior":
            new = new.replace("\nsource = ", f"\nrole = {q(p.role)}\nsource = ", 1)
        if p.role == "prior" and "NOT IDENTIFIED" in p.source and "NOT IDENTIFIED" not in entry.get("source", ""):
            pass
        if new != body:
            text = text[:block.start(1)] + new + text[block.end(1):]
            changed.append(name)
    from tregpd.io import atomic_write_text
    atomic_write_text(bundled, text)
    return changed
