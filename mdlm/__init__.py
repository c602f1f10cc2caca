"""mdlm: masked-diffusion language models.

Importing the package registers the model with the transformers Auto classes, so that
`AutoModelForMaskedLM.from_pretrained(run_dir)` loads a saved run.
"""

from transformers import AutoConfig, AutoModelForMaskedLM

from mdlm.config import PRESETS, MDLMConfig
from mdlm.model import KVCache, MDLMForMaskedLM, MDLMOutput

AutoConfig.register(MDLMConfig.model_type, MDLMConfig, exist_ok=True)
AutoModelForMaskedLM.register(MDLMConfig, MDLMForMaskedLM, exist_ok=True)

__all__ = ["MDLMConfig", "MDLMForMaskedLM", "MDLMOutput", "KVCache", "PRESETS"]
__version__ = "0.1.0"
