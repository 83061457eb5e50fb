"""Model parameters: values, units, bounds, sources and fitted flags, loaded from one TOML file.

The numbers live in ``model/data/parameters.toml`` (the single place for them); this module validates them
and turns them into the flat ``theta`` array that the numba kernels read. The order of ``theta`` is
:data:`PARAMETER_NAMES`; the kernels index it through the ``I_*`` constants below, so a parameter is never
looked up by position anywhere else.

Units inside the kernels are days, cells/uL, pM (IL-2), ng/mL whole blood (sirolimus), IU and mg. Values
quoted per hour in the file (``1/h``, ``L/h``) are converted to per day by :meth:`ParameterSet.to_theta`.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping

import numpy as np

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from tregpd.errors import ParameterError
from .structures import get_model as _get_model, known_parameter_units


def _default_structure():
    return _get_model(None)

#: Parameters of the default model structure, in its ``theta`` order. Each structure
#: (:mod:`tregpd.model.structures`) declares its own parameters; ``ParameterSet.to_theta(model)`` orders them.
PARAMETER_NAMES: tuple[str, ...] = tuple(_default_structure().parameter_names)
N_THETA = len(PARAMETER_NAMES)
#: indices into the ``theta`` of the structure ``sat0261_v1`` (used by the hand-written benchmark peers)
(I_IL2_KA, I_IL2_F, I_IL2_CL, I_IL2_V, I_IL2_PMOL_PER_IU,
 I_RAPA_KA, I_RAPA_CL, I_RAPA_VC, I_RAPA_Q, I_RAPA_VP,
 I_EC50_TREG, I_EC50_EFF, I_RAPA_IC50,
 I_N0, I_R0, I_T0,
 I_NAIVE_DEATH, I_N_TO_R, I_N_TO_T, I_R_PROLIF, I_T_PROLIF,
 I_R_CROWD, I_R_SUPPRESS,
 I_IL2_EMAX_R, I_IL2_EMAX_T, I_IL2_IMAX_TDIFF,
 I_RAPA_EMAX_RIND, I_RAPA_IMAX_TDIFF, I_RAPA_IMAX_TPROLIF,
 I_GC0, I_GC_EC50, I_GC_IMAX_T, I_T_CROWD, I_POTENCY_CHINESE, I_POTENCY_ILT101) = range(
    len(_get_model("sat0261_v1").parameter_names))


class _Units(Mapping):
    """Units each parameter must be given in: the union over the registered structures (read live, so a
    structure registered later brings its parameters into the parameter file's vocabulary)."""

    def __getitem__(self, key):
        return known_parameter_units()[key]

    def __iter__(self):
        return iter(known_parameter_units())

    def __len__(self):
        return len(known_parameter_units())


EXPECTED_UNITS: Mapping[str, str] = _Units()

#: Multiplier from the file's unit to the kernel's per-day unit.
_PER_DAY = {"1/h": 24.0, "L/h": 24.0}

_ENTRY_KEYS = {"value", "unit", "lower", "upper", "fitted", "status", "source", "note", "role"}
#: what the evidence does with a parameter: calibrated (profile closed on both sides by the joint fit),
#: bounded (one side only), prior (fixed at its literature/assumed value)
ROLES = ("prior", "calibrated", "bounded")
_STATUSES = {"VERIFIED", "RECALLED", "DERIVED", "ASSUMPTION", "FOUNDING DOC", "FITTED"}

DEFAULT_PARAMETER_FILE = "parameters.toml"


@dataclass(frozen=True)
class Parameter:
    """One model parameter.

    Attributes
    ----------
    name : str
    value : float
        In ``unit``.
    unit : str
    lower, upper : float
        Bounds, in ``unit``; validation rejects a value outside them and fitting respects them.
    fitted : bool
        True if the default fit varies it.
    status : str
        Evidence level (VERIFIED, RECALLED, DERIVED, ASSUMPTION, FOUNDING DOC, FITTED).
    source : str
        Citation (see ../shared/literature.md).
    """

    name: str
    value: float
    unit: str
    lower: float
    upper: float
    fitted: bool
    status: str
    source: str
    note: str = ""
    role: str = "prior"

    def __post_init__(self) -> None:
        where = f"parameter {self.name!r}"
        for fld in ("value", "lower", "upper"):
            v = getattr(self, fld)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ParameterError(f"{where}: field {fld!r} must be a number, got {v!r}")
            if isinstance(v, int) and abs(v) > 1e300:  # math.isfinite would overflow converting it
                raise ParameterError(f"{where}: field {fld!r} must be finite, got an integer of "
                                     f"{len(str(abs(v)))} digits")
            if not math.isfinite(v):
                raise ParameterError(f"{where}: field {fld!r} must be finite, got {v!r}")
            object.__setattr__(self, fld, float(v))
        if self.name not in EXPECTED_UNITS:
            raise ParameterError(f"unknown parameter {self.name!r}; known: {', '.join(EXPECTED_UNITS)}")
        if self.unit != EXPECTED_UNITS[self.name]:
            raise ParameterError(
                f"{where}: unit must be {EXPECTED_UNITS[self.name]!r}, got {self.unit!r}")
        if not self.lower <= self.upper:
            raise ParameterError(f"{where}: lower bound {self.lower} exceeds upper bound {self.upper}")
        if not self.lower <= self.value <= self.upper:
            raise ParameterError(
                f"{where}: value {self.value}{'' if self.unit == '1' else ' ' + self.unit} is outside its bounds "
                f"[{self.lower}, {self.upper}]")
        if self.lower < 0:
            raise ParameterError(f"{where}: lower bound {self.lower} is negative; all parameters are >= 0")
        if not isinstance(self.fitted, bool):
            raise ParameterError(f"{where}: field 'fitted' must be true or false, got {self.fitted!r}")
        if not isinstance(self.status, str) or self.status not in _STATUSES:
            raise ParameterError(f"{where}: status {self.status!r} is not one of {sorted(_STATUSES)}")
        if not isinstance(self.source, str) or not self.source.strip():
            raise ParameterError(f"{where}: field 'source' must name where the value comes from")
        if self.role not in ROLES:
            raise ParameterError(f"{where}: role {self.role!r} is not one of {list(ROLES)}")
        if not isinstance(self.note, str):
            raise ParameterError(f"{where}: field 'note' must be a string, got {self.note!r}")


@dataclass(frozen=True)
class ParameterSet:
    """An immutable, validated set of all model parameters.

    Build one with :func:`load_parameters` or :func:`default_parameters`; derive variants with
    :meth:`with_values`, which validates again.
    """

    parameters: Mapping[str, Parameter]
    name: str = "unnamed"
    description: str = ""
    origin: str = ""

    def __post_init__(self) -> None:
        names = set(self.parameters)
        known = list(EXPECTED_UNITS)
        missing = [n for n in PARAMETER_NAMES if n not in names]
        unknown = sorted(names - set(known))
        if missing:
            raise ParameterError(f"parameter set {self.name!r}: missing parameters {missing}")
        if unknown:
            raise ParameterError(f"parameter set {self.name!r}: unknown parameters {unknown}")
        ordered = {n: self.parameters[n] for n in known if n in names}
        object.__setattr__(self, "parameters", MappingProxyType(ordered))

    # -- access
    def __getitem__(self, name: str) -> Parameter:
        try:
            return self.parameters[name]
        except KeyError:
            raise ParameterError(f"unknown parameter {name!r}; known: {', '.join(self.parameters)}") from None

    def __iter__(self):
        return iter(self.parameters.values())

    def value(self, name: str) -> float:
        return self[name].value

    @property
    def values(self) -> dict[str, float]:
        """Parameter values in their file units, keyed by name."""
        return {n: p.value for n, p in self.parameters.items()}

    @property
    def fitted_names(self) -> tuple[str, ...]:
        return tuple(n for n, p in self.parameters.items() if p.fitted)

    # -- derive
    def with_values(self, **values: float) -> "ParameterSet":
        """Return a copy with some values replaced (in file units), validated."""
        params = dict(self.parameters)
        for k, v in values.items():
            params[k] = replace(self[k], value=v)
        return replace(self, parameters=params)

    def with_fitted(self, names: Iterable[str]) -> "ParameterSet":
        """Return a copy in which exactly ``names`` are flagged as fitted."""
        names = set(names)
        for n in names:
            self[n]  # raises for unknown names
        params = {n: replace(p, fitted=n in names) for n, p in self.parameters.items()}
        return replace(self, parameters=params)

    def names_for(self, model=None) -> tuple[str, ...]:
        """The parameter names of a model structure (default: the default structure), checked present."""
        names = _get_model(model).parameter_names
        missing = [n for n in names if n not in self.parameters]
        if missing:
            raise ParameterError(f"parameter set {self.name!r} lacks {missing}, needed by model "
                                 f"{_get_model(model).name!r} (add them to the parameter file)")
        return names

    def to_theta(self, model=None) -> np.ndarray:
        """The kernel parameter vector of a model structure, shape ``(n_parameters,)`` in the structure's
        order, per-hour quantities converted to per day."""
        return np.array([self.parameters[n].value * _PER_DAY.get(self.parameters[n].unit, 1.0)
                         for n in self.names_for(model)], dtype=np.float64)

    def to_frame(self):
        """A tidy table (one row per parameter) of value, unit, bounds, fitted flag, status and source."""
        import pandas as pd
        return pd.DataFrame([
            {"name": p.name, "value": p.value, "unit": p.unit, "lower": p.lower, "upper": p.upper,
             "fitted": p.fitted, "status": p.status, "source": p.source}
            for p in self.parameters.values()])

    def to_toml(self) -> str:
        """Serialise in the same format as ``model/data/parameters.toml``."""
        def q(s: str) -> str:
            return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines = ["[meta]", f"name = {q(self.name)}", f"description = {q(self.description)}", ""]
        for p in self.parameters.values():
            lines += [f"[{p.name}]", f"value = {p.value!r}", f"unit = {q(p.unit)}", f"lower = {p.lower!r}",
                      f"upper = {p.upper!r}", f"fitted = {'true' if p.fitted else 'false'}",
                      f"status = {q(p.status)}", f"source = {q(p.source)}"]
            if p.role != "prior":
                lines.append(f"role = {q(p.role)}")
            if p.note:
                lines.append(f"note = {q(p.note)}")
            lines.append("")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Plain-dict form for provenance records."""
        return {"name": self.name, "values": self.values,
                "units": {n: p.unit for n, p in self.parameters.items()}}


def parse_parameters(text: str, origin: str = "<string>") -> ParameterSet:
    """Parse and validate parameter-file text (TOML)."""
    from tregpd.safeio import load_toml
    data = load_toml(text, origin, error=ParameterError)
    meta = data.pop("meta", {})
    if not isinstance(meta, dict):
        raise ParameterError(f"{origin}: [meta] must be a table")
    params = {}
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise ParameterError(f"{origin}: [{name}] must be a table with value, unit, bounds and source")
        unknown = set(entry) - _ENTRY_KEYS
        if unknown:
            raise ParameterError(f"{origin}: parameter {name!r} has unknown fields {sorted(unknown)}")
        missing = sorted({"value", "unit", "lower", "upper", "fitted", "status", "source"} - set(entry))
        if missing:
            raise ParameterError(f"{origin}: parameter {name!r} is missing fields {missing}")
        try:
            params[name] = Parameter(name=name, **entry)
        except ParameterError as exc:
            raise ParameterError(f"{origin}: {exc}") from None
    try:
        return ParameterSet(params, name=str(meta.get("name", Path(origin).stem)),
                            description=str(meta.get("description", "")), origin=origin)
    except ParameterError as exc:
        raise ParameterError(f"{origin}: {exc}") from None


def load_parameters(path: str | Path | None = None) -> ParameterSet:
    """Load a parameter file; ``None`` loads the bundled literature priors."""
    if path is None:
        text = resources.files("tregpd.model").joinpath("data", DEFAULT_PARAMETER_FILE).read_text()
        return parse_parameters(text, origin=f"tregpd/model/data/{DEFAULT_PARAMETER_FILE}")
    from tregpd.safeio import read_text_file
    text = read_text_file(path, "parameter file", error=ParameterError)
    return parse_parameters(text, origin=str(path))


def default_parameters() -> ParameterSet:
    """The bundled literature priors (``model/data/parameters.toml``)."""
    return load_parameters(None)
