"""The bundled model structures, each one declaration (:mod:`tregpd.model.declaration`).

``sat0261_v1`` is the structure the first fit used (naive CD4 N, Treg R, Th17 T; IL-2 and sirolimus as linear
PK; a glucocorticoid term on Th17 proliferation). The others change one mechanism each, so that the
calibration can ask which mechanisms the evidence demands (``tregpd models`` lists them with their equations):

* ``v1_gc_off`` / ``v1_gc_all``: the glucocorticoid term removed, or acting on Treg proliferation as well;
* ``v1_rapa_th17``: sirolimus acts on Th17 only (no promotion of Treg induction), as the Shanxi sirolimus
  trial in SLE suggests (Th17 down, Treg unchanged);
* ``v1_il2_consumption``: IL-2 cleared by CD25+ (Treg) cells as well as linearly, so the IL-2 PK depends on
  the cells (a negative feedback: more Treg, less IL-2 per dose) and is no longer closed form;
* ``v1_waning``: the Treg response to IL-2 desensitises with exposure (a lumped negative feedback: CD25/STAT5
  regulation, activation-induced contraction), so daily dosing peaks and then wanes;
* ``v2``: consumption + desensitisation + sirolimus on Th17, glucocorticoid term off;
* ``v2_lean``: desensitisation + sirolimus on Th17, glucocorticoid term off, linear (closed-form) PK.

Adding a structure: declare it here (or anywhere, and pass it to :func:`register`), and put any new parameter
in the parameter file. Nothing else changes: kernels, Jacobian, SBML and the equation listing are derived.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from .declaration import (Covariate, DeclarationError, Dose, Intermediate, LinearPK, ModelStructure,
                          Observable, State)

#: Parameters of sat0261_v1 and the unit the parameter file gives each in (per-hour values are converted to
#: per day on load).
V1_PARAMETERS: Mapping[str, str] = {
    "il2_ka": "1/h", "il2_bioavailability": "1", "il2_cl": "L/h", "il2_v": "L", "il2_pmol_per_iu": "pmol/IU",
    "rapa_ka": "1/h", "rapa_cl": "L/h", "rapa_vc": "L", "rapa_q": "L/h", "rapa_vp": "L",
    "il2_ec50_treg": "pM", "il2_ec50_effector": "pM", "rapa_ic50": "ng/mL",
    "naive_baseline": "cells/uL", "treg_baseline": "cells/uL", "th17_baseline": "cells/uL",
    "naive_death": "1/day", "naive_to_treg": "1/day", "naive_to_th17": "1/day",
    "treg_proliferation": "1/day", "th17_proliferation": "1/day",
    "treg_crowding": "cells/uL", "treg_suppression": "cells/uL",
    "il2_emax_treg": "1", "il2_emax_th17": "1", "il2_imax_th17_diff": "1",
    "rapa_emax_treg_induction": "1", "rapa_imax_th17_diff": "1", "rapa_imax_th17_prolif": "1",
    "gc_baseline_dose": "mg/day", "gc_ec50": "mg/day", "gc_imax_th17": "1", "th17_crowding": "cells/uL",
    "il2_potency_chinese_rhil2": "1", "il2_potency_ilt101": "1",
}

IL2_PK = LinearPK(
    name="c_il2", compartments=("il2_depot", "il2_central"),
    rates={("il2_depot", "il2_central"): "il2_ka", ("il2_central", None): "il2_cl / il2_v"},
    observed="il2_central", concentration="amount * il2_pmol_per_iu / il2_v", unit="pM", amount_unit="IU",
    description="IL-2 s.c.: depot -> central, linear elimination (literature.md c1)")

RAPA_PK = LinearPK(
    name="c_rapa", compartments=("rapa_gut", "rapa_central", "rapa_periph"),
    rates={("rapa_gut", "rapa_central"): "rapa_ka", ("rapa_central", None): "rapa_cl / rapa_vc",
           ("rapa_central", "rapa_periph"): "rapa_q / rapa_vc", ("rapa_periph", "rapa_central"): "rapa_q / rapa_vp"},
    observed="rapa_central", concentration="1000.0 * amount / rapa_vc", unit="ng/mL", amount_unit="mg",
    description="sirolimus oral: gut -> central <-> peripheral, apparent CL/F, V/F (literature.md c2)")

V1_DOSES = (Dose(1, "il2_depot", "il2_bioavailability", "il2"), Dose(2, "il2_central", None, "il2"),
            Dose(3, "rapa_gut", None, "sirolimus"),
            Dose(10, "il2_depot", "il2_bioavailability", "il2", "il2_potency_chinese_rhil2"),
            Dose(11, "il2_central", None, "il2", "il2_potency_chinese_rhil2"),
            Dose(12, "il2_depot", "il2_bioavailability", "il2", "il2_potency_ilt101"),
            Dose(13, "il2_central", None, "il2", "il2_potency_ilt101"))

PREDNISONE = Covariate("prednisone", "mg/day", 9, "gc_baseline_dose",
                       "background prednisone-equivalent dose; CMT 9 events set it from their time on")

SAT0261_V1 = ModelStructure(
    name="sat0261_v1",
    description=("Naive CD4 (N), Treg (R) and Th17 (T) with low-dose IL-2 acting through the high-affinity "
                 "receptor on Treg and the intermediate receptor on Th17/naive cells, sirolimus (mTOR) "
                 "promoting Treg induction and inhibiting Th17 differentiation and proliferation, Treg "
                 "suppressing Th17 proliferation, density-limited death, and the background prednisone taper "
                 "acting on Th17 proliferation. The structure of the first SAT0261 fit."),
    parameters=V1_PARAMETERS,
    derived=(
        Intermediate("naive_supply", "(naive_death + naive_to_treg + naive_to_th17) * naive_baseline",
                     "cells/uL/day", "naive supply that keeps the untreated model at baseline"),
        Intermediate("treg_death", "(naive_to_treg * naive_baseline + treg_proliferation * treg_baseline)"
                                   " / (treg_baseline * (1.0 + treg_baseline / treg_crowding))",
                     "1/day", "Treg death rate at low density that keeps the untreated model at baseline"),
        Intermediate("th17_death", "(naive_to_th17 * naive_baseline / th17_baseline + th17_proliferation"
                                   " / (1.0 + treg_baseline / treg_suppression)) / (1.0 + th17_baseline / th17_crowding)",
                     "1/day", "Th17 death rate that keeps the untreated model at baseline"),
    ),
    pk=(IL2_PK, RAPA_PK),
    covariates=(PREDNISONE,),
    intermediates=(
        Intermediate("s_treg", "c_il2 / (c_il2 + il2_ec50_treg)", "1",
                     "IL-2 signal through the high-affinity receptor (Treg)"),
        Intermediate("s_eff", "c_il2 / (c_il2 + il2_ec50_effector)", "1",
                     "IL-2 signal through the intermediate receptor (naive, Th17)"),
        Intermediate("i_mtor", "c_rapa / (c_rapa + rapa_ic50)", "1", "mTOR inhibition by sirolimus"),
        Intermediate("gc_factor", "(1.0 - gc_imax_th17 * prednisone / (prednisone + gc_ec50))"
                                  " / (1.0 - gc_imax_th17 * gc_baseline_dose / (gc_baseline_dose + gc_ec50))",
                     "1", "glucocorticoid factor on Th17 proliferation, 1 at the baseline dose (a HYPOTHESIS: no "
                          "prednisone dose-response on Th17 counts was found in the literature)"),
        Intermediate("induction", "naive_to_treg * (1.0 + rapa_emax_treg_induction * i_mtor)", "1/day",
                     "naive -> Treg induction"),
        Intermediate("differentiation", "naive_to_th17 * (1.0 - il2_imax_th17_diff * s_eff)"
                                        " * (1.0 - rapa_imax_th17_diff * i_mtor)", "1/day",
                     "naive -> Th17 differentiation"),
        Intermediate("treg_prolif", "treg_proliferation * (1.0 + il2_emax_treg * s_treg)", "1/day",
                     "Treg proliferation rate"),
        Intermediate("th17_prolif", "th17_proliferation * gc_factor * (1.0 + il2_emax_th17 * s_eff)"
                                    " * (1.0 - rapa_imax_th17_prolif * i_mtor)", "1/day",
                     "Th17 proliferation rate before suppression by Treg"),
    ),
    states=(
        State("naive", "cells/uL", "naive_supply - (naive_death + induction + differentiation) * naive",
              "naive_baseline", "naive CD4+ T cells"),
        State("treg", "cells/uL", "induction * naive + treg_prolif * treg"
                                  " - treg_death * treg * (1.0 + treg / treg_crowding)",
              "treg_baseline", "regulatory T cells (CD4+CD25+FOXP3+)"),
        State("th17", "cells/uL", "differentiation * naive + th17_prolif * th17 / (1.0 + treg / treg_suppression)"
                                  " - th17_death * th17 * (1.0 + th17 / th17_crowding)",
              "th17_baseline", "Th17 cells (CD4+IL-17+)"),
    ),
    observables=(Observable("naive", "naive", "cells/uL"), Observable("treg", "treg", "cells/uL"),
                 Observable("th17", "th17", "cells/uL")),
    doses=V1_DOSES,
    hypotheses=("IL-2 s.c. and sirolimus oral PK linear (closed form)",
                "glucocorticoid (prednisone) inhibits Th17 proliferation: a named hypothesis, no dose-response data"),
)

V1_GC_OFF = SAT0261_V1.with_changes(
    "v1_gc_off", "sat0261_v1 without the glucocorticoid term (Th17 proliferation does not depend on prednisone).",
    remove_parameters=("gc_ec50", "gc_imax_th17"),
    replace_intermediates={"gc_factor": "1.0"},
    hypotheses=("glucocorticoid term OFF",))

V1_GC_ALL = SAT0261_V1.with_changes(
    "v1_gc_all", "sat0261_v1 with the glucocorticoid term acting on Treg proliferation as well as Th17 "
                 "(its own maximal inhibition, same EC50).",
    parameters={"gc_imax_treg": "1"},
    replace_intermediates={"treg_prolif": "treg_proliferation * gc_factor_treg * (1.0 + il2_emax_treg * s_treg)"},
    insert_after={"gc_factor": (Intermediate(
        "gc_factor_treg", "(1.0 - gc_imax_treg * prednisone / (prednisone + gc_ec50))"
                          " / (1.0 - gc_imax_treg * gc_baseline_dose / (gc_baseline_dose + gc_ec50))",
        "1", "glucocorticoid factor on Treg proliferation, 1 at the baseline dose (HYPOTHESIS)"),)},
    hypotheses=("glucocorticoid inhibits Treg proliferation too",))

V1_RAPA_TH17 = SAT0261_V1.with_changes(
    "v1_rapa_th17", "sat0261_v1 with sirolimus acting on Th17 only: no promotion of naive -> Treg induction "
                    "(Shanxi sirolimus trial in SLE: Th17 down, Treg not significantly changed).",
    remove_parameters=("rapa_emax_treg_induction",),
    replace_intermediates={"induction": "naive_to_treg"},
    hypotheses=("sirolimus does not raise Treg induction",))

#: IL-2 amount (IU) whose central concentration is 1e-12 x the smaller IL-2 EC50: below it (and decaying) the
#: engine sets an IL-2 amount state to 0 (State.negligible; error bound in _engine.py "Negligible states")
IL2_NEGLIGIBLE = "1e-12 * min(il2_ec50_treg, il2_ec50_effector) * il2_v / il2_pmol_per_iu"

IL2_AS_STATES = (
    State("il2_depot", "IU", "-il2_ka * il2_depot", "0.0", "IL-2 amount at the s.c. injection site",
          nonnegative=False, negligible=IL2_NEGLIGIBLE),
    State("il2_central", "IU", "il2_ka * il2_depot - il2_elimination * il2_central", "0.0",
          "IL-2 amount in the central compartment", nonnegative=False, negligible=IL2_NEGLIGIBLE),
)

V1_IL2_CONSUMPTION = SAT0261_V1.with_changes(
    "v1_il2_consumption",
    "sat0261_v1 with receptor-mediated IL-2 clearance by CD25+ Treg: the elimination rate constant is "
    "(CL/V) (1 + f_RMC (R/R0) EC50_R/(C + EC50_R)), saturable and proportional to the Treg count, so a Treg "
    "expansion lowers the IL-2 exposure of later doses (Kirchner 1998; Whangbo 2019). The IL-2 PK then "
    "depends on the cells and is integrated as states; sirolimus stays closed form.",
    parameters={"il2_rmc_fraction": "1"},
    pk=(RAPA_PK,),
    concentrations_from_states={"c_il2": ("max(il2_central, 0.0) * il2_pmol_per_iu / il2_v", "pM")},
    intermediates_before=(Intermediate(
        "il2_elimination", "il2_cl / il2_v * (1.0 + il2_rmc_fraction * (treg / treg_baseline)"
                           " * il2_ec50_treg / (c_il2 + il2_ec50_treg))", "1/day",
        "IL-2 elimination rate constant: linear plus receptor-mediated by Treg"),),
    add_states=IL2_AS_STATES,
    hypotheses=("IL-2 cleared by CD25+ Treg (receptor-mediated, saturable)",))

V1_WANING = SAT0261_V1.with_changes(
    "v1_waning",
    "sat0261_v1 with desensitisation of the Treg IL-2 response: a dimensionless adaptation state D follows "
    "the high-affinity signal, dD/dt = k_D (g_D S_R - D) with k_D = ln 2 / t_half, and the proliferative "
    "effect is Emax S_R / (1 + D). Daily dosing then peaks and wanes; D decays after IL-2 stops.",
    parameters={"treg_desens_gain": "1", "treg_desens_halflife": "day"},
    replace_intermediates={"treg_prolif": "treg_proliferation * (1.0 + il2_emax_treg * s_treg / (1.0 + desens))"},
    add_states=(State("desens", "1", "0.6931471805599453 / treg_desens_halflife * (treg_desens_gain * s_treg"
                                     " - desens)", "0.0", "desensitisation of the Treg IL-2 response"),),
    hypotheses=("Treg IL-2 response desensitises with exposure (negative feedback)",))


#: what v2 and v2_lean drop from their parent: the glucocorticoid term and sirolimus-driven Treg induction
_NO_GC_RAPA_TH17_DROPPED = ("gc_ec50", "gc_imax_th17", "rapa_emax_treg_induction", "gc_baseline_dose")


def _no_gc_rapa_th17(base: ModelStructure, name: str, description: str, hypotheses: tuple[str, ...],
                     replace_intermediates: Mapping[str, str] | None = None,
                     parameters: Mapping[str, str] | None = None, add_states: tuple[State, ...] = ()
                     ) -> ModelStructure:
    """``base`` without the glucocorticoid term (prednisone events accepted and ignored) and with sirolimus
    acting on Th17 only (no promotion of Treg induction), plus the stated replacements."""
    repl = {"induction": "naive_to_treg",
            "th17_prolif": "th17_proliferation * (1.0 + il2_emax_th17 * s_eff)"
                           " * (1.0 - rapa_imax_th17_prolif * i_mtor)"}
    repl.update(replace_intermediates or {})
    inter = tuple(Intermediate(i.name, repl.get(i.name, i.expr), i.unit, i.description)
                  for i in base.intermediates if i.name != "gc_factor")
    params = {k: v for k, v in base.parameters.items() if k not in _NO_GC_RAPA_TH17_DROPPED}
    params.update(parameters or {})
    return ModelStructure(
        name=name, description=description, parameters=params, derived=base.derived, pk=base.pk,
        covariates=(Covariate("prednisone", "mg/day", 9, "0.0", PREDNISONE.description),),
        intermediates=inter, states=tuple(base.states) + tuple(add_states), observables=base.observables,
        doses=base.doses, concentrations_from_states=base.concentrations_from_states, hypotheses=hypotheses,
        parent="sat0261_v1")


V2 = _no_gc_rapa_th17(
    V1_IL2_CONSUMPTION, "v2",
    "IL-2 consumption by CD25+ Treg (IL-2 PK as states) + desensitisation of the Treg IL-2 response + "
    "sirolimus on Th17 only; no glucocorticoid term (prednisone events are accepted and ignored).",
    ("IL-2 cleared by CD25+ Treg", "Treg IL-2 response desensitises", "sirolimus on Th17 only",
     "glucocorticoid term OFF"),
    replace_intermediates={"treg_prolif": "treg_proliferation * (1.0 + il2_emax_treg * s_treg / (1.0 + desens))"},
    parameters={"treg_desens_gain": "1", "treg_desens_halflife": "day"},
    add_states=tuple(s for s in V1_WANING.states if s.name == "desens"))

V2_LEAN = _no_gc_rapa_th17(
    V1_WANING, "v2_lean",
    "Desensitisation of the Treg IL-2 response + sirolimus on Th17 only, no glucocorticoid term; IL-2 "
    "and sirolimus PK linear (closed form). The mechanisms of v2 that the joint fit uses, without the "
    "IL-2 consumption it drives to ~0.",
    ("Treg IL-2 response desensitises", "sirolimus on Th17 only", "glucocorticoid term OFF",
     "IL-2 and sirolimus PK linear (closed form)"))

_REGISTRY: dict[str, ModelStructure] = {}
DEFAULT_MODEL = "v2_lean"


def register(structure: ModelStructure, *, replace: bool = False) -> ModelStructure:
    """Make a structure selectable by name. Re-registering the same content is a no-op."""
    if not isinstance(structure, ModelStructure):
        raise DeclarationError(f"register() takes a ModelStructure, got {type(structure).__name__}")
    old = _REGISTRY.get(structure.name)
    if old is not None and old.content_hash != structure.content_hash and not replace:
        raise DeclarationError(f"model {structure.name!r} is already registered with different content")
    _REGISTRY[structure.name] = structure
    return structure


def unregister(name: str) -> None:
    """Remove a structure registered at run time (bundled structures cannot be removed)."""
    if name in _BUNDLED:
        raise DeclarationError(f"model {name!r} is bundled and cannot be unregistered")
    _REGISTRY.pop(name, None)


for _s in (SAT0261_V1, V1_GC_OFF, V1_GC_ALL, V1_RAPA_TH17, V1_IL2_CONSUMPTION, V1_WANING, V2, V2_LEAN):
    register(_s)
_BUNDLED = frozenset(_REGISTRY)


def models() -> Mapping[str, ModelStructure]:
    """The registered structures by name (read-only view)."""
    return MappingProxyType(_REGISTRY)


def get_model(model: str | ModelStructure | None = None) -> ModelStructure:
    """A structure by name (``None``: :data:`DEFAULT_MODEL`); a ModelStructure is returned as is."""
    if model is None:
        return _REGISTRY[DEFAULT_MODEL]
    if isinstance(model, ModelStructure):
        return model
    if not isinstance(model, str) or model not in _REGISTRY:
        shown = model if not isinstance(model, str) or len(model) < 80 else model[:80] + "..."
        raise DeclarationError(f"unknown model {shown!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[model]


def known_parameter_units() -> dict[str, str]:
    """Union of every registered structure's parameters and their units (the parameter file's vocabulary)."""
    out: dict[str, str] = {}
    for s in _REGISTRY.values():
        for n, u in s.parameters.items():
            if out.setdefault(n, u) != u:
                raise DeclarationError(f"parameter {n!r} has unit {u!r} in model {s.name!r} but {out[n]!r} "
                                       "in another structure")
    return out
