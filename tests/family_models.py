"""Tiny random stand-ins for the public diffusion LMs whose modeling code ships with their checkpoints.

Each reproduces its family's published forward signature (the keyword arguments it accepts: passing
another raises TypeError, as the real code would), its output form, its logit shift and its attention
convention, around one small rotary transformer (`TinyCore`, which grows a transformers DynamicCache in
place as Hugging Face models do). `reference_logits(family, model, ids)` calls each one the way the
family's own generation code does, independently of `mdlm.decode.families`, so that the adapter is
checked against it. Nothing is downloaded: the weights are random and the configs are built here.
"""

from __future__ import annotations


import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PretrainedConfig
from transformers.modeling_outputs import CausalLMOutputWithPast, MaskedLMOutput


def family_config(architecture: str, model_type: str, vocab_size: int, **fields) -> PretrainedConfig:
    config = PretrainedConfig(architectures=[architecture], vocab_size=vocab_size, max_position_embeddings=64,
                              **fields)
    config.model_type = model_type
    return config


def rotate(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotary embedding of x (B, H, L, D) at positions (B, L)."""
    half = x.shape[-1] // 2
    freqs = 1.0 / (100.0 ** (torch.arange(half, dtype=torch.float32) / half))
    angle = positions[:, None, :, None].float() * freqs  # (B, 1, L, half)
    cos, sin = angle.cos(), angle.sin()
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, a * sin + b * cos], -1)


class TinyCore(nn.Module):
    """Embedding, pre-norm attention + MLP blocks with rotary positions, LM head."""

    def __init__(self, vocab_size: int, hidden: int = 32, heads: int = 2, layers: int = 2, sharpness: float = 3.0):
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab_size, hidden)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "norm1": nn.LayerNorm(hidden), "qkv": nn.Linear(hidden, 3 * hidden), "out": nn.Linear(hidden, hidden),
            "norm2": nn.LayerNorm(hidden), "up": nn.Linear(hidden, 2 * hidden), "down": nn.Linear(2 * hidden, hidden),
        }) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab_size)
        with torch.no_grad():  # large weights: conditionals that depend strongly on the context
            for p in self.parameters():
                if p.dim() == 2:
                    p.mul_(sharpness)

    def forward(self, ids, positions, attention_mask=None, past_key_values=None):
        """attention_mask: None, or (B, 1, Lq, Lk) bool (True = attend) or additive float."""
        B, L = ids.shape
        x = self.embed(ids)
        for index, block in enumerate(self.blocks):
            q, k, v = block["qkv"](block["norm1"](x)).view(B, L, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            q, k = rotate(q, positions), rotate(k, positions)
            if past_key_values is not None:
                k, v = past_key_values.update(k, v, index)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
            x = x + block["out"](attended.transpose(1, 2).reshape(B, L, -1))
            x = x + block["down"](F.gelu(block["up"](block["norm2"](x))))
        return self.lm_head(self.norm(x))


class TinyFamilyModel(nn.Module):
    def __init__(self, config: PretrainedConfig, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.config = config
        self.core = TinyCore(config.vocab_size)

    def get_output_embeddings(self):
        return self.core.lm_head


def key_mask(attention_mask_2d, length_q):
    """(B, L) 0/1 padding mask -> (B, 1, Lq, L) bool (padding keys hidden)."""
    return attention_mask_2d.bool()[:, None, None, :].expand(-1, 1, length_q, -1)


class LLaDALike(TinyFamilyModel):
    """LLaDA / LLaDA-MoE: bidirectional, a 2-D padding mask, no position_ids argument (rotary positions
    are the columns), `.logits`."""

    def forward(self, input_ids, input_embeddings=None, attention_mask=None, attention_bias=None,
                past_key_values=None, labels=None, use_cache=False, output_attentions=False,
                output_hidden_states=None, return_dict=None):
        columns = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        mask = None if attention_mask is None else key_mask(attention_mask, input_ids.shape[1])
        return CausalLMOutputWithPast(logits=self.core(input_ids, columns, mask))


class DreamLike(TinyFamilyModel):
    """Dream / DiffuCoder: a 4-D bool mask and position ids; `.logits` in the AR layout (column i holds
    the prediction of token i + 1), which Dream's generation code shifts right by one."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, cache_position=None, num_logits_to_keep=0):
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        if attention_mask is not None and attention_mask.dim() != 4:
            raise ValueError("this model's SDPA path takes a 4-D attention mask")
        return MaskedLMOutput(logits=self.core(input_ids, position_ids, attention_mask))


class BlockDiffusionLike(TinyFamilyModel):
    """LLaDA2 (additive 4-D mask) / SDAR (bool 4-D mask): the caller builds the block-causal mask, gives
    position ids and a transformers Cache (`past_key_values`, grown in place)."""

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, cache_position=None):
        if attention_mask is None or attention_mask.dim() != 4:
            raise ValueError("block diffusion needs the caller's 4-D block-causal attention mask")
        if not use_cache:
            past_key_values = None
        logits = self.core(input_ids, position_ids, attention_mask, past_key_values)
        return CausalLMOutputWithPast(logits=logits, past_key_values=past_key_values)


