"""The RL benchmark (`mdlm.eval.bench.rl`): its arithmetic, its units (one method at one seed, resumable,
shared between processes), the summary's target check and the table."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from mdlm.eval.bench import rl
from mdlm.eval.bench.rl import best_of_n, fifths, mean_se, pass_at_k


def test_pass_at_k_and_best_of_n_on_hand_made_samples():
    # 3 samples (rows) of 4 prompts (columns)
    correct = [[1, 0, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]]
    rewards = [[1.0, 0.2, 0.5, 0.1], [0.5, 0.9, 1.0, 0.1], [1.0, 0.1, 0.9, 0.1]]
    assert pass_at_k(correct) == 0.5  # prompts 0 and 2 solved by some sample
    # best reward: prompt 0 sample 0 (tie with 2: the first), prompt 1 sample 1 (wrong), prompt 2 sample 1, prompt 3 sample 0
    assert best_of_n(rewards, correct) == 0.5


def test_mean_standard_error_and_fifths():
    stat = mean_se([0.4, 0.5, 0.6])
    assert math.isclose(stat["mean"], 0.5) and math.isclose(stat["se"], 0.1 / math.sqrt(3))
    assert math.isnan(mean_se([0.3])["se"])
    first, last = fifths([0.1 * i for i in range(1, 11)])
    assert math.isclose(first, 0.15) and math.isclose(last, 0.95)


def _record(method, seed, before, after):
    return {"method": method, "seed": seed, "accuracy_before": before, "accuracy_after": after, "wall_seconds": 60.0,
            "reward_first_fifth": 0.2, "reward_last_fifth": 0.3, "kl_final": 0.01, "zero_spread_groups": 0.4,
            "seconds_per_update": 0.5, "reward_curve": [{"rollouts": 8, "seconds": 1.0, "reward": 0.2},
                                                        {"rollouts": 16, "seconds": 2.0, "reward": 0.3}],
            "accuracy_curve": [{"rollouts": 16, "seconds": 2.0, "accuracy": after}]}


def test_the_target_needs_ten_points_and_three_standard_errors(tmp_path):
    from mdlm.eval.bench.rl import METHOD_OPTIONS, markdown_table, plot, summarise

    units = {"mdpo": [_record("mdpo", s, 0.2, a) for s, a in enumerate((0.31, 0.32, 0.33))],   # +12 ± 0.6: met
             "cj-grpo": [_record("cj-grpo", s, 0.2, a) for s, a in enumerate((0.20, 0.30, 0.45))],  # +11.7 ± 7.3
             "rft": [_record("rft", s, 0.2, 0.25) for s in range(3)]}
    results = {"format": 3, "task": "countdown", "sft_run": "runs/sft", "eval_examples": 8, "units": units,
               "sizes": {"seeds": [0, 1, 2], "rollouts": 16, "batch": 8, "num_generations": 4},
               "sft": {"accuracy": 0.2}, "best_of_n": {"n": 4, "accuracy": 0.5}, "method_options": METHOD_OPTIONS}
    results["summary"] = summarise(results)
    targets = results["summary"]["targets"]
    mdpo = targets["mdpo: +10 points over its SFT start, gain > 3 s.e."]
    assert mdpo["met"] and math.isclose(mdpo["gain_points"], 12.0)
    assert not targets["cj-grpo: +10 points over its SFT start, gain > 3 s.e."]["met"]  # a mean gain alone is not enough
    assert targets["some diffusion RL method: +10 points, gain > 3 s.e."]["methods"] == ["mdpo"]
    table = markdown_table(results)
    assert "| MDPO (3 seeds) | 20.0% | 32.0 ± 0.6% | +12.0 ± 0.6 | 20.8 |" in table
    assert table.index("RFT (control)") < table.index("MDPO")  # the columns' order: controls first
    header, rule = table.splitlines()[2:4]
    assert header.count("|") == rule.count("|") == table.splitlines()[4].count("|")
    plot(results, tmp_path / "rl.png")
    assert (tmp_path / "rl.png").stat().st_size > 0


def test_the_round_two_results_still_render():
    from pathlib import Path

    from mdlm.eval.bench.rl import markdown_table

    old = json.loads((Path(__file__).parents[1] / "results" / "rl-countdown-long" / "rl.json").read_text())
    assert "| diffu-grpo (3 seeds) |" in markdown_table(old)


@pytest.fixture(scope="module")
def starts(tmp_path_factory):
    """An untrained sudoku SFT run, and the same network saved as an AS-ARM and as a causal run."""
    from mdlm import MDLMForMaskedLM
    from tests.conftest import save_untrained_sudoku_run

    root = tmp_path_factory.mktemp("starts")
    sft = save_untrained_sudoku_run(root / "sft")
    out = {"sft": sft}
    for kind, objective, attention in (("asarm", "as-arm", "bidirectional"), ("ar", "ar", "causal")):
        folder = save_untrained_sudoku_run(root / kind)
        model = MDLMForMaskedLM.from_pretrained(folder)
        model.config.objective, model.config.attention = objective, attention
        model.save_pretrained(folder)
        out[kind] = folder
    return out


@pytest.mark.parametrize("methods", [pytest.param(["diffu-grpo"], id="one-column"),
                                     pytest.param(["diffu-grpo", "rft", "ar-grpo", "d2-anyorder"], id="every-column",
                                                  marks=pytest.mark.slow)])
def test_units_run_once_and_the_results_wait_for_every_begun_method(starts, tmp_path, methods):
    """A finished unit is read back, not rerun; a process whose methods are done does not write results while
    another process's method (begun in the same folder) has seeds to go; the last one writes them."""
    from mdlm.eval.bench.rl import main, markdown_table

    common = ["--sft", str(starts["sft"]), "--task", "sudoku", "--quick", "--asarm", str(starts["asarm"]),
              "--ar-sft", str(starts["ar"]), "--run-folder", str(tmp_path / "runs"), "--output-dir",
              str(tmp_path / "out"), "--rollouts", "8", "--eval-examples", "4"]
    (tmp_path / "runs" / "mdpo-seed0").mkdir(parents=True)  # another process has begun MDPO
    assert main(common + ["--methods"] + methods) is None
    record = tmp_path / "runs" / "diffu-grpo-seed1" / "record.json"
    written = record.stat().st_mtime_ns
    assert json.loads(record.read_text())["updates"] == 2  # R 8 x mu 2 / batch 8
    (tmp_path / "runs" / "mdpo-seed1").mkdir()  # and seed 1 of MDPO, by the process of --seeds 1 below
    assert main(common + ["--methods", "mdpo", "--seeds", "0", "--set", "mdpo.learning_rate=1e-3"]) is None
    results = main(common + ["--methods", "mdpo", "--seeds", "1", "--set", "mdpo.learning_rate=1e-3"])
    assert record.stat().st_mtime_ns == written  # diffu-GRPO was not run again
    assert set(results["units"]) == set(methods) | {"mdpo"}
    for method, records in results["units"].items():
        assert [r["seed"] for r in records] == [0, 1]
        assert all(0 <= r["accuracy_after"] <= 1 and r["accuracy_curve"] for r in records), method
    assert [p["rollouts"] for p in results["units"]["diffu-grpo"][0]["reward_curve"]] == [8]  # one generation
    assert (tmp_path / "out" / "rl.png").exists()
    assert results["method_options"]["mdpo"]["learning_rate"] == 1e-3  # --set: what the run used is recorded
    # a one-change run listed beside: the option it changed against the benchmark's own
    beside = main(common + ["--assemble", "--one-change", str(tmp_path / "runs" / "mdpo-seed0")])
    assert beside["one_change"][0]["change"] == {"learning_rate": 1e-3}
    assert "| MDPO | learning_rate 0.001 |" in markdown_table(beside)


