"""The latent diffusion model: autoencoder + class-conditional UNet + class embedder, and the attention-layer numbering."""

from dpsearch.models.diffusion_loss import diffusion_loss
from dpsearch.models.ldm import LDM, ClassEmbedder, ModelError, build_ldm, load_ldm, save_ldm
from dpsearch.models.layers import attention_modules, layer_table, select_attention_layers

__all__ = ["LDM", "ClassEmbedder", "ModelError", "build_ldm", "load_ldm", "save_ldm",
           "attention_modules", "diffusion_loss", "layer_table", "select_attention_layers"]