class MDLMOWTLike(TinyFamilyModel):
    """MDLM-OWT: no attention mask, a `timesteps` input, a plain tensor out (return_dict unset), raw
    logits (its sampler applies SUBS)."""

    def forward(self, input_ids=None, timesteps=None, output_hidden_states=None, return_dict=None):
        logits = self.core(input_ids, torch.arange(input_ids.shape[1]).expand_as(input_ids))
        return MaskedLMOutput(logits=logits) if return_dict else logits


class BD3LMLike(TinyFamilyModel):
    """BD3-LM: `timesteps`, `sample_mode` / `store_kv`; in sample mode the model itself applies
    block-causal attention of config.block_size over the sequence it is given; a tensor out."""

    def forward(self, input_ids=None, timesteps=None, sample_mode=False, store_kv=False,
                output_hidden_states=None, return_dict=None):
        if not sample_mode:
            raise ValueError("outside sample mode BD3-LM expects the training input x_t concatenated with x_0")
        L = input_ids.shape[1]
        block = torch.arange(L) // self.config.block_size
        mask = (block[None, :] <= block[:, None])[None, None]
        logits = self.core(input_ids, torch.arange(L).expand_as(input_ids), mask)
        return MaskedLMOutput(logits=logits) if return_dict else logits


def block_causal_mask(length: int, block_size: int, additive: bool, dtype=torch.float32) -> torch.Tensor:
    """(1, 1, L, L) block-causal mask as LLaDA2 (additive: 0 / -inf) and SDAR (1 / 0) build it."""
    blocks = -(-length // block_size)
    allowed = torch.tril(torch.ones(blocks, blocks)).repeat_interleave(block_size, 0).repeat_interleave(block_size, 1)
    allowed = allowed[:length, :length][None, None]
    return allowed.log().to(dtype) if additive else allowed.bool()


def reference_logits(family: str, model, ids: torch.Tensor, mask_id: int, block_size: int | None = None):
    """(B, L, V) logits of full-valid rows as the family's own generation code reads them, mask at -inf."""
    from mdlm.families import NativeDiffusionLM

    with torch.no_grad():
        if isinstance(model, NativeDiffusionLM):  # its own mask: bidirectional, or block-causal by config.block_size
            logits = model(ids).logits
            if family == "dream":
                logits = torch.cat([logits[:, :1], logits[:, :-1]], 1)
        elif family in ("llada", "llada-moe"):
            logits = model(ids).logits
        elif family == "dream":
            raw = model(ids, attention_mask=None, position_ids=None).logits
            logits = torch.cat([raw[:, :1], raw[:, :-1]], 1)
        elif family in ("llada2", "sdar"):
            mask = block_causal_mask(ids.shape[1], block_size, additive=family == "llada2")
            logits = model(ids, attention_mask=mask, position_ids=torch.arange(ids.shape[1]).expand_as(ids)).logits
        elif family == "mdlm-owt":
            logits = model(ids, timesteps=torch.zeros(ids.shape[0]))
        elif family == "bd3lm":
            logits = model(ids, timesteps=torch.zeros(ids.shape[0]), sample_mode=True, store_kv=False)
        elif family == "roberta":  # RoBERTa numbers the positions of non-pad tokens from padding_idx + 1
            positions = torch.arange(ids.shape[1]).expand_as(ids) + model.config.pad_token_id + 1
            logits = model(input_ids=ids, position_ids=positions).logits
        else:  # the other transformers masked LMs
            logits = model(input_ids=ids).logits
    logits = logits.float().clone()
    logits[..., mask_id] = float("-inf")
    return logits


# ------------------------------------------------------------------------------------------------------
# Tiny checkpoints in the PUBLISHED layout of the native families (LLaDA, Dream, SDAR), and a reference
# forward written from the published architectures (not from mdlm.families), reading the published names.

PUBLISHED = {
    # family: (config.json fields at tiny sizes, the published names and values otherwise; special tokens)
    "llada": (dict(
        architectures=["LLaDAModelLM"], model_type="llada",
        auto_map={"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
                  "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
        activation_type="silu", alibi=False, attention_layer_norm=False, block_type="llama", d_model=32,
        embedding_size=126464, vocab_size=126464, eos_token_id=126081, pad_token_id=126081, include_bias=False,
        include_qkv_bias=False, input_emb_norm=False, layer_norm_type="rms", mask_token_id=126336,
        max_sequence_length=4096, mlp_hidden_size=96, mlp_ratio=4, n_heads=4, n_kv_heads=4, n_layers=2,
        rms_norm_eps=1e-5, rope=True, rope_full_precision=True, rope_theta=500000.0, scale_logits=False,
        weight_tying=False, torch_dtype="bfloat16"),
        {"<|startoftext|>": 126080, "<|endoftext|>": 126081, "<|mdm_mask|>": 126336, "<|start_header_id|>": 126346,
         "<|end_header_id|>": 126347, "<|eot_id|>": 126348},
        dict(bos_token="<|startoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>",
             mask_token="<|mdm_mask|>")),
    "dream": (dict(
        architectures=["DreamModel"], model_type="Dream",
        auto_map={"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        attention_dropout=0.0, bos_token_id=151643, eos_token_id=151643, pad_token_id=151643, hidden_act="silu",
        hidden_size=32, intermediate_size=96, mask_token_id=151666, max_position_embeddings=131072,
        max_window_layers=2, num_attention_heads=4, num_hidden_layers=2, num_key_value_heads=2, rms_norm_eps=1e-6,
        rope_scaling=None, rope_theta=1000000.0, sliding_window=None, tie_word_embeddings=False,
        use_sliding_window=False, vocab_size=152064, torch_dtype="bfloat16"),
        {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|beginoftext|>": 151665,
         "<|mask|>": 151666},
        dict(bos_token="<|beginoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>", mask_token="<|mask|>")),
    "sdar": (dict(
        architectures=["SDARForCausalLM"], model_type="sdar",
        auto_map={"AutoConfig": "configuration_sdar.SDARConfig", "AutoModel": "modeling_sdar.SDARModel",
                  "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM"},
        attention_bias=False, attention_dropout=0.0, block_size=4, bos_token_id=151643, eos_token_id=151645,
        head_dim=12, hidden_act="silu", hidden_size=32, intermediate_size=96, max_position_embeddings=32768,
        max_window_layers=2, num_attention_heads=4, num_hidden_layers=2, num_key_value_heads=2, rms_norm_eps=1e-6,
        rope_scaling=None, rope_theta=1000000.0, sliding_window=None, tie_word_embeddings=True,
        use_sliding_window=False, vocab_size=151936, torch_dtype="bfloat16"),
        {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|MASK|>": 151669},
        dict(eos_token="<|im_end|>", pad_token="<|endoftext|>", mask_token="<|MASK|>")),
    "mdlm-owt": (dict(
        architectures=["MDLM"], model_type="mdlm",
        auto_map={"AutoConfig": "configuration_mdlm.MDLMConfig", "AutoModelForMaskedLM": "modeling_mdlm.MDLM"},
        cond_dim=16, dropout=0.1, hidden_dim=32, model_length=1024, n_blocks=2, n_heads=4, return_dict=False,
        time_conditioning=False, vocab_size=50258),
        {"<|endoftext|>": 50256}, dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>")),
    "bd3lm": (dict(
        architectures=["BD3LM"], model_type="bd3lm",
        auto_map={"AutoConfig": "configuration_bd3lm.BD3LMConfig", "AutoModelForMaskedLM": "modeling_bd3lm.BD3LM"},
        block_size=4, cond_dim=16, dropout=0.1, hidden_dim=32, model_length=1024, n_blocks=2, n_heads=4,
        time_conditioning=False, attn_backend="sdpa", cross_attn=True, adaln=True, causal=False, vocab_size=50258),
        {"<|endoftext|>": 50256}, dict(eos_token="<|endoftext|>", pad_token="<|endoftext|>")),
}
DIT_FAMILIES = ("mdlm-owt", "bd3lm")
WORDS = 60  # ordinary tokens w0..w59 at ids 0..59
CODE_THAT_MUST_NOT_RUN = "raise RuntimeError('the checkpoint folder\\'s code was run')\n"
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> {% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")


def published_weights(family: str, fields: dict, seed: int = 0, scale: float = 0.2) -> dict:
    """Random weights under the family's published names (large enough for sharp conditionals)."""
    g = torch.Generator().manual_seed(seed)

    def w(*shape):
        return torch.randn(*shape, generator=g) * (scale if len(shape) == 2 else 0.1)

    def norm(n):
        return 1 + torch.randn(n, generator=g) * 0.1

    state = {}
    if family in DIT_FAMILIES:  # MDLM's / BD3-LM's DiT under the Hugging Face wrapper's `backbone.`
        d, c, vocab = fields["hidden_dim"], fields["cond_dim"], fields["vocab_size"]
        state.update({"backbone.vocab_embed.embedding": w(vocab, d), "backbone.sigma_map.mlp.0.weight": w(c, 256),
                      "backbone.sigma_map.mlp.0.bias": w(c), "backbone.sigma_map.mlp.2.weight": w(c, c),
                      "backbone.sigma_map.mlp.2.bias": w(c), "backbone.rotary_emb.inv_freq": torch.zeros(d // 8)})
        for i in range(fields["n_blocks"]):
            p = f"backbone.blocks.{i}."
            state.update({p + "norm1.weight": norm(d), p + "norm2.weight": norm(d), p + "attn_qkv.weight": w(3 * d, d),
                          p + "attn_out.weight": w(d, d), p + "mlp.0.weight": w(4 * d, d), p + "mlp.0.bias": w(4 * d),
                          p + "mlp.2.weight": w(d, 4 * d), p + "mlp.2.bias": w(d),
                          p + "adaLN_modulation.weight": w(6 * d, c), p + "adaLN_modulation.bias": w(6 * d)})
        state.update({"backbone.output_layer.norm_final.weight": norm(d),
                      "backbone.output_layer.linear.weight": w(vocab, d), "backbone.output_layer.linear.bias": w(vocab),
                      "backbone.output_layer.adaLN_modulation.weight": w(2 * d, c),
                      "backbone.output_layer.adaLN_modulation.bias": w(2 * d)})
        return state
    if family == "llada":
        d, heads, f = fields["d_model"], fields["n_heads"], fields["mlp_hidden_size"]
        kv = fields["n_kv_heads"] * d // heads
        state["model.transformer.wte.weight"] = w(fields["embedding_size"], d)
        for i in range(fields["n_layers"]):
            p = f"model.transformer.blocks.{i}."
            state.update({p + "attn_norm.weight": norm(d), p + "ff_norm.weight": norm(d),
                          p + "q_proj.weight": w(d, d), p + "k_proj.weight": w(kv, d), p + "v_proj.weight": w(kv, d),
                          p + "attn_out.weight": w(d, d), p + "ff_proj.weight": w(f, d), p + "up_proj.weight": w(f, d),
                          p + "ff_out.weight": w(d, f)})
        state["model.transformer.ln_f.weight"] = norm(d)
        state["model.transformer.ff_out.weight"] = w(fields["embedding_size"], d)
        return state
    d, heads, f = fields["hidden_size"], fields["num_attention_heads"], fields["intermediate_size"]
    head_dim = fields.get("head_dim") or d // heads
    q, kv = heads * head_dim, fields["num_key_value_heads"] * head_dim
    state["model.embed_tokens.weight"] = w(fields["vocab_size"], d)
    for i in range(fields["num_hidden_layers"]):
        p = f"model.layers.{i}."
        state.update({p + "input_layernorm.weight": norm(d), p + "post_attention_layernorm.weight": norm(d),
                      p + "self_attn.q_proj.weight": w(q, d), p + "self_attn.k_proj.weight": w(kv, d),
                      p + "self_attn.v_proj.weight": w(kv, d), p + "self_attn.o_proj.weight": w(d, q),
                      p + "mlp.gate_proj.weight": w(f, d), p + "mlp.up_proj.weight": w(f, d),
                      p + "mlp.down_proj.weight": w(d, f)})
        if family == "dream":  # Qwen2: q/k/v biases
            state.update({p + "self_attn.q_proj.bias": w(q), p + "self_attn.k_proj.bias": w(kv),
                          p + "self_attn.v_proj.bias": w(kv)})
        if family == "sdar":  # Qwen3: per-head q/k RMSNorm
            state.update({p + "self_attn.q_norm.weight": norm(head_dim), p + "self_attn.k_norm.weight": norm(head_dim)})
    state["model.norm.weight"] = norm(d)
    if not fields.get("tie_word_embeddings"):
        state["lm_head.weight"] = w(fields["vocab_size"], d)
    return state


def published_tokenizer(family: str):
    """A small real tokenizer (word level) whose special tokens sit at the family's real ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    _, specials, roles = PUBLISHED[family]
    vocab = {f"w{i}": i for i in range(WORDS)}
    vocab["<unk>"] = WORDS
    vocab.update(specials)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(list(specials))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", **roles)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def write_published_checkpoint(folder, family: str, seed: int = 0, **overrides):
    """`folder` as the hub holds a checkpoint of `family`: config.json with auto_map, modeling files beside
    it (which raise if anything runs them), model.safetensors under the published names, tokenizer files
    (Dream's tokenizer_config names its own tokenizer class through auto_map, as published)."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fields = {**PUBLISHED[family][0], **overrides}
    (folder / "config.json").write_text(json.dumps(fields, indent=1))
    for target in fields["auto_map"].values():
        (folder / f"{target.split('.')[0]}.py").write_text(CODE_THAT_MUST_NOT_RUN)
    state = published_weights(family, fields, seed)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    published_tokenizer(family).save_pretrained(folder)
    if family == "dream":
        config_path = folder / "tokenizer_config.json"
        tokenizer_config = json.loads(config_path.read_text())
        tokenizer_config.update(tokenizer_class="DreamTokenizer",
                                auto_map={"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]})
        config_path.write_text(json.dumps(tokenizer_config))
        (folder / "tokenization_dream.py").write_text(CODE_THAT_MUST_NOT_RUN)
    return folder


def published_reference_logits(family: str, fields: dict, state: dict, ids: torch.Tensor) -> torch.Tensor:
    """(B, L, V) float32 logits of full rows at positions 0..L-1, computed from the published weight names
    the way the published modeling files compute them (Dream's in its AR layout, unshifted): RMSNorm in
    float32, rotary by halves with rope_theta, softmax attention (bidirectional; SDAR block-causal over
    `block_size` position blocks), SwiGLU; written without transformers or mdlm.families."""
    def rms(x, weight, eps):
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def rope(x, theta):
        dim = x.shape[-1]
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        angles = torch.arange(x.shape[-2], dtype=torch.float32)[:, None] * inv_freq[None, :]
        angles = torch.cat([angles, angles], -1)
        half = dim // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * angles.cos() + rotated * angles.sin()

    B, L = ids.shape
    if family in DIT_FAMILIES:
        return dit_reference_logits(family, fields, state, ids)
    if family == "llada":
        d, heads, layers = fields["d_model"], fields["n_heads"], fields["n_layers"]
        kv_heads, eps, theta = fields["n_kv_heads"], fields["rms_norm_eps"], fields["rope_theta"]
        names = lambda i: {k: f"model.transformer.blocks.{i}.{v}" for k, v in dict(  # noqa: E731
            n1="attn_norm.weight", n2="ff_norm.weight", q="q_proj", k="k_proj", v="v_proj", o="attn_out",
            gate="ff_proj", up="up_proj", down="ff_out").items()}
        embed, final, head = "model.transformer.wte.weight", "model.transformer.ln_f.weight", "model.transformer.ff_out.weight"
    else:
        d, heads, layers = fields["hidden_size"], fields["num_attention_heads"], fields["num_hidden_layers"]
        kv_heads, eps, theta = fields["num_key_value_heads"], fields["rms_norm_eps"], fields["rope_theta"]
        names = lambda i: {k: f"model.layers.{i}.{v}" for k, v in dict(  # noqa: E731
            n1="input_layernorm.weight", n2="post_attention_layernorm.weight", q="self_attn.q_proj",
            k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.o_proj", gate="mlp.gate_proj",
            up="mlp.up_proj", down="mlp.down_proj", qn="self_attn.q_norm.weight", kn="self_attn.k_norm.weight").items()}
        embed, final = "model.embed_tokens.weight", "model.norm.weight"
        head = "model.embed_tokens.weight" if fields.get("tie_word_embeddings") else "lm_head.weight"
    head_dim = fields.get("head_dim") or d // heads

    def linear(x, name):
        y = x @ state[name + ".weight"].T
        return y + state[name + ".bias"] if name + ".bias" in state else y

    allowed = torch.ones(L, L, dtype=torch.bool)
    if family == "sdar":
        block = torch.arange(L) // fields["block_size"]
        allowed = block[None, :] <= block[:, None]
    x = state[embed][ids]
    for i in range(layers):
        n = names(i)
        h = rms(x, state[n["n1"]], eps)
        q = linear(h, n["q"]).view(B, L, heads, head_dim).transpose(1, 2)
        k = linear(h, n["k"]).view(B, L, kv_heads, head_dim).transpose(1, 2)
        v = linear(h, n["v"]).view(B, L, kv_heads, head_dim).transpose(1, 2)
        if family == "sdar":
            q, k = rms(q, state[n["qn"]], eps), rms(k, state[n["kn"]], eps)
        q, k = rope(q, theta), rope(k, theta)
        k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
        scores = (q @ k.transpose(-1, -2)) / head_dim ** 0.5
        attended = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
        x = x + linear(attended.transpose(1, 2).reshape(B, L, heads * head_dim), n["o"])
        m = rms(x, state[n["n2"]], eps)
        x = x + linear(torch.nn.functional.silu(linear(m, n["gate"])) * linear(m, n["up"]), n["down"])
    return rms(x, state[final], eps) @ state[head].T


def native_family_model(family: str, vocab_size: int, seed: int = 0, scale: float = 1.0, block_size: int = 4,
                        **overrides):
    """Our native module of `family` at tiny sizes with `vocab_size` tokens, its
    weights those `published_weights` draws under the published names, loaded through the family's
    weight-name table."""
    from mdlm.families import NATIVE, build_native
    from mdlm.families.base import rename

    # the special ids come from the caller (the test's tokenizer or mask_token_id=), not the published ones
    fields = {**PUBLISHED[family][0], "vocab_size": vocab_size, "mask_token_id": None, "eos_token_id": None,
              "bos_token_id": None, "pad_token_id": None, **overrides}
    if family == "llada":
        fields["embedding_size"] = vocab_size
    if family == "sdar":
        fields["block_size"] = block_size
    model = build_native(family, fields)
    state = rename(published_weights(family, fields, seed, scale), NATIVE[family][0].WEIGHT_NAMES, family)
    model.load_state_dict(state, strict=not fields.get("tie_word_embeddings"))
    return model.eval()


def remote_code_module(folder, source: str, monkeypatch, modules_cache):
    """`folder`/modeling_tiny.py holding `source`, imported here (to build and save the model), with
    transformers' copy of remote code going to `modules_cache` (a temporary folder) instead of ~/.cache."""
    import importlib.util

    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(modules_cache))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "modeling_tiny.py").write_text(source)
    spec = importlib.util.spec_from_file_location("modeling_tiny", folder / "modeling_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record_call_widths(model) -> list[int]:
    """The list that every later call of `model` appends its input's width (columns run) to."""
    widths = []
    original = model.forward

    def recording(*args, **kwargs):
        widths.append(kwargs["input_ids"].shape[1])
        return original(*args, **kwargs)

    model.forward = recording
    return widths


def dit_reference_logits(family: str, fields: dict, state: dict, ids: torch.Tensor) -> torch.Tensor:
    """MDLM's / BD3-LM's DiT as models/dit.py computes it, at sigma = 0, positions 0..L-1: adaLN-Zero blocks
    (weight-only LayerNorm, modulate, rotary q/k by halves with base 10000, softmax attention, GELU-tanh
    MLP, gated residuals), bidirectional (MDLM) or block-causal over `block_size` (BD3-LM sample mode)."""
    import math

    def layer_norm(x, weight):
        return torch.nn.functional.layer_norm(x, [x.shape[-1]]) * weight

    def linear(x, name, bias=True):
        y = x @ state[name + ".weight"].T
        return y + state[name + ".bias"] if bias else y

    B, L = ids.shape
    d, heads = fields["hidden_dim"], fields["n_heads"]
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    t_freq = torch.cat([torch.cos(torch.zeros(B, 1) * freqs), torch.sin(torch.zeros(B, 1) * freqs)], -1)
    c = torch.nn.functional.silu(linear(torch.nn.functional.silu(linear(t_freq, "backbone.sigma_map.mlp.0")),
                                        "backbone.sigma_map.mlp.2"))
    head_dim = d // heads
    inv_freq = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    emb = torch.cat([torch.arange(L).float()[:, None] * inv_freq] * 2, -1)
    cos, sin = emb.cos(), emb.sin()

    def rope(x):
        return x * cos + torch.cat([-x[..., head_dim // 2:], x[..., :head_dim // 2]], -1) * sin

    allowed = torch.ones(L, L, dtype=torch.bool)
    if family == "bd3lm":
        block = torch.arange(L) // fields["block_size"]
        allowed = block[None, :] <= block[:, None]
    x = state["backbone.vocab_embed.embedding"][ids]
    for i in range(fields["n_blocks"]):
        p = f"backbone.blocks.{i}."
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            linear(c, p + "adaLN_modulation")[:, None].chunk(6, dim=2)
        h = layer_norm(x, state[p + "norm1.weight"]) * (1 + scale_msa) + shift_msa
        qkv = linear(h, p + "attn_qkv", bias=False).view(B, L, 3, heads, head_dim)
        q, k, v = (qkv[:, :, j].transpose(1, 2) for j in range(3))
        q, k = rope(q), rope(k)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)
        attended = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v
        x = x + gate_msa * linear(attended.transpose(1, 2).reshape(B, L, d), p + "attn_out", bias=False)
        m = layer_norm(x, state[p + "norm2.weight"]) * (1 + scale_mlp) + shift_mlp
        hidden = torch.nn.functional.gelu(linear(m, p + "mlp.0"), approximate="tanh")
        x = x + gate_mlp * linear(hidden, p + "mlp.2")
    shift, scale = linear(c, "backbone.output_layer.adaLN_modulation")[:, None].chunk(2, dim=2)
    x = layer_norm(x, state["backbone.output_layer.norm_final.weight"]) * (1 + scale) + shift
    return linear(x, "backbone.output_layer.linear")


def llada_like_remote_code(model_type: str, class_name: str) -> str:
    """The source of a remote-code modeling file (config class `TinyConfig`, model `class_name`) whose model
    is the LLaDA-convention stand-in, for folders loaded with trust_remote_code."""
    return f'''
from transformers import PretrainedConfig, PreTrainedModel

from tests.family_models import LLaDALike, TinyCore


class TinyConfig(PretrainedConfig):
    model_type = "{model_type}"


class {class_name}(PreTrainedModel):
    config_class = TinyConfig

    def __init__(self, config):
        super().__init__(config)
        self.core = TinyCore(config.vocab_size)
        self.post_init()

    def get_output_embeddings(self):
        return self.core.lm_head

    forward = LLaDALike.forward
'''
