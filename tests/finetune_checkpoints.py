"""Tiny family checkpoints for the finetuning tests: folders as the hub serves a family whose modeling code
ships with the checkpoint (config with `auto_map`, the modeling file beside it, safetensors, a tokenizer),
around the stand-ins of `tests/family_models.py` (the families' calling conventions: LLaDA's 2-D mask and
no positions, Dream's shifted logits and 4-D mask, SDAR's block-causal 4-D mask).

The architectures are named `Tiny*StandIn` and the family is given by name (`--family`), so that these
folders go through remote code even where a family has a native implementation. The tokenizer is a
byte-level BPE of the sudoku task's text (the RL tests' task), with a chat template for the chat test."""

from __future__ import annotations

import importlib.util

import torch

MODELING = '''
from transformers import PretrainedConfig, PreTrainedModel

from tests.family_models import BlockDiffusionLike, DreamLike, LLaDALike, TinyCore


class TinyStandInConfig(PretrainedConfig):
    model_type = "tiny-stand-in"


class _StandIn(PreTrainedModel):
    config_class = TinyStandInConfig
    supports_gradient_checkpointing = False

    def __init__(self, config):
        super().__init__(config)
        self.core = TinyCore(config.vocab_size, hidden=config.hidden_size, heads=2, layers=2, sharpness=1.0)
        self.post_init()

    def _init_weights(self, module):
        pass  # TinyCore's own initialisation

    def get_output_embeddings(self):
        return self.core.lm_head


class TinyLLaDAStandIn(_StandIn):
    forward = LLaDALike.forward


class TinyDreamStandIn(_StandIn):
    forward = DreamLike.forward


class TinySDARStandIn(_StandIn):
    forward = BlockDiffusionLike.forward
'''

ARCHITECTURES = {"llada": "TinyLLaDAStandIn", "dream": "TinyDreamStandIn", "sdar": "TinySDARStandIn"}
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}<a>{% endif %}"


def sudoku_tokenizer():
    from mdlm.tokenizer import train_tokenizer
    from mdlm.train.tasks import get_task

    data = get_task("sudoku").dataset("train", 64)
    return train_tokenizer(list(data["prompt"]) + list(data["answer"]) + ["<user><a>"], vocab_size=260)


def modules_cache(tmp_path, monkeypatch):
    """transformers copies remote code into a module cache: a temporary one here."""
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf_modules"))


def family_folder(folder, family: str, hidden: int = 32, block_size: int = 4, seed: int = 0, chat: bool = False):
    """A checkpoint folder of `family` ("llada", "dream" or "sdar") -> folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "modeling_tiny.py").write_text(MODELING)
    spec = importlib.util.spec_from_file_location("modeling_tiny", folder / "modeling_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tokenizer = sudoku_tokenizer()
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    architecture = ARCHITECTURES[family]
    config = module.TinyStandInConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, max_position_embeddings=256, block_size=block_size,
        mask_token_id=tokenizer.mask_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, architectures=[architecture],
        auto_map={"AutoConfig": "modeling_tiny.TinyStandInConfig", "AutoModel": f"modeling_tiny.{architecture}",
                  "AutoModelForCausalLM": f"modeling_tiny.{architecture}",
                  "AutoModelForMaskedLM": f"modeling_tiny.{architecture}"})
    torch.manual_seed(seed)
    getattr(module, architecture)(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
