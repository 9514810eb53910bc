"""bench/senet_bench.py: the PASS/FAIL rule, the table, and one tiny end-to-end run through the real trainer."""

from __future__ import annotations

import pytest

from bench import senet_bench


def _result(name: str, rank1: float, family: str = "mixing", seed: int = 1) -> dict:
    metrics = {key: 0.5 for key, _ in senet_bench.METRICS}
    raw = {f"{key}_raw": 0.25 for key, _ in senet_bench.METRICS}
    return {"family": family, "seed": seed, "name": name, **metrics, **raw, "rank1": rank1}


@pytest.mark.parametrize(("ours", "baseline", "verdict"), [(0.95, 0.955, "PASS"), (0.944, 0.955, "FAIL"),
                                                          (0.99, 0.90, "PASS")])
def test_target_is_senet_rank1_at_least_baseline_minus_a_hundredth(ours, baseline, verdict):
    results = [_result("residual MLP baseline", baseline), _result("SENet, seed objective", 0.3),
               _result("SENet, frontal target", ours)]
    lines = senet_bench.format_comparison(results)
    verdicts = [line for line in lines if line.startswith(("PASS", "FAIL"))]
    assert verdicts == [f"{verdict} [mixing, seed 1] SENet (frontal target) rank-1 {ours:.3f} >= baseline "
                        f"{baseline:.3f} - 0.01"]
    assert any(line.startswith("mixing") and "raw (no mapping)" in line and "0.250" in line for line in lines)


def test_ablation_rows_change_one_option_each():
    options = senet_bench.trainer_options(senet_bench.build_parser().parse_args([]), senet_bench.ABLATIONS["α and γ at --lr"])
    assert options["alpha_lr"] == options["gain_lr"] == options["lr"] == 1e-3
    tripled = senet_bench.trainer_options(senet_bench.build_parser().parse_args([]), senet_bench.ABLATIONS["--lr × 3"])
    assert tripled["lr"] == pytest.approx(3e-3) and "lr_factor" not in tripled
    with pytest.raises(ValueError, match="--families"):
        senet_bench.parse_plan(senet_bench.build_parser().parse_args(["--families", "affine"]))
    with pytest.raises(ValueError, match="--seeds"):
        senet_bench.parse_plan(senet_bench.build_parser().parse_args(["--seeds", "x"]))


def test_tiny_bench_run_prints_every_row(tmp_path, capsys):
    argv = ["--families", "residual", "--num_persons", "100", "--frames_per_person", "5", "--feature_dim", "24",
            "--hidden_dim", "32", "--num_identity_dims", "4", "--epochs", "1", "--batch_size", "16", "--out", str(tmp_path)]
    assert senet_bench.main(argv) == 0
    out = capsys.readouterr().out
    for row in ["raw (no mapping)", "residual MLP baseline", "DREAM (yaw-gated)", "SENet, seed objective",
                "SENet, frontal target"]:
        assert row in out
    assert "[residual, seed 1] SENet (frontal target) rank-1" in out


def test_models_selects_rows_and_the_verdict_needs_both_sides(tmp_path, capsys):
    argv = ["--families", "residual", "--num_persons", "100", "--frames_per_person", "5", "--feature_dim", "24",
            "--hidden_dim", "32", "--num_identity_dims", "4", "--epochs", "1", "--batch_size", "16", "--out", str(tmp_path),
            "--models", "DREAM (yaw-gated)"]
    assert senet_bench.main(argv) == 0
    out = capsys.readouterr().out
    assert "DREAM (yaw-gated)" in out and "residual MLP baseline" not in out and "PASS" not in out and "FAIL" not in out
    with pytest.raises(ValueError, match="--models: unknown"):
        senet_bench.selected_rows(senet_bench.build_parser().parse_args(["--models", "SENet"]))
    ablation = senet_bench.build_parser().parse_args(["--ablations", "--models", "no SE gates; defaults"])
    assert list(senet_bench.selected_rows(ablation)) == ["no SE gates", "defaults"]
    comparison = senet_bench.build_parser().parse_args(["--models", "SENet, frontal target;residual MLP baseline"])
    assert list(senet_bench.selected_rows(comparison)) == ["SENet, frontal target", "residual MLP baseline"]
