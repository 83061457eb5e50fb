"""tregpd.fitting: cohort data, fit problems, weighted objectives, lmfit fitting, profile likelihood and
identifiability (layers: :mod:`.cohort` -> :mod:`.problem` -> :mod:`.objective` -> :mod:`.optimise` ->
:mod:`.workflow`; report text in :mod:`.report`, figures in :mod:`.plots`).

The public names are imported lazily (on first use; see :mod:`tregpd._lazy`)."""
from tregpd._lazy import attach

__all__ = attach(__name__, {
    "cohort": ("Cohort", "load_cohort", "parse_cohort", "seed_cohort", "baseline_values", "OBSERVABLES",
               "STATISTICS"),
    "objective": ("DEFAULT_LOG_SD", "standard_errors", "log_residuals"),
    "problem": ("FitProblem", "cohort_regimen"),
    "optimise": ("build_parameters", "make_minimizer", "minimize", "profile_likelihood", "profile_likelihoods", "confidence_intervals",
                 "sample_posterior", "Profile", "FitError", "DELTA_CHI2_95"),
    "workflow": ("fit_typical", "fit_population", "run_fit", "FitOutcome", "TypicalFit", "PopulationFit",
                 "fitted_parameter_set", "PoorFitError"),
    "report": ("FitVerdict", "assess_fit", "RESIDUAL_LIMIT_SE"),
})
