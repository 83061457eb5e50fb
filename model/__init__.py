"""tregpd.model: parameters, dosing, PK/PD kernels and simulation. Imports nothing from fitting/ or scenarios/."""
from .errors import (TregpdError, ParameterError, RegimenError, CohortError, ScenarioError, IntegrationError)
from .parameters import (Parameter, ParameterSet, PARAMETER_NAMES, load_parameters, default_parameters,
                         parse_parameters)
from .dosing import (DoseSchedule, Regimen, EventTable, SteroidTaper, SAT0261_TAPER, reference_regimen,
                     no_treatment, read_nonmem, write_nonmem, REFERENCE_ASSUMPTION)
from .simulate import (simulate, simulate_population, SimulationResult, SolverOptions, VARIABLES,
                       output_times, theta_matrix)
from .population import sample_population, DEFAULT_IIV
from .sbml import to_sbml

__all__ = [
    "TregpdError", "ParameterError", "RegimenError", "CohortError", "ScenarioError", "IntegrationError",
    "Parameter", "ParameterSet", "PARAMETER_NAMES", "load_parameters", "default_parameters", "parse_parameters",
    "DoseSchedule", "Regimen", "EventTable", "SteroidTaper", "SAT0261_TAPER", "reference_regimen", "no_treatment", "read_nonmem", "write_nonmem",
    "REFERENCE_ASSUMPTION", "simulate", "simulate_population", "SimulationResult", "SolverOptions", "VARIABLES",
    "output_times", "theta_matrix", "sample_population", "DEFAULT_IIV", "to_sbml",
]
