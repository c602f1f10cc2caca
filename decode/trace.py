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
    step's full prediction and its confidence (recorded by the confidence sampler, for MDPO)."""

    state: torch.Tensor
    revealed: torch.Tensor
    remasked: torch.Tensor
    logprob: torch.Tensor
    x0: torch.Tensor | None = None
    confidence: torch.Tensor | None = None

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

    def record(self, state, revealed, logprob=None, remasked=None, x0=None, confidence=None) -> None:
        if not (self.enabled or self.callback):
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
        )
        if self.enabled:
            self.steps.append(step)
        if self.callback is not None:
            self.callback(step)

    def result(self) -> list[TraceStep] | None:
        return self.steps if self.enabled else None


def reveal_tokens(x, reveal, logits, config, generator, recorder: TraceRecorder):
    """Draw the tokens at the `reveal` positions of x from their logits (float64 Gumbel-max with the
    config's temperature/top-k/top-p), record the step and return the new canvas."""
    from mdlm.kernels import sample_categorical

    draw = sample_categorical(logits[reveal], config.temperature, config.top_k, config.top_p, generator=generator)
    logprob = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    logprob[reveal] = draw.logprob
    recorder.record(x, reveal, logprob)
    x = x.clone()
    x[reveal] = draw.tokens
    return x
