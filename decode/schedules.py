"""Moved: the unmasking schedules are `mdlm.decode.unmasking` (this name was easy to confuse with
`mdlm.schedules`, the masking schedule alpha_t). A short-lived re-export for old imports."""

from mdlm.decode.unmasking import (ascending_blocks, ascending_counts, ascending_num_steps, cosine_counts,  # noqa: F401
                                   eoser_gamma, step_counts, uniform_counts)
