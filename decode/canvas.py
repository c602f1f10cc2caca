"""The canvas every decoder works on, and the one place padding and position ids are computed.

Canvas: tokens (B, L) long, mask ids where something is to be generated, every other token fixed.
Rows of different lengths are padded (left for generation, so that every row ends at the same column;
right for scoring) and `valid` (B, L) is False at padding; position ids count from 0 at each row's
first valid token, so padding never shifts a row's positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def default_position_ids(valid: torch.Tensor) -> torch.Tensor:
    """Position ids (B, L): 0 at each row's first valid token, counting up (padding gets 0 or the last)."""
    return (valid.long().cumsum(-1) - 1).clamp_min(0)


def pad_rows(rows: list[list[int]], pad_id: int, side: str = "left", device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of token ids padded with `pad_id` to the longest -> (tokens (B, L) long, valid (B, L) bool)."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    width = max((len(r) for r in rows), default=0)
    tokens = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        where = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        tokens[i, where] = torch.tensor(row, dtype=torch.long)
        valid[i, where] = True
    return tokens.to(device), valid.to(device)


@dataclass
class Canvas:
    """tokens (B, L) long; valid (B, L) bool (False = padding); positions (B, L) long; generated (B, L)
    bool (the positions to fill: mask ids that are not padding); mask_token_id."""

    tokens: torch.Tensor
    valid: torch.Tensor
    positions: torch.Tensor
    generated: torch.Tensor
    mask_token_id: int

    @classmethod
    def of(cls, denoiser, tokens: torch.Tensor, valid: torch.Tensor | None = None,
           positions: torch.Tensor | None = None) -> "Canvas":
        """Validate a canvas for `denoiser` and complete `valid` (all True) and `positions` (counted from
        each row's first valid token); malformed input gets an error naming the fix. A `Canvas` comes
        back as it is (on the denoiser's device)."""
        if isinstance(tokens, Canvas):
            if valid is not None or positions is not None:
                raise ValueError("pass valid / position_ids inside the Canvas, not beside it")
            return tokens.to(denoiser.device)
        if tokens.dim() != 2:
            raise ValueError(f"the canvas must be (batch, length) token ids, got shape {tuple(tokens.shape)}")
        tokens = tokens.long()
        valid = torch.ones_like(tokens, dtype=torch.bool) if valid is None else valid.to(tokens.device, torch.bool)
        if valid.shape != tokens.shape:
            raise ValueError(f"valid has shape {tuple(valid.shape)} but the canvas {tuple(tokens.shape)}")
        if positions is None:
            positions = default_position_ids(valid)
        elif positions.shape != tokens.shape:
            raise ValueError(f"position_ids has shape {tuple(positions.shape)} but the canvas {tuple(tokens.shape)}")
        context = denoiser.context
        if context is not None and (int(positions[valid].max()) if valid.any() else 0) >= context:
            longest = int(valid.sum(-1).max())
            raise ValueError(
                f"a canvas row holds {longest} tokens (prompt + tokens to generate) but the model's context is "
                f"{context}; shorten the prompt or generate fewer tokens (--max-new-tokens)"
            )
        mask_id = denoiser.require_mask_id()
        return cls(tokens, valid, positions, (tokens == mask_id) & valid, mask_id)

    @classmethod
    def from_rows(cls, denoiser, rows: list[list[int]], pad_id: int, device=None) -> "Canvas":
        """Left-padded canvas of token-id rows (mask ids where to generate)."""
        tokens, valid = pad_rows(rows, pad_id, "left", device)
        return cls.of(denoiser, tokens, valid)

    def to(self, device) -> "Canvas":
        move = lambda t: t.to(device)  # noqa: E731
        return Canvas(move(self.tokens), move(self.valid), move(self.positions), move(self.generated),
                      self.mask_token_id)
