"""The round-2 RL benchmark (`mdlm.eval.bench.rl_round2`, which renders the committed round-2 results):
its summary, table, plot, baselines-only process and the assembly of a benchmark split over processes."""

from __future__ import annotations

import math

import pytest


def _fake_results():
    """A results dict shaped as main() builds it (2 seeds, hand-picked numbers)."""
    def evaluation(acc):
        return {"decoders": {name: {"accuracy": acc, "reward": acc, "nfe": nfe} for name, nfe in
                             (("one-per-step", 24), ("half-steps", 12), ("ass-eoser", 4), ("rcr", 12))},
                "pass@2": acc, "over_denoising_rate": 0.0}

    def seed(acc, s):
        return {"seed": s, "seconds": 1.0, "eval": evaluation(acc),
                "training": {"kl_final": 0.01, "entropy_mean": 0.3, "frac_reward_zero_std": 0.5,
                             "nfe_per_rollout": 12, "seconds_per_update": 2.0},
                "curve": [{"updates": 2, "rollouts": 8, "accuracy": acc - 0.1}, {"updates": 4, "rollouts": 16,
                                                                                  "accuracy": acc}]}

    methods = {m: {"best_lr": 3e-5, "sweep": {"3e-05": a}, "steps": 4, "seeds": [seed(a, 0), seed(a + 0.1, 1)]}
               for m, a in (("diffu-grpo", 0.4), ("mdpo", 0.6), ("cj-grpo", 0.45))}
    return {"task": "sudoku", "sft_run": "runs/sft", "sizes": {"seeds": [0, 1], "rollouts": 16, "batch": 4,
                                                                "num_generations": 2, "pass_k": 2},
            "eval_examples": 16, "sft": evaluation(0.4), "best_of_n": {"n": 4, "accuracy": 0.5},
            "methods": methods, "seconds": 60.0}


def test_summary_targets_table_and_plot(tmp_path):
    from mdlm.eval.bench.rl_round2 import markdown_table, plot, summarise

    results = _fake_results()
    results["summary"] = summarise(results)
    per_method, targets = results["summary"]["per_method"], results["summary"]["targets"]
    assert math.isclose(per_method["mdpo"]["one-per-step"]["mean"], 0.65)
    assert math.isclose(targets["mdpo: +10 points over SFT"]["gain_points"], 25.0)
    assert targets["mdpo: +10 points over SFT"]["met"] and not targets["cj-grpo: +10 points over SFT"]["met"]
    # diffu-GRPO's final mean is 0.45; both MDPO seeds pass it at update 2 of diffu-GRPO's 4: not <= 4/3
    reach = targets["mdpo: reaches diffu-GRPO's final accuracy in <= 1/3 of its updates"]
    assert reach["mdpo_updates_per_seed"] == [2, 2] and not reach["met"]
    table = markdown_table(results)
    assert "| mdpo (2 seeds) | 65.0% ± 5.0 |" in table and "best-of-4" in table
    plot(results, tmp_path / "rl.png")
    assert (tmp_path / "rl.png").stat().st_size > 0


@pytest.mark.slow  # the round-2 benchmark's process split; its results are committed, its runs are not redone
def test_a_baselines_only_process_keeps_its_numbers(tmp_path, monkeypatch):
    """`--methods` with none runs only the baselines (one process of a split benchmark) and leaves them
    in partial.json for --assemble, so a process stopped later loses nothing it measured."""
    import json

    from mdlm.eval.bench.rl_round2 import main
    from tests.conftest import save_untrained_sudoku_run

    sft = save_untrained_sudoku_run(tmp_path / "sft")
    monkeypatch.setenv("MDLM_BENCH_RUNS", str(tmp_path / "runs"))
    main(["--sft", str(sft), "--quick", "--methods", "--eval-examples", "4", "--best-of-n", "2",
          "--pass-k", "2", "--output-dir", str(tmp_path / "out")])
    partial = json.loads((tmp_path / "runs" / "rl-quick" / "partial.json").read_text())
    assert partial["methods"] == {} and partial["best_of_n"]["n"] == 2
    assert set(partial["sft"]["decoders"]) == {"one-per-step", "half-steps", "ass-eoser", "rcr"}
    assert partial["seconds"] > 0  # --assemble reports the longest process's wall time from these


