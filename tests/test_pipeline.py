"""End-to-end smoke test of the main job (`tregpd all --quick`): every stage writes its outputs, and the
reference trajectory is simulated with the fitted parameters (its week-24 Treg equals the fit's own model value
for the typical patient)."""
from __future__ import annotations

import pandas as pd
import pytest

from tregpd.cli import main


@pytest.mark.slow
def test_main_job_quick(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["all", "--quick", "--out", str(out)]) == 0
    capsys.readouterr()
    for rel in ("SUMMARY.md", "fit/fitted_parameters.toml", "fit/fit_report.txt", "fit/fit.png",
                "reference/trajectory.csv", "reference/trajectory.png", "sensitivity/sensitivity_local.csv",
                "scenarios/comparison.csv", "scenarios/comparison.md", "scenarios/dose_response.png"):
        assert (out / rel).is_file(), rel
    residuals = pd.read_csv(out / "fit" / "residuals.csv", comment="#")
    fitted_treg = residuals[(residuals["week"] == 24) & (residuals["observable"] == "treg")]["model_typical"]
    traj = pd.read_csv(out / "reference" / "trajectory.csv", comment="#")
    wk24 = traj[(traj["variable"] == "treg") & (traj["time_day"] == 168.0)]["value"]
    assert float(wk24.iloc[0]) == pytest.approx(float(fitted_treg.iloc[0]), rel=1e-5)
    assert float(wk24.iloc[0]) == pytest.approx(22.1, rel=0.03)
    assert "shanxi_reference" in (out / "SUMMARY.md").read_text()
