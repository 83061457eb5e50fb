"""tregpd.model: parameters, dosing, PK/PD kernels and simulation. Imports nothing from fitting/ or scenarios/.

The public names are imported lazily (on first use; see :mod:`tregpd._lazy`), so that importing a submodule such
as :mod:`tregpd.model.dosing` does not compile or load the numba kernels.
"""
from tregpd._lazy import attach

__all__ = attach(__name__, {
    "errors": ("TregpdError", "ParameterError", "RegimenError", "CohortError", "ScenarioError", "IntegrationError"),
    "parameters": ("Parameter", "ParameterSet", "PARAMETER_NAMES", "load_parameters", "default_parameters",
                   "parse_parameters"),
    "dosing": ("DoseSchedule", "Regimen", "EventTable", "SteroidTaper", "SAT0261_TAPER", "reference_regimen",
               "no_treatment", "read_nonmem", "write_nonmem", "REFERENCE_ASSUMPTION"),
    "simulate": ("simulate", "simulate_population", "SimulationResult", "SolverOptions", "VARIABLES",
                 "output_times", "theta_matrix"),
    "population": ("sample_population", "DEFAULT_IIV"),
    "sbml": ("to_sbml",),
})
