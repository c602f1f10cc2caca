"""Decoding traces: per step, the state before it, which positions were revealed or remasked and with
which log-probabilities. RL finetuning (MDPO, CJ-GRPO) optimises along exactly these steps, and the CLI
replays them (`--live`, `--trace trace.html`). Tensors are kept on the CPU in compact dtypes."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TraceStep:
    """One denoising step of a batch.

    state: (B, L) long, the tokens before the step. revealed / remasked: (B, L) bool, positions that
    became a token / went back to the mask in this step. logprob: (B, L) float64, log p of each token
    revealed in this step under the model (temperature 1; 0 elsewhere). x0 / confidence: (B, L) the
    step's full prediction and its confidence (recorded by the confidence sampler, for MDPO).
    policy_logprob: (B, L) float64, log p of each revealed token at the rollout's temperature (the
    probability the sampler drew it with, before any top-k/top-p; 0 elsewhere and at temperature 0, where
    the draw is the argmax): what a policy-gradient ratio is taken against."""

    state: torch.Tensor
    revealed: torch.Tensor
    remasked: torch.Tensor
    logprob: torch.Tensor
    x0: torch.Tensor | None = None
    confidence: torch.Tensor | None = None
    policy_logprob: torch.Tensor | None = None

    def after(self, mask_token_id: int, final: torch.Tensor) -> torch.Tensor:
        """The state after this step, given the final tokens (revealed tokens never change later
        except under remasking, where the next step's `state` is authoritative)."""
        out = self.state.clone()
        out[self.revealed] = final[self.revealed]
        out[self.remasked] = mask_token_id
        return out


class TraceRecorder:
    """Collects `TraceStep`s when enabled; a no-op otherwise, so samplers call it unconditionally."""

    def __init__(self, enabled: bool, callback=None):
        self.enabled = enabled
        self.callback = callback
        self.steps: list[TraceStep] = []

    @property
    def active(self) -> bool:
        return bool(self.enabled or self.callback)

    def record(self, state, revealed, logprob=None, remasked=None, x0=None, confidence=None,
               policy_logprob=None) -> None:
        if not self.active:
            return
        if logprob is None:
            logprob = torch.zeros(state.shape, dtype=torch.float64)
        logprob = torch.where(revealed, logprob.double(), torch.zeros((), dtype=torch.float64))
        step = TraceStep(
            state=state.detach().cpu().clone(),
            revealed=revealed.detach().cpu().clone(),
            remasked=(remasked if remasked is not None else torch.zeros_like(revealed)).detach().cpu().clone(),
            logprob=logprob.detach().cpu(),
            x0=None if x0 is None else x0.detach().cpu().clone(),
            confidence=None if confidence is None else confidence.detach().double().cpu(),
            policy_logprob=None if policy_logprob is None else torch.where(
                revealed, policy_logprob.double(), torch.zeros((), dtype=torch.float64)).detach().cpu(),
        )
        if self.enabled:
            self.steps.append(step)
        if self.callback is not None:
            self.callback(step)

    def result(self) -> list[TraceStep] | None:
        return self.steps if self.enabled else None


@dataclass
class Trajectory:
    """One batched rollout as RL trains on it: S steps of a batch of B canvases of length L.

    canvases (S, B, L) long: the canvas before each step; final (B, L): the decoded tokens.
    revealed / remasked (S, B, L) bool: what each step committed / sent back to the mask (RCR).
    logprob (S, B, L) float64: log p of each revealed token at the rollout temperature (0 elsewhere).
    x0 (S, B, L) long and confidence (S, B, L) float64: each step's full prediction x0-hat (the drawn
    token at every masked position) and its score, kept only when asked (MDPO scores x0-hat per step).
    Memory is O(S B L): tokens, never a vocabulary axis."""

    canvases: torch.Tensor
    revealed: torch.Tensor
    remasked: torch.Tensor
    logprob: torch.Tensor
    final: torch.Tensor
    temperature: float
    x0: torch.Tensor | None = None
    confidence: torch.Tensor | None = None

    @classmethod
    def from_steps(cls, steps: list[TraceStep], final: torch.Tensor, temperature: float,
                   keep_x0: bool = False) -> "Trajectory":
        if not steps:
            raise ValueError("no steps were recorded: decode with DecodeConfig(trace=True) (nothing was masked?)")
        if any(s.policy_logprob is None for s in steps):
            raise ValueError("these steps carry no rollout log-probabilities; record them with the confidence "
                             "sampler (DecodeConfig(sampler='confidence', trace=True))")
        stack = lambda name: torch.stack([getattr(s, name) for s in steps])  # noqa: E731
        return cls(canvases=stack("state"), revealed=stack("revealed"), remasked=stack("remasked"),
                   logprob=stack("policy_logprob"), final=final.detach().cpu().clone(), temperature=temperature,
                   x0=stack("x0") if keep_x0 and steps[0].x0 is not None else None,
                   confidence=stack("confidence") if keep_x0 and steps[0].confidence is not None else None)

    @property
    def num_steps(self) -> int:
        return self.canvases.shape[0]

    def after(self, step: int) -> torch.Tensor:
        """The canvas after `step` (the next step's canvas, or the final tokens)."""
        return self.canvases[step + 1] if step + 1 < self.num_steps else self.final

    def to(self, device) -> "Trajectory":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return Trajectory(**moved)
