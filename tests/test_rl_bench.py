"""The RL benchmark's arithmetic: pass@k, reward-selected best-of-n, mean and standard error."""

from __future__ import annotations

import math

from mdlm.eval.bench.rl import best_of_n, mean_se, pass_at_k


def test_pass_at_k_and_best_of_n_on_hand_made_samples():
    # 3 samples (rows) of 4 prompts (columns)
    correct = [[1, 0, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]]
    rewards = [[1.0, 0.2, 0.5, 0.1], [0.5, 0.9, 1.0, 0.1], [1.0, 0.1, 0.9, 0.1]]
    assert pass_at_k(correct) == 0.5  # prompts 0 and 2 solved by some sample
    # best reward: prompt 0 sample 0 (tie with 2: the first), prompt 1 sample 1 (wrong), prompt 2 sample 1, prompt 3 sample 0
    assert best_of_n(rewards, correct) == 0.5


def test_mean_and_standard_error():
    stat = mean_se([0.4, 0.5, 0.6])
    assert math.isclose(stat["mean"], 0.5) and math.isclose(stat["se"], 0.1 / math.sqrt(3))
    assert math.isnan(mean_se([0.3])["se"])