def test_a_malformed_one_change_option_is_refused_in_one_line():
    from mdlm.eval.bench.rl import METHOD_OPTIONS, method_options

    with pytest.raises(SystemExit, match="expected METHOD.OPTION=VALUE"):
        method_options(["grpo.learning_rate=1e-3"])
    changed = method_options(["cj-grpo.num_iterations=1"])
    assert changed["cj-grpo"]["num_iterations"] == 1 and METHOD_OPTIONS["cj-grpo"]["num_iterations"] == 2


def test_answer_shapes_count_every_greedy_answer_and_render(starts):
    """rl_diagnose section 4: every held-out greedy answer has one shape (numbers as n); the table shows the
    commonest shape's share."""
    from mdlm.eval.bench.rl_diagnose import answer_shapes, markdown_table
    from mdlm.train.tasks import get_task

    task = get_task("sudoku")
    shapes = answer_shapes([str(starts["sft"])], task, task.dataset("test", 4))
    record = shapes[str(starts["sft"])]
    assert sum(record["shapes"].values()) == 4 and 0 < record["top_shape_share"] <= 1
    assert max(record["shapes"].values()) / 4 == record["top_shape_share"]
    table = markdown_table({"task": "sudoku", "sft_run": "x", "answer_shapes": shapes, "eval_examples": 4})
    assert "Held-out greedy answers by shape" in table and f"{100 * record['top_shape_share']:.0f}%" in table


def test_assemble_waits_for_every_unit_unless_asked_for_what_is_finished(tmp_path):
    from mdlm.eval.bench.rl import METHOD_OPTIONS, QUICK, assemble

    folder = tmp_path / "runs"
    (folder / "diffu-grpo-seed0").mkdir(parents=True)
    (folder / "diffu-grpo-seed1").mkdir()  # begun, not finished
    (folder / "baselines.json").write_text(json.dumps({"sft": {"accuracy": 0.2},
                                                        "best_of_n": {"n": 2, "accuracy": 0.5}}))
    (folder / "diffu-grpo-seed0" / "record.json").write_text(json.dumps(_record("diffu-grpo", 0, 0.2, 0.25)))
    args = (folder, dict(QUICK), METHOD_OPTIONS, "sudoku", tmp_path / "sft", tmp_path / "out", ["diffu-grpo"])
    assert assemble(*args) is None
    results = assemble(*args, require_all=False)
    assert results["not_finished"] == ["diffu-grpo seed 1"] and len(results["units"]["diffu-grpo"]) == 1
    from mdlm.eval.bench.rl import markdown_table

    assert "Not finished (not in the table): diffu-grpo seed 1." in markdown_table(results)


def test_a_bad_set_option_stops_before_anything_runs():
    sizes = rl.resolved_sizes(argparse.Namespace(seeds=None, rollouts=None, batch=None, num_generations=None,
                                                 eval_examples=None, curve_every=None, best_of_n=None),
                              rl.FULL, ("curve_every", "best_of_n"))
    rl.check_method_options(rl.TRAINED, sizes, rl.METHOD_OPTIONS, "countdown")  # the benchmark's own options build
    bad = rl.method_options(["cj-grpo.unmasking_schedule=linear", "cj-grpo.diffusion_steps=16"])
    with pytest.raises(SystemExit, match=r"cj-grpo: .*linear.*--set cj-grpo.OPTION=VALUE"):
        rl.check_method_options(["rft", "cj-grpo"], sizes, bad, "countdown")
    too_many = rl.method_options(["mdpo.sample_train_steps=9"])
    with pytest.raises(SystemExit, match=r"mdpo: sample_train_steps=9"):
        rl.check_method_options(["mdpo"], sizes, too_many, "countdown")
