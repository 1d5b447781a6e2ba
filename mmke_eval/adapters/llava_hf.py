"""LLaVA through transformers (lmms-eval's ``llava_hf`` backend): LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision.

``llava_hf`` picks the class from the checkpoint's ``model_type`` (``llava``, ``llava_next``,
``llava_onevision``); all three share this adapter.

Input formats (``prompt_format``):

* ``raw`` (LLaVA-1.5's default, the VLKEB/MMKE-Bench LLaVA protocol): the text is tokenized on its own with
  the tokenizer's special tokens (BOS for LLaMA; none for OneVision's Qwen2), and the image
  placeholder is inserted right after BOS, then expanded to the image's patch tokens. No
  conversation template.
* ``chat`` (LLaVA-OneVision's and LLaVA-NeXT's default): the processor's chat template, the image
  in the user turn before the text, the generation prompt added; the target follows the
  generation prompt. EasyEdit, the reference that reports OneVision, always builds its inputs so
  (``prepare_multimodal_hf_edit``); no knowledge-editing reference runs NeXT, which, like
  OneVision, is an instruction-tuned chat model (its model card and lmms-eval prompt it so).

LLaVA-NeXT and OneVision expand an image into a size-dependent number of tokens ("anyres") and
their processors return ``image_sizes``, which are passed on.
"""

from __future__ import annotations

import torch

from mmke_eval.adapters.hf_vlm import HFVisionLanguageAdapter

# transformers 5 nests the language model as model.language_model.layers, 4.x as
# language_model.model.layers: "(model\.)?" takes both.
_LM_LAYER = r"(^|\.)language_model\.(model\.)?layers\.{last}\."


# The reference's layout per checkpoint model_type (module docstring); any other LLaVA: raw.
REFERENCE_PROMPT_FORMATS = {"llava": "raw", "llava_next": "chat", "llava_onevision": "chat"}


class LlavaHFAdapter(HFVisionLanguageAdapter):
    """LLaVA-1.5 / LLaVA-NeXT / LLaVA-OneVision through transformers; see the module docstring."""

    def __init__(self, model, processor, device=None, prompt_format: str | None = None, **kwargs):
        if prompt_format is None:
            prompt_format = REFERENCE_PROMPT_FORMATS.get(getattr(model.config, "model_type", ""), "raw")
        super().__init__(model, processor, device, prompt_format, **kwargs)

    family = "llava"
    lmms_processor_attribute = "_image_processor"  # llava_hf keeps the processor there
    reuses_prefixes = True  # image features enter only where the image tokens are computed
    parameter_groups = {
        # Reference FT-LLM edits two of the LLaMA MLP's three matrices (layers.31 in LLaVA-1.5-7B).
        "llm_last_mlp": (_LM_LAYER + r"mlp\.up_proj\.weight$", _LM_LAYER + r"mlp\.down_proj\.weight$"),
        # MEMIT / AlphaEdit: the MLP output projection of chosen layers (editors/alphaedit.py).
        "llm_mlp_out": (_LM_LAYER + r"mlp\.down_proj\.weight$",),
        # Reference FT-Alignment: every parameter of the projector (mm_projector in the original repo).
        "alignment": (r"(^|\.)multi_modal_projector\.",),
        "vision": (r"(^|\.)vision_tower\.",),
    }

    def text_model(self) -> torch.nn.Module:
        """The module giving logits from input embeddings (the image features already in them)."""
        return self.model

    @torch.no_grad()
    def image_token_features(self, image) -> torch.Tensor:
        """What this model's language model receives at the image-token positions for ``image``
        (vision tower, feature selection, projector): [image tokens, hidden]. The reference's SERAC
        feeds these to its counterfactual Vicuna (``prepare_inputs_labels_for_multimodal``).
        LLaVA-1.5 only: NeXT and OneVision arrange their anyres tiles around the features."""
        from mmke_eval.adapters.base import Query

        config = self.model.config
        if getattr(config, "model_type", "") != "llava":
            raise ValueError(f"{self.label}: image features for another language model are implemented for LLaVA-1.5 "
                             f"(model_type 'llava'), not {type(self.model).__name__} ({config.model_type!r})")
        image_inputs, (count,) = self._image_inputs([Query("", image)])
        out = self.model.get_image_features(
            pixel_values=image_inputs["pixel_values"], vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy, return_dict=True)
        features = torch.cat(list(out.pooler_output), dim=0)
        if features.shape[0] != count:
            raise ValueError(f"{self.label}: {features.shape[0]} image features for {count} image tokens")
        return features