def test_training_reward_fifths_and_their_column(tmp_path):
    """The rollout reward's first and last fifth of generations (one generation alone is a few prompts) come
    from metrics.jsonl; the table shows them only when every method has them (older results lack them)."""
    import json

    from mdlm.eval.bench.rl_round2 import markdown_table, summarise, training_metrics

    rows = [{"step": i + 1, "loss": 0.0, "reward": r, "kl": 0.0, "entropy": 0.5, "frac_reward_zero_std": 0.0,
             "nfe_per_rollout": 12, "step_time": 0.1} for i, r in enumerate([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7,
                                                                              0.8, 0.9, 1.0])]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = training_metrics(tmp_path)
    assert math.isclose(metrics["reward_first_fifth"], 0.15) and math.isclose(metrics["reward_last_fifth"], 0.95)
    results = _fake_results()
    results["summary"] = summarise(results)
    assert "first -> last fifth" not in markdown_table(results)
    for block in results["methods"].values():
        for seed in block["seeds"]:
            seed["training"].update(reward_first_fifth=0.5, reward_last_fifth=0.75)
    results["summary"] = summarise(results)
    table = markdown_table(results)
    assert "| rollout reward, first -> last fifth | lr |" in table and "| 0.500 -> 0.750 | 3e-05 |" in table
    header, rule, sft_row = table.splitlines()[2:5]
    assert header.count("|") == rule.count("|") == sft_row.count("|")


def test_a_batch_that_does_not_hold_whole_groups_is_refused(tmp_path):
    import pytest

    from mdlm.eval.bench.rl_round2 import main

    with pytest.raises(SystemExit, match="multiple of --num-generations 4"):
        main(["--sft", str(tmp_path), "--batch", "10", "--num-generations", "4"])


def test_assemble_pools_one_methods_seeds_from_several_processes(tmp_path):
    """A method's seeds run in separate processes (same lr, same budget) are pooled by --assemble; the sweep
    kept is the lowest seed's; a seed given twice or a different lr is refused."""
    import json

    import pytest

    from mdlm.eval.bench.rl_round2 import assemble

    full = _fake_results()
    base = {**full, "methods": {m: b for m, b in full["methods"].items() if m != "cj-grpo"}}
    base["sizes"] = {**base["sizes"], "seeds": [0]}
    cj = full["methods"]["cj-grpo"]
    folders = []
    for name, part in (("base", base),
                       ("cj0", {"sizes": base["sizes"], "methods": {"cj-grpo": {**cj, "seeds": cj["seeds"][:1]}}}),
                       ("cj1", {"sizes": base["sizes"], "methods": {"cj-grpo": {**cj, "sweep": {"3e-05": 0.9},
                                                                                 "seeds": cj["seeds"][1:]}}})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "partial.json").write_text(json.dumps(part))
        folders.append(tmp_path / name)
    results = assemble([folders[2], folders[0], folders[1]], tmp_path / "out")
    pooled = results["methods"]["cj-grpo"]
    assert [s["seed"] for s in pooled["seeds"]] == [0, 1] and pooled["sweep"] == {"3e-05": 0.45}
    assert results["summary"]["per_method"]["cj-grpo"]["one-per-step"]["n"] == 2
    assert results["sizes"]["seeds"] == [0, 1]
    with pytest.raises(ValueError, match=r"seed\(s\) \[0\] come from more than one process"):
        assemble([folders[0], folders[1], folders[1]], tmp_path / "out2")
    other = json.loads((folders[2] / "partial.json").read_text())
    other["methods"]["cj-grpo"]["best_lr"] = 1e-4
    (folders[2] / "partial.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="only seeds of one setting can be pooled"):
        assemble(folders, tmp_path / "out3")
