"""Build the tidy calibration dataset ``fitting/data/calibration.csv`` from ``../shared/evidence/evidence.csv``.

Run from the repository root (the default evidence path is relative to it)::

    python -m tregpd.fitting.build_calibration [EVIDENCE_CSV] [--out fitting/data/calibration.csv]

Every data row of the evidence file (numbered 1..N in file order, header excluded; column ``evidence_rows``)
either contributes to one or more calibration rows or is listed in :data:`EXCLUSIONS` with a reason; the build
fails if a row is neither or both, or if a row's study/observable no longer matches what this script expects
(so an edited evidence file cannot be mapped silently onto the wrong numbers). Values are read from the
evidence file; only the mapping choices below are written here.

Output columns
--------------
id
    ``<study_slug>-<k>``, unique.
study, study_slug, evidence_rows
    Study label, a file-name-safe slug of the label's part before " (" (one validation figure per slug) and
    the evidence rows used
    (``;``-separated, 1-based).
regimen_id
    Key into ``fitting/data/calibration_regimens.toml`` (doses, BSA, product, duration, assumptions).
disease, n, baseline
    Population/context: disease as reported, number of patients, reported baseline Treg/Th17 (text) if any.
day, day_end, time_summary, day_reported
    Days since the first dose. ``time_summary`` is ``point`` (value at ``day``), ``max`` or ``mean`` (per
    patient, over ``[day, day_end]``). ``day_reported`` keeps the evidence file's text.
observable
    Model output: ``treg``, ``th17``, ``ratio`` (Th17/Treg), ``c_il2`` (pM), ``auc_il2`` (pM*day).
mapping
    ``absolute``: the model value in its unit. ``fold_change``: per-patient value divided by the same patient's
    value on day 0 (needs no CD4 count). ``percent_of_cd4``: a reported fold change of Treg **% of CD4**,
    compared with the model's fold change of the Treg **count**; ASSUMPTION: CD4 counts constant over the
    window (the model has no total CD4).
statistic
    How patients are summarised: ``median`` or ``mean`` of the per-patient quantity; ``ratio_of_medians`` /
    ``ratio_of_means``: a fold change computed from two reported medians/means (the model's summary at the
    time divided by its summary on day 0); for qualitative rows the check type (``direction``,
    ``not_significant``, ``lower_bound``, ``peak_window``, ``decline``, ``greater_than``, ``dose_order``).
value, se, se_scale, se_rule
    Observed value on the mapping's scale and its standard error on the fitting scale (``se_scale`` = ``log``:
    the SE of the natural log of the value; all quantitative rows). ``se_rule`` names the rule:

    * ``p_value``: a two-sided P value of a change from baseline: se = |ln(fold)| / z(1 - P/2), z the standard
      normal quantile (SAT0261: P = 0.002, 0.029 at n = 82).
    * ``sd_n``: reported mean and SD at n patients, the delta method on the log scale: SE of ln(mean) =
      (SD/mean)/sqrt(n); for a fold change of two means, sqrt((SD0/m0)^2/n + (SD1/m1)^2/n) (the two visits
      treated as independent, conservative: the within-patient correlation is not reported).
    * ``reported_se_dose``: DILT1D reports the SE of the dose giving +10 %; it is carried to the effect through
      the log-log slope between the two reported dose-effect points (+10 % at 0.101 and +20 % at 0.497
      MIU/m2): se = slope * SE(dose)/dose.
    * ``iqr``: se = IQR/1.35/sqrt(n) relative to the median (none used at present: no usable row reports one).
    * ``range_over_4``: a reported range of individual values: se = ln(high/low)/4 (the between-patient SD,
      not divided by sqrt(n) because the range pools dose levels): a loose check.
    * ``default_verified``: a VERIFIED number without spread: se = 0.15 (about +-15 %).
    * ``default_context_loose``: a VERIFIED number from a setting far from the model's (high-dose PK):
      se = 0.35, a loose check.
    * ``default_recalled``: a RECALLED number without spread: se = 0.35 (confidence medium) or 0.5 (low);
      when the number is a range "a-b" the value is its midpoint and se = max(default, ln(b/a)/2).
      RECALLED rows are loose checks, except the seed study's (values of the founding document).
check, criterion
    Qualitative rows: a JSON object the validator evaluates, and the same in words. ``direction``: the median
    per-patient fold change is > 1 (up) or < 1 (down). ``not_significant``: |ln fold| < ln(1.25) (ASSUMPTION:
    a change under 25 % is what "not significant" at these cohort sizes allows; as the seed fit's soft
    constraint). ``lower_bound``: fold > bound. ``peak_window``: the day of the maximum of the population median
    lies in [lo, hi]. ``decline``: summary in the row's window divided by the summary in the reference window
    < threshold. ``greater_than``: fold of ``observable`` > fold of ``other``. ``dose_order``: folds increase
    along the listed regimens.
weight_class
    ``calibration`` (VERIFIED numbers, and the seed study's), ``loose_check`` (RECALLED numbers, numbers
    duplicating a calibration row, settings far from the model's), ``qualitative``.
status, confidence, product, source, note
    From the evidence file; ``product`` is ``aldesleukin``, ``chinese_rhil2``, ``ilt101`` or ``none``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from pathlib import Path

#: default SEs (log scale) where nothing is reported
SE_DEFAULT_VERIFIED = 0.15
SE_DEFAULT_CONTEXT_LOOSE = 0.35
SE_DEFAULT_RECALLED = {"high": 0.25, "medium": 0.35, "low": 0.5}
#: |ln fold| below which a change counts as "not significant" (ASSUMPTION, see module docstring)
NOT_SIGNIFICANT_LOG = math.log(1.25)
#: 1 IU/mL of aldesleukin = 4 pM (evidence README, derived; = the model's il2_pmol_per_iu 0.004 pmol/IU)
PM_PER_IU_PER_ML = 4.0
#: hours per day
HOURS = 24.0

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_EVIDENCE = REPO_ROOT / ".." / "shared" / "evidence" / "evidence.csv"
DEFAULT_OUT = REPO_ROOT / "fitting" / "data" / "calibration.csv"

COLUMNS = ("id", "study", "study_slug", "evidence_rows", "regimen_id", "disease", "n", "baseline", "day",
           "day_end", "time_summary", "day_reported", "observable", "mapping", "statistic", "value", "se",
           "se_scale", "se_rule", "check", "criterion", "weight_class", "status", "confidence", "product",
           "source", "note")


class BuildError(Exception):
    """The evidence file does not match what the mapping expects."""


# ------------------------------------------------------------------------------------------- helpers
def numbers(text: str) -> list[float]:
    """All numbers in ``text`` (``'~1.5-2'`` -> [1.5, 2.0]; ``'p=0.003'`` -> [0.003])."""
    return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", text)]


def p_value(text: str) -> float:
    """The first ``P=x`` / ``p=x`` in ``text``."""
    m = re.search(r"[Pp]\s*=\s*(0?\.\d+)", text)
    if not m:
        raise BuildError(f"no P value in {text!r}")
    return float(m.group(1))


def z_two_sided(p: float) -> float:
    """Standard-normal quantile z(1 - p/2)."""
    from scipy.stats import norm
    return float(norm.ppf(1.0 - p / 2.0))


def se_from_p(fold: float, p: float) -> float:
    """SE of ln(fold) from a two-sided P value of the change: |ln fold| / z(1 - P/2)."""
    return abs(math.log(fold)) / z_two_sided(p)


def se_log_mean(mean: float, sd: float, n: int) -> float:
    """SE of ln(mean) from mean, SD and n (delta method)."""
    return (sd / mean) / math.sqrt(n)


def se_log_fold_of_means(m0: float, sd0: float, m1: float, sd1: float, n: int) -> float:
    """SE of ln(m1/m0) from two independent means with SDs at n patients (delta method)."""
    return math.sqrt(se_log_mean(m0, sd0, n) ** 2 + se_log_mean(m1, sd1, n) ** 2)


def midpoint(text: str) -> tuple[float, float, float]:
    """(midpoint, low, high) of a recalled 'a-b' range, or (a, a, a) for one number."""
    nums = numbers(text)
    if not nums:
        raise BuildError(f"no number in {text!r}")
    lo, hi = nums[0], nums[1] if len(nums) > 1 else nums[0]
    return 0.5 * (lo + hi), lo, hi


def se_recalled(confidence: str, lo: float | None = None, hi: float | None = None) -> float:
    base = SE_DEFAULT_RECALLED.get(confidence, SE_DEFAULT_RECALLED["low"])
    if lo is not None and hi is not None and lo > 0 and hi > lo:
        base = max(base, math.log(hi / lo) / 2.0)
    return base


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


# ------------------------------------------------------------------------------------------- exclusions
#: evidence row (1-based) -> reason it is not in the dataset
EXCLUSIONS: dict[int, str] = {
    5: "regimen input: SAT0261 prednisone at week 0 (taper start of regimen sat0261)",
    6: "regimen input: SAT0261 prednisone at week 24 (taper end of regimen sat0261)",
    7: "study design (visit weeks 0/6/12/24, demographics); sets the sampling days",
    11: "clinical outcome (SLEDAI, prednisone): no model observable; the prednisone fall motivates the taper of shanxi_rapa_sle",
    12: "healthy reference range: describes the normal population, not a treated study (prior for baselines/IIV)",
    13: "healthy reference range (Treg % of CD4): not a treated study",
    14: "healthy reference range (Th17): not a treated study",
    15: "healthy reference range (Th17 % of CD4): not a treated study",
    16: "healthy reference range (Th17/Treg): not a treated study",
    17: "healthy reference range (CD4): not a treated study; CD4 is not a model state",
    23: "regimen context: He 2016 baseline prednisone (median 30 mg/d, range 0-60); no taper reported",
    26: "clinical outcome (SLEDAI): no model observable",
    27: "clinical outcome (SLEDAI): no model observable",
    28: "clinical outcome (SLEDAI): no model observable",
    29: "clinical outcome (SLEDAI, placebo arm): no model observable",
    30: "clinical outcome (SLEDAI, placebo arm): no model observable",
    31: "clinical outcome (SLEDAI, placebo arm): no model observable",
    32: "regimen input: He 2020 IL-2 arm prednisone at week 0 (taper of regimen peking_he2020)",
    33: "regimen input: He 2020 IL-2 arm prednisone at week 12 (taper of regimen peking_he2020)",
    34: "regimen input: He 2020 IL-2 arm prednisone at week 24 (taper of regimen peking_he2020)",
    35: "placebo-arm prednisone: no drug regimen to simulate (a future taper-only comparator)",
    36: "placebo-arm prednisone: no drug regimen to simulate (a future taper-only comparator)",
    37: "placebo-arm prednisone: no drug regimen to simulate (a future taper-only comparator)",
    39: "case report, clinical outcome (SLEDAI): no Treg number",
    40: "case report, clinical outcome (SLEDAI): no Treg number",
    41: "case report, glucocorticoid dose: no Treg number",
    42: "case report, glucocorticoid dose: no Treg number",
    44: "CD25 MFI on Treg: not a model observable",
    46: "clinical outcome (SRI-4): no model observable",
    52: "CD25 on Treg: not a model observable",
    53: "dose estimate of the DILfrequency optimum: the regimen input of regimen dilfrequency",
    54: "adverse events: not a model observable",
    60: "ex vivo receptor pharmacology (20-fold Treg sensitivity): a prior for the EC50 ratio, not a trial observable",
    66: "NK cells: not a model observable",
    67: "Treg:Tcon fold of the same trial and window as row 65 (Treg count); duplicate under the Tcon-constant mapping",
    68: "absolute Treg:Tcon threshold (response predictor): Tcon is not a model state",
    69: "absolute Treg:Tcon ratio (children, escalated doses): Tcon is not a model state",
    70: "absolute Treg:Tcon ratio (adults, escalated doses): Tcon is not a model state",
    72: "pSTAT5 and homeostasis directions: no pSTAT5/Tcon observable; selectivity priors come from rows 60 and 129",
    73: "Ki67 of Treg (RECALLED shape): no proliferation-marker observable; waning is checked through row 71",
    74: "post-HSCT lymphopenic reconstitution (baseline): Treg change dominated by immune reconstitution",
    75: "post-HSCT lymphopenic reconstitution (end of therapy): Treg change dominated by immune reconstitution",
    78: "clinical outcome (cryoglobulinaemia, vasculitis): no model observable",
    81: "Treg % of CD4 at week 12 without the baseline (cut off in the abstract): no fold change can be formed",
    82: "methylprednisolone 40-80 mg/d (direction): far above the taper doses; the model's glucocorticoid term acts on Th17 only (hypothesis)",
    83: "methylprednisolone pulses (direction): outside the model's glucocorticoid range",
    84: "cross-sectional glucocorticoid comparison, confounded by disease activity: no regimen",
    85: "regimen input of regimen lai2018 (2 mg/day start)",
    87: "clinical outcome (SLEDAI, RECALLED): no model observable",
    88: "clinical outcome (SLEDAI2K): no model observable",
    89: "clinical outcome (prednisolone change): no model observable",
    91: "cross-sectional transplant comparison (sirolimus vs cyclosporine, Treg % of CD4): no within-patient baseline",
    92: "cross-sectional transplant comparison (cyclosporine arm): no within-patient baseline",
    93: "cross-sectional transplant comparison (direction): no within-patient baseline",
    94: "sirolimus PK parameter (Tmax): a prior of the PK parameters, not a simulated PD observable",
    95: "sirolimus PK parameter (half-life): a prior of the PK parameters",
    96: "sirolimus PK parameter (CL/F per kg): a prior of the PK parameters",
    97: "sirolimus PK parameter (Vss/F per kg): a prior of the PK parameters",
    98: "sirolimus blood:plasma ratio: a prior (the model is in whole blood)",
    99: "sirolimus PK parameter (half-life): a prior of the PK parameters",
    100: "sirolimus PK parameter (CL/F per kg): a prior of the PK parameters",
    101: "sirolimus PK parameter (Vss/F per kg): a prior of the PK parameters",
    102: "sirolimus blood:plasma ratio: a prior (the model is in whole blood)",
    103: "sirolimus popPK estimate: a prior of the PK parameters",
    104: "sirolimus popPK estimate (CL/F): source of the model's PK parameters (circular as a check)",
    105: "sirolimus blood:plasma ratio: a prior",
    106: "sirolimus popPK estimate (ka): a prior",
    107: "sirolimus popPK estimate (lag): the model has no absorption lag",
    108: "sirolimus popPK estimate (ka): source of the model's PK parameters (circular as a check)",
    109: "sirolimus popPK estimate (CL/F): source of the model's PK parameters (circular as a check)",
    110: "sirolimus popPK estimate (V2/F): source of the model's PK parameters (circular as a check)",
    111: "sirolimus trough bound in LAM with the dose not reported: no regimen to simulate",
    112: "IL-2 IV bolus concentration in Cetus units: unit conversion to IU uncertain (~6x)",
    113: "IL-2 IV alpha half-life: a PK prior (the model's IL-2 PK is one-compartment)",
    114: "IL-2 IV beta half-life: a PK prior",
    115: "IL-2 IV infusion steady state in Cetus units: unit conversion uncertain",
    116: "IL-2 clearance: a PK prior (source of il2_cl)",
    117: "IL-2 s.c. plateau relative to IV peak: a PK prior",
    118: "IL-2 i.m. bioavailability: a PK prior (source of il2_bioavailability)",
    119: "IL-2 s.c. Tmax range from the label: duplicates the Piscitelli Tmax check (row 123) with less detail",
    120: "IL-2 IV terminal half-life: a PK prior",
    121: "IL-2 IV clearance: a PK prior",
    124: "IL-2 s.c. absorption lag: the model has no lag",
    125: "IL-2 apparent s.c. half-life: a PK prior (absorption-limited)",
    128: "soluble IL-2 receptor threshold: sIL-2R is not a model state (evidence for the missing negative feedback)",
    129: "in vitro pSTAT5 EC50 ratio: a prior for il2_ec50_effector/il2_ec50_treg",
    130: "in vitro target-gene EC50 ratio: a prior",
    131: "absolute pSTAT5 EC50s (RECALLED): a prior",
}


# ------------------------------------------------------------------------------------------- mapping
def _row(ev: list[dict], k: int, study_prefix: str, observable: str) -> dict:
    """Evidence row k (1-based), checked against the expected study prefix and observable."""
    if not 1 <= k <= len(ev):
        raise BuildError(f"evidence row {k} does not exist (file has {len(ev)} data rows)")
    r = ev[k - 1]
    if not r["study"].startswith(study_prefix) or r["observable"] != observable:
        raise BuildError(f"evidence row {k}: expected study starting {study_prefix!r} and observable "
                         f"{observable!r}, got {r['study'][:50]!r} / {r['observable']!r}; update the mapping "
                         "in fitting/build_calibration.py")
    return r


def _criterion(check: dict, observable: str, mapping: str, window: str) -> str:
    q = "fold change" if mapping != "absolute" else "value"
    t = check["type"]
    if t == "direction":
        return f"median {observable} {q} {window} {'> 1' if check['sign'] == 'up' else '< 1'}"
    if t == "not_significant":
        return f"abs(ln(median {observable} {q} {window})) < {check['threshold']:.4g} (= ln 1.25)"
    if t == "lower_bound":
        return f"median {observable} {q} {window} > {check['bound']:g}"
    if t == "peak_window":
        return (f"day of the maximum of the median {observable} {q} {window} within "
                f"[{check['lo']:.4g}, {check['hi']:.4g}]")
    if t == "decline":
        a, b = check["ref_window"]
        return (f"median {observable} {q} {window} / its {check['ref_summary']} over days [{a:g}, {b:g}] "
                f"< {check['threshold']:g}")
    if t == "greater_than":
        return f"median {observable} fold change {window} > median {check['other']} fold change"
    if t == "dose_order":
        return f"median {observable} {q} {window} increases along {', '.join(check['regimens'])}"
    raise BuildError(f"unknown check type {t!r}")


def build(evidence_path: str | Path) -> "pd.DataFrame":  # noqa: F821
    """Read the evidence CSV and return the tidy calibration table (see module docstring)."""
    import pandas as pd
    path = Path(evidence_path)
    if not path.is_file():
        raise BuildError(f"evidence file {str(path)!r} does not exist")
    with open(path, newline="", encoding="utf-8") as fh:
        ev = list(csv.DictReader(fh))
    out: list[dict] = []

    def add(rows, study, regimen_id, observable, mapping, statistic, day, *, value=None, se=None,
            se_rule="", check=None, weight_class=None, day_end=None, time_summary="point", baseline="",
            note_extra="", product=None, status=None, confidence=None):
        first = ev[rows[0] - 1]
        status = status or first["status"]
        confidence = confidence or first["confidence"]
        if weight_class is None:
            weight_class = "qualitative" if check is not None else (
                "calibration" if status == "VERIFIED" else "loose_check")
        window = (f"at day {day:g}" if time_summary == "point" else
                  f"({time_summary} over days [{day:g}, {day_end:g}])")
        rec = {
            "study": study, "study_slug": slug(study.split(" (")[0]), "evidence_rows": ";".join(str(k) for k in rows),
            "regimen_id": regimen_id, "disease": first["disease"], "n": first["n"], "baseline": baseline,
            "day": float(day), "day_end": float(day_end) if day_end is not None else float("nan"),
            "time_summary": time_summary, "day_reported": first["day"], "observable": observable,
            "mapping": mapping, "statistic": statistic if check is None else check["type"],
            "value": value if value is not None else float("nan"),
            "se": se if se is not None else float("nan"), "se_scale": "log" if check is None else "",
            "se_rule": se_rule, "check": json.dumps(check, sort_keys=True) if check is not None else "",
            "criterion": _criterion(check, observable, mapping, window) if check is not None else "",
            "weight_class": weight_class, "status": status, "confidence": confidence,
            "product": product or "", "source": first["source_url"],
            "note": "; ".join(s for s in (first["note"].strip(), note_extra) if s),
        }
        out.append(rec)

    ns = NOT_SIGNIFICANT_LOG
    # -- SAT0261 (seed study; values of the founding document, RECALLED in evidence.csv)
    S = "Jing X et al. EULAR 2017 SAT0261"
    study = "SAT0261 (Shanxi, SLE)"
    r_t0, r_t24 = _row(ev, 1, S, "treg_abs"), _row(ev, 2, S, "treg_abs")
    r_q0, r_q24 = _row(ev, 3, S, "ratio_th17_treg"), _row(ev, 4, S, "ratio_th17_treg")
    base = f"Treg {r_t0['value']} cells/uL, Th17/Treg {r_q0['value']} (medians)"
    seed_note = "seed study: values of the founding document (shared/seed-abstract.md); calibration despite RECALLED"
    se0 = se_recalled(r_t0["confidence"])
    add([1], study, "sat0261", "treg", "absolute", "median", 0, value=float(r_t0["value"]), se=se0,
        se_rule="default_recalled", weight_class="calibration", baseline=base, note_extra=seed_note,
        product="chinese_rhil2")
    fold = float(r_t24["value"]) / float(r_t0["value"])
    add([1, 2], study, "sat0261", "treg", "fold_change", "ratio_of_medians", 168, value=fold,
        se=se_from_p(fold, p_value(r_t24["note"])), se_rule="p_value", weight_class="calibration",
        baseline=base, note_extra=seed_note + f"; P={p_value(r_t24['note'])} at n={r_t24['n']}",
        product="chinese_rhil2")
    add([3], study, "sat0261", "ratio", "absolute", "median", 0, value=float(r_q0["value"]),
        se=se_recalled(r_q0["confidence"]), se_rule="default_recalled", weight_class="calibration",
        baseline=base, note_extra=seed_note, product="chinese_rhil2")
    fold = float(r_q24["value"]) / float(r_q0["value"])
    add([3, 4], study, "sat0261", "ratio", "fold_change", "ratio_of_medians", 168, value=fold,
        se=se_from_p(fold, p_value(r_q24["note"])), se_rule="p_value", weight_class="calibration",
        baseline=base, note_extra=seed_note + f"; P={p_value(r_q24['note'])} at n={r_q24['n']}",
        product="chinese_rhil2")
    add([4], study, "sat0261", "th17", "fold_change", "", 168,
        check={"type": "not_significant", "threshold": ns}, baseline=base,
        note_extra="Th17 absolute 'no significant change' (note of row 4)", product="chinese_rhil2")

    # -- Shanxi rapamycin +/- ATRA in SLE
    S = "PMID 31551029"
    study = "Shanxi rapamycin SLE (PMID 31551029)"
    for k, obs, ev_obs, chk in (
            (8, "th17", "th17_abs", {"type": "direction", "sign": "down"}),
            (9, "ratio", "ratio_th17_treg", {"type": "direction", "sign": "down"}),
            (10, "treg", "treg_abs", {"type": "not_significant", "threshold": ns})):
        r = _row(ev, k, S, ev_obs)
        add([k], study, "shanxi_rapa_sle", obs, "fold_change", "", 168, check=chk, product="none",
            note_extra=f"reported: {r['value']}; checked at week 24 (the time effect spans weeks 6/12/24)")

    # -- Feng 2019 (one Shanxi course, dermatomyositis)
    S = "Feng M et al."
    study = "Feng 2019 (Shanxi course, dermatomyositis)"
    r0, r1, rf = _row(ev, 18, S, "treg_abs"), _row(ev, 19, S, "treg_abs"), _row(ev, 20, S, "treg_fold")
    n = int(r0["n"])
    m0, sd0, m1, sd1 = (float(r0["value"]), float(r0["spread_low"]), float(r1["value"]),
                        float(r1["spread_low"]))
    base = f"Treg {m0:g} +- {sd0:g} cells/uL (mean +- SD)"
    add([18], study, "feng2019", "treg", "absolute", "mean", 0, value=m0, se=se_log_mean(m0, sd0, n),
        se_rule="sd_n", baseline=base, product="chinese_rhil2")
    add([19], study, "feng2019", "treg", "absolute", "mean", 7, value=m1, se=se_log_mean(m1, sd1, n),
        se_rule="sd_n", weight_class="loose_check", baseline=base, product="chinese_rhil2",
        note_extra="same information as the fold-change row (kept as a check, not weighted twice); day 7 ASSUMED")
    add([18, 19, 20], study, "feng2019", "treg", "fold_change", "ratio_of_means", 7, value=float(rf["value"]),
        se=se_log_fold_of_means(m0, sd0, m1, sd1, n), se_rule="sd_n", weight_class="calibration",
        baseline=base, product="chinese_rhil2",
        note_extra="'expanded 2.5 times' (row 20); SE from the means and SDs of rows 18-19; day 7 ASSUMED")

    # -- Shanxi RA and PsA single course (directions)
    r = _row(ev, 21, "Wang J et al.", "treg_abs")
    study = "Wang 2022 (Shanxi course, RA)"
    add([21], study, "shanxi_course", "treg", "fold_change", "", 7, check={"type": "direction", "sign": "up"},
        product="chinese_rhil2", note_extra="day 7 ASSUMED ('after the course')")
    add([21], study, "shanxi_course", "ratio", "fold_change", "", 7, check={"type": "direction", "sign": "down"},
        product="chinese_rhil2", note_extra="'Th17/Treg rebalanced' read as a fall of Th17/Treg; day 7 ASSUMED")
    r = _row(ev, 22, "PsA low-dose IL-2", "treg_abs and th17_abs")
    study = "PsA (Shanxi course)"
    add([22], study, "shanxi_course", "th17", "fold_change", "", 7, check={"type": "direction", "sign": "up"},
        product="chinese_rhil2", note_extra="day 7 ASSUMED")
    add([22], study, "shanxi_course", "treg", "fold_change", "", 7,
        check={"type": "greater_than", "other": "th17"}, product="chinese_rhil2",
        note_extra="'Treg rose much faster than Th17'; day 7 ASSUMED")

    # -- Peking He 2016 / 2020
    S = "He J et al. Nat Med 2016"
    study = "Peking He 2016 (SLE)"
    r = _row(ev, 24, S, "treg_pct_cd4 / tfh / th17")
    add([24], study, "peking_he2016", "treg", "percent_of_cd4", "", 14, day_end=84, time_summary="mean",
        check={"type": "direction", "sign": "up"}, product="chinese_rhil2")
    add([24], study, "peking_he2016", "th17", "fold_change", "", 14, day_end=84, time_summary="mean",
        check={"type": "direction", "sign": "down"}, product="chinese_rhil2",
        note_extra="Th17 reported as % of CD4 (assumed: CD4 constant)")
    r = _row(ev, 25, S, "treg_fold")
    mid, lo, hi = midpoint(r["value"])
    add([25], study, "peking_he2016", "treg", "percent_of_cd4", "median", 14, day_end=84, time_summary="mean",
        value=mid, se=se_recalled(r["confidence"], lo, hi), se_rule="default_recalled",
        product="chinese_rhil2", note_extra=f"recalled range {r['value']} -> midpoint")
    r = _row(ev, 38, "He J et al. Ann Rheum Dis 2020", "sri4_response_pct")
    study = "Peking He 2020 RCT (SLE)"
    add([38], study, "peking_he2020", "treg", "fold_change", "", 14, day_end=84, time_summary="mean",
        check={"type": "direction", "sign": "up"}, product="chinese_rhil2",
        note_extra="'Treg expansion' (qualitative, note of row 38)")

    # -- Charite / LUPIL-2 / TRANSREG / Saadoun (RECALLED magnitudes)
    r = _row(ev, 43, "von Spee-Mayer C et al.", "treg_fold (CD25hi FOXP3+ % of CD4)")
    mid, lo, hi = midpoint(r["value"])
    add([43], "von Spee-Mayer 2016 (Charite, SLE)", "vonspee2016", "treg", "percent_of_cd4", "median", 5,
        day_end=6, time_summary="max", value=mid, se=se_recalled(r["confidence"], lo, hi),
        se_rule="default_recalled", product="aldesleukin")
    r = _row(ev, 45, "Humrich JY et al. Lancet Rheumatol 2019", "treg_fold")
    mid, lo, hi = midpoint(r["value"])
    add([45], "PRO-IMMUN (Charite, SLE)", "charite_proimmun", "treg", "fold_change", "median", 5, value=mid,
        se=se_recalled(r["confidence"], lo, hi), se_rule="default_recalled", product="aldesleukin",
        note_extra="end of the first cycle (day 5)")
    r = _row(ev, 47, "Humrich JY et al. Ann Rheum Dis 2022", "treg_fold")
    parts = r["value"].split(";")
    study = "LUPIL-2 (SLE)"
    mid, lo, hi = midpoint(parts[0])
    add([47], study, "lupil2", "treg", "fold_change", "median", 5, day_end=8, time_summary="max", value=mid,
        se=se_recalled(r["confidence"], lo, hi), se_rule="default_recalled", product="ilt101",
        note_extra="after induction")
    mid, lo, hi = midpoint(parts[1])
    add([47], study, "lupil2", "treg", "fold_change", "median", 28, day_end=84, time_summary="mean", value=mid,
        se=se_recalled(r["confidence"], lo, hi), se_rule="default_recalled", product="ilt101",
        note_extra="sustained by weekly dosing (window ASSUMED weeks 4-12)")
    r0 = _row(ev, 76, "Saadoun D et al.", "treg_pct_cd4 (CD4+CD25hiFoxp3+)")
    r1 = _row(ev, 77, "Saadoun D et al.", "treg_pct_cd4")
    add([76, 77], "Saadoun 2011 (HCV vasculitis)", "saadoun2011", "treg", "percent_of_cd4", "ratio_of_medians",
        68, value=float(r1["value"]) / float(r0["value"]), se=se_recalled(r1["confidence"]),
        se_rule="default_recalled", product="aldesleukin", baseline=f"Treg {r0['value']} % of CD4 (median)",
        note_extra="day 68 (end of the 4th course) ASSUMED")
    r = _row(ev, 79, "Rosenzwajg M et al. Ann Rheum Dis 2019", "treg_fold (relative Treg concentration)")
    study = "TRANSREG (11 autoimmune diseases)"
    mid, lo, hi = midpoint(r["value"])
    add([79], study, "transreg", "treg", "fold_change", "mean", 8, value=mid,
        se=se_recalled(r["confidence"], lo, hi), se_rule="default_recalled", product="ilt101")
    r = _row(ev, 80, "Rosenzwajg M et al. Ann Rheum Dis 2019", "treg_fold during fortnightly maintenance")
    mid, lo, hi = midpoint(r["value"])
    add([80], study, "transreg", "treg", "fold_change", "mean", 15, day_end=183, time_summary="mean", value=mid,
        se=se_recalled(r["confidence"], lo, hi), se_rule="default_recalled", product="ilt101")

    # -- DILT1D single doses
    S = "Todd JA et al."
    study = "DILT1D (single dose, T1D)"
    r10, r20 = _row(ev, 48, S, "dose_for_10pct_treg_increase"), _row(ev, 49, S, "dose_for_20pct_treg_increase")
    d10, d20 = numbers(r10["value"])[0], numbers(r20["value"])[0]
    slope = (math.log(1.20) - math.log(1.10)) / math.log(d20 / d10)
    se10 = slope * float(r10["spread_low"]) / d10
    add([48, 49], study, "dilt1d_0p101", "treg", "percent_of_cd4", "median", 0, day_end=7, time_summary="max",
        value=1.10, se=se10, se_rule="reported_se_dose", product="aldesleukin",
        note_extra=(f"+10 % maximum within 7 days at {d10} MIU/m2; SE(dose) {r10['spread_low']} carried "
                    f"through the log-log slope {slope:.4f} between +10 % at {d10} and +20 % at {d20} MIU/m2"))
    add([49], study, "dilt1d_0p497", "treg", "percent_of_cd4", "median", 0, day_end=7, time_summary="max",
        value=1.20, se=se_recalled(r20["confidence"]), se_rule="default_recalled", product="aldesleukin")
    r = _row(ev, 50, S, "treg_pct_cd4 time course")
    add([50], study, "dilt1d_0p497", "treg", "percent_of_cd4", "", 0, day_end=7, time_summary="max",
        check={"type": "peak_window", "lo": 2.0, "hi": 4.0}, product="aldesleukin",
        note_extra="peak around days 2-4 (RECALLED; the early dip is not checked)")

    # -- DILfrequency
    r = _row(ev, 51, "Seelig E et al.", "treg_pct_change")
    add([51], "DILfrequency (every 3 days, T1D)", "dilfrequency", "treg", "percent_of_cd4", "median", 42,
        day_end=84, time_summary="mean", value=1.0 + float(r["value"]) / 100.0, se=SE_DEFAULT_VERIFIED,
        se_rule="default_verified", product="aldesleukin",
        note_extra="+30 % at steady state (the design target of the optimal regimen); steady state = mean over days 42-84 (ASSUMED)")

    # -- Hartemann 2013 / Rosenzwajg 2015 (dose response, RECALLED magnitudes)
    S = "Hartemann A et al."
    study = "Hartemann 2013 (5-day courses, T1D)"
    for k, reg in ((55, "hartemann_0p33"), (56, "hartemann_1"), (57, "hartemann_3")):
        r = _row(ev, k, S, "treg_fold (% of CD4)")
        mid, lo, hi = midpoint(r["value"])
        add([k], study, reg, "treg", "percent_of_cd4", "mean", 5, day_end=7, time_summary="max", value=mid,
            se=se_recalled(r["confidence"], lo, hi), se_rule="default_recalled", product="aldesleukin")
    r = _row(ev, 58, S, "treg_fold")
    add([58], study, "hartemann_1", "treg", "percent_of_cd4", "mean", 60, value=numbers(r["value"])[0],
        se=se_recalled(r["confidence"]), se_rule="default_recalled", product="aldesleukin",
        note_extra="pooled doses reported; the 1 MIU arm is simulated")
    r = _row(ev, 59, "Rosenzwajg M et al. J Autoimmun 2015", "treg_response_duration")
    add([59], study, "hartemann_3", "treg", "fold_change", "", 0, day_end=7, time_summary="max",
        check={"type": "dose_order", "regimens": ["hartemann_0p33", "hartemann_1", "hartemann_3"]},
        product="aldesleukin", note_extra="dose-dependent increase of Treg numbers (same trial as Hartemann 2013)")
    r = _row(ev, 61, "Ito S et al.", "treg_pct")
    add([61], "Ito 2014 (ultra-low dose)", "ito2014", "treg", "percent_of_cd4", "", 5,
        check={"type": "direction", "sign": "up"}, product="aldesleukin")

    # -- Koreth 2011 / 2016, Whangbo 2019 (daily dosing)
    S = "Koreth J et al. NEJM 2011"
    study = "Koreth 2011 (daily, cGVHD)"
    r = _row(ev, 62, S, "treg_fold (CD4+Foxp3+ count)")
    add([62], study, "koreth2011", "treg", "fold_change", "", 28,
        check={"type": "lower_bound", "bound": numbers(r["value"])[0]}, product="aldesleukin",
        note_extra="median peak fold > 8 at week 4")
    add([62], study, "koreth2011", "treg", "fold_change", "", 0, day_end=56, time_summary="max",
        check={"type": "peak_window", "lo": 14.0, "hi": 42.0}, product="aldesleukin",
        note_extra="peak at week 4 (note of row 62); window weeks 2-6 as in issue 10")
    r = _row(ev, 63, S, "treg_tcon_ratio_fold")
    add([63], study, "koreth2011", "treg", "fold_change", "median", 28, day_end=56, time_summary="mean",
        value=numbers(r["value"])[0], se=SE_DEFAULT_VERIFIED, se_rule="default_verified", product="aldesleukin",
        note_extra="Treg:Tcon fold mapped to the Treg fold: Tcon unchanged (reported, 'no effect on Tcon')")
    r = _row(ev, 64, S, "treg_tcon_ratio")
    add([64], study, "koreth2011", "treg", "fold_change", "", 84,
        check={"type": "decline", "ref_window": [56.0, 56.0], "ref_summary": "point", "threshold": 1.0},
        product="aldesleukin", note_extra="Treg:Tcon mapped to Treg (Tcon unchanged)")
    r = _row(ev, 65, "Koreth J et al. Blood 2016", "treg_fold (count)")
    add([65], "Koreth 2016 (daily, cGVHD)", "koreth2016", "treg", "fold_change", "", 0, day_end=84,
        time_summary="max", check={"type": "lower_bound", "bound": numbers(r["value"])[0]},
        product="aldesleukin", note_extra="> 5-fold during 12 weeks, P<.001")
    r = _row(ev, 71, "Whangbo JS et al.", "il2_plasma and treg_ki67")
    study = "Whangbo 2019 (daily, cGVHD)"
    add([71], study, "whangbo2019", "c_il2", "absolute", "", 35, day_end=56, time_summary="mean",
        check={"type": "decline", "ref_window": [3.0, 10.0], "ref_summary": "mean", "threshold": 0.9},
        product="aldesleukin",
        note_extra="plasma IL-2 falls despite continued daily dosing (a fall of >= 10 % is required)")
    add([71], study, "whangbo2019", "treg", "fold_change", "", 56,
        check={"type": "decline", "ref_window": [0.0, 56.0], "ref_summary": "max", "threshold": 0.9},
        product="aldesleukin",
        note_extra="Treg proliferation falls despite continued dosing: checked as Treg waning below 90 % of its peak")

    # -- sirolimus: Lai 2018 (RECALLED directions), Wen 2019
    r = _row(ev, 86, "Lai ZW et al.", "treg / th17 / DN T")
    study = "Lai 2018 (sirolimus, SLE)"
    add([86], study, "lai2018", "treg", "fold_change", "", 30, day_end=364, time_summary="mean",
        check={"type": "direction", "sign": "up"}, product="none")
    add([86], study, "lai2018", "th17", "fold_change", "", 30, day_end=364, time_summary="mean",
        check={"type": "direction", "sign": "down"}, product="none")
    r = _row(ev, 90, "Wen HY et al.", "treg_abs")
    add([90], "Wen 2019 (sirolimus, RA)", "wen2019", "treg", "fold_change", "", 168,
        check={"type": "direction", "sign": "up"}, product="none",
        note_extra="'higher than the conventional arm' read as above baseline (control = untreated steady state)")

    # -- IL-2 PK (high doses): Piscitelli, Kirchner
    S = "Piscitelli SC et al."
    study = "Piscitelli 1996 (IL-2 PK)"
    r = _row(ev, 122, S, "il2_sc_Cmax_IU_mL")
    lo, hi = float(r["spread_low"]), float(r["spread_high"])
    add([122], study, "piscitelli1996", "c_il2", "absolute", "median", 0, day_end=1, time_summary="max",
        value=math.sqrt(lo * hi) * PM_PER_IU_PER_ML, se=math.log(hi / lo) / 4.0, se_rule="range_over_4",
        weight_class="loose_check", product="aldesleukin",
        note_extra=(f"Cmax range {lo}-{hi} IU/mL at 12-18 MIU: geometric midpoint x {PM_PER_IU_PER_ML} pM per "
                    "IU/mL (derived); high dose"))
    r = _row(ev, 123, S, "il2_sc_tmax_h")
    tmax, sd = float(r["value"]), float(r["spread_low"])
    add([123], study, "piscitelli1996", "c_il2", "absolute", "", 0, day_end=1, time_summary="max",
        check={"type": "peak_window", "lo": (tmax - sd) / HOURS, "hi": (tmax + sd) / HOURS},
        product="aldesleukin", note_extra=f"Tmax {tmax} +- {sd} h (mean +- SD): the median peak within 1 SD")
    S = "Kirchner GI et al."
    study = "Kirchner 1998 (IL-2 PK)"
    for k, reg in ((126, "kirchner1998_a"), (127, "kirchner1998_b")):
        r = _row(ev, k, S, "il2_sc_AUC0_24_IU_h_mL")
        v = float(r["value"])
        add([k], study, reg, "auc_il2", "absolute", "mean", 1, value=v * PM_PER_IU_PER_ML / HOURS,
            se=SE_DEFAULT_CONTEXT_LOOSE, se_rule="default_context_loose", weight_class="loose_check",
            product="aldesleukin",
            note_extra=f"AUC0-24 {v} IU*h/mL x {PM_PER_IU_PER_ML} pM per IU/mL / 24 h = pM*day; high dose")

    frame = pd.DataFrame(out)
    counts: dict[str, int] = {}
    ids = []
    for s in frame["study_slug"]:
        counts[s] = counts.get(s, 0) + 1
        ids.append(f"{s}-{counts[s]}")
    frame.insert(0, "id", ids)
    frame = frame[list(COLUMNS)]
    _check_coverage(frame, len(ev))
    return frame


def used_rows(frame) -> set[int]:
    """Evidence rows (1-based) that contribute to the table."""
    return {int(k) for s in frame["evidence_rows"] for k in str(s).split(";") if k}


def _check_coverage(frame, n_evidence: int) -> None:
    used = used_rows(frame)
    excluded = set(EXCLUSIONS)
    both = sorted(used & excluded)
    if both:
        raise BuildError(f"evidence rows both used and excluded: {both}")
    missing = sorted(set(range(1, n_evidence + 1)) - used - excluded)
    if missing:
        raise BuildError(f"evidence rows neither used nor excluded: {missing}")
    extra = sorted((used | excluded) - set(range(1, n_evidence + 1)))
    if extra:
        raise BuildError(f"rows beyond the evidence file ({n_evidence} rows): {extra}")


def write(frame, path: str | Path) -> Path:
    """Write the table atomically with a short header (``#`` lines)."""
    import io
    from tregpd.io import atomic_write_text
    buf = io.StringIO()
    buf.write("# tregpd calibration dataset, built by fitting/build_calibration.py from "
              "shared/evidence/evidence.csv; rules in fitting/data/CALIBRATION.md\n")
    frame.to_csv(buf, index=False, lineterminator="\n", float_format="%.6g")
    return atomic_write_text(path, buf.getvalue())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("evidence", nargs="?", default=str(DEFAULT_EVIDENCE),
                    help="evidence CSV (default ../shared/evidence/evidence.csv relative to the repo root)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="output CSV (default fitting/data/calibration.csv)")
    args = ap.parse_args(argv)
    try:
        frame = build(args.evidence)
    except BuildError as exc:
        print(f"build_calibration: error: {exc}", file=sys.stderr)
        return 2
    write(frame, args.out)
    print(f"wrote {args.out}: {len(frame)} rows from {len(used_rows(frame))} evidence rows "
          f"({len(EXCLUSIONS)} excluded); " + ", ".join(
              f"{k} {v}" for k, v in frame["weight_class"].value_counts().items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
