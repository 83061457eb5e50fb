"""tregpd.fitting: cohort data, fit problems, weighted objectives, lmfit fitting, profile likelihood and
identifiability (layers: :mod:`.cohort` -> :mod:`.problem` -> :mod:`.objective` -> :mod:`.optimise` ->
:mod:`.workflow`; report text in :mod:`.report`, figures in :mod:`.plots`)."""
from .cohort import Cohort, load_cohort, parse_cohort, seed_cohort, baseline_values, OBSERVABLES, STATISTICS
from .objective import DEFAULT_LOG_SD, standard_errors, log_residuals
from .problem import FitProblem, cohort_regimen
from .optimise import (build_parameters, make_minimizer, minimize, profile_likelihood, confidence_intervals,
                       sample_posterior, Profile, FitError, DELTA_CHI2_95)
from .workflow import (fit_typical, fit_population, run_fit, FitOutcome, TypicalFit, PopulationFit,
                       fitted_parameter_set, PoorFitError)
from .report import FitVerdict, assess_fit, RESIDUAL_LIMIT_SE

__all__ = [
    "Cohort", "load_cohort", "parse_cohort", "seed_cohort", "baseline_values", "OBSERVABLES", "STATISTICS",
    "DEFAULT_LOG_SD", "standard_errors", "log_residuals", "FitProblem", "cohort_regimen", "build_parameters",
    "make_minimizer", "minimize", "profile_likelihood", "confidence_intervals", "sample_posterior", "Profile",
    "FitError", "DELTA_CHI2_95", "fit_typical", "fit_population", "run_fit", "FitOutcome", "TypicalFit",
    "PopulationFit", "fitted_parameter_set", "PoorFitError", "FitVerdict", "assess_fit", "RESIDUAL_LIMIT_SE",
]
