"""BLIP-2 and InstructBLIP through transformers (``Blip2ForConditionalGeneration``,
``InstructBlipForConditionalGeneration``), decoder-only language models (OPT, Vicuna).

Raw layout (the VLKEB/MMKE-Bench BLIP-2 OPT protocol, shared docs 2.4): the Q-Former's query
embeddings (32 in the released models) come first, then the text tokenized without special
tokens, so no BOS. Labels carry the target's leading space ("src alt"): the answer tokens are
those the target adds to the prompt's tokenisation, so OPT's first answer token is ``ĠParis``,
not the reference's ``Paris`` (docs/protocol.md, difference 2).

A query without an image goes to the language model alone, as the reference's BLIP-2 does for
text-only inputs (transformers' BLIP-2 forward requires pixel values).

InstructBLIP (lmms-eval's ``instructblip`` backend) keeps transformers' layout: the query
embeddings, then the tokenizer's BOS and the text; its Q-Former also reads the instruction,
here the text before the target (prefix + prompt, never the answer).

Alignment module (FT-Alignment) = the Q-Former with its learned query tokens, and the language
projection. The reference's FT-Alignment on BLIP-2 (LAVIS) tunes parameters named ``Qformer``,
which leaves out the projection and the query tokens; docs/models.md says so.
"""

from __future__ import annotations

from typing import Any

import torch

from mmke_eval.adapters.base import Query
from mmke_eval.adapters.hf_vlm import HFVisionLanguageAdapter

_QFORMER_GROUPS = {
    "alignment": (r"(^|\.)query_tokens$", r"(^|\.)qformer\.", r"(^|\.)language_projection\."),
    "vision": (r"(^|\.)vision_model\.",),
}


class _QFormerAdapter(HFVisionLanguageAdapter):
    """What BLIP-2 and InstructBLIP share: query embeddings in front, the LM alone without an image."""

    prompt_formats = ("raw",)  # no chat template in these processors
    raw_image_first = True

    def __init__(self, model: torch.nn.Module, processor: Any, *args: Any, **kwargs: Any):
        if not getattr(model.config, "use_decoder_only_language_model", True):
            raise ValueError(f"{type(model).__name__} with an encoder-decoder language model "
                             f"({type(model.language_model).__name__}, e.g. Flan-T5) is not supported: "
                             "teacher forcing here scores a decoder-only model's continuation")
        super().__init__(model, processor, *args, **kwargs)
        self.num_query_tokens = int(model.config.num_query_tokens)

    def _image_inputs(self, queries: list[Query]) -> tuple[dict[str, torch.Tensor], list[int]]:
        pixels = self.processor.image_processor([q.image for q in queries], return_tensors="pt")
        return self._to_device(pixels), [self.num_query_tokens] * len(queries)

    def _forward(self, ids, mask, image_inputs):
        if not image_inputs:
            return self.model.language_model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        return super()._forward(ids, mask, image_inputs)

    def _generate_ids(self, ids, mask, image_inputs, **kwargs):
        if not image_inputs:
            out = self.model.language_model.generate(input_ids=ids, attention_mask=mask, **kwargs)
            return out[:, ids.shape[1] :]
        return super()._generate_ids(ids, mask, image_inputs, **kwargs)


class Blip2Adapter(_QFormerAdapter):
    """BLIP-2 with OPT (the reference's BLIP-2 OPT-2.7B); see the module docstring."""

    family = "blip2"
    lmms_processor_attribute = "processor"  # our blip2_hf backend
    raw_special_tokens = False
    raw_layout = "query embeddings (if an image), prefix + prompt [+ ' ' + target] without BOS; no template"
    parameter_groups = {
        # Reference FT-LLM: opt_model.model.decoder.layers.31.fc1/fc2 weights (OPT-2.7B).
        "llm_last_mlp": (r"(^|\.)language_model\.model\.decoder\.layers\.{last}\.fc1\.weight$",
                         r"(^|\.)language_model\.model\.decoder\.layers\.{last}\.fc2\.weight$"),
        # MEMIT / AlphaEdit: OPT's MLP output projection is fc2.
        "llm_mlp_out": (r"(^|\.)language_model\.model\.decoder\.layers\.{last}\.fc2\.weight$",),
        **_QFORMER_GROUPS,
    }


    # What the reference's SERAC (editors/serac_reference.py) needs of the model: its language model
    # alone, the features it receives for an image, and the Q-Former's outputs before the projection.
    def text_model(self) -> torch.nn.Module:
        """The module giving logits from input embeddings (the image features already in them)."""
        return self.model.language_model

    @torch.no_grad()
    def _image_features(self, image):
        pixels = self._image_inputs([Query("", image)])[0]["pixel_values"]
        return self.model.get_image_features(pixel_values=pixels, return_dict=True)

    def image_token_features(self, image) -> torch.Tensor:
        """What the language model receives at the query-token positions: [query tokens, hidden]."""
        return self._image_features(image).pooler_output[0]

    def query_outputs(self, image) -> torch.Tensor:
        """The Q-Former's outputs before the language projection: [query tokens, Q-Former hidden]."""
        return self._image_features(image).qformer_outputs[0][0]


class InstructBlipAdapter(_QFormerAdapter):
    """InstructBLIP with a Vicuna (LLaMA) language model; see the module docstring."""

    family = "instructblip"
    lmms_processor_attribute = "_image_processor"  # lmms-eval's instructblip backend
    raw_special_tokens = True
    raw_layout = ("query embeddings (if an image; the Q-Former reads prefix + prompt), BOS, prefix + prompt "
                  "[+ ' ' + target]; no template")
    parameter_groups = {
        "llm_last_mlp": (r"(^|\.)language_model\.(model\.)?layers\.{last}\.mlp\.up_proj\.weight$",
                         r"(^|\.)language_model\.(model\.)?layers\.{last}\.mlp\.down_proj\.weight$"),
        "llm_mlp_out": (r"(^|\.)language_model\.(model\.)?layers\.{last}\.mlp\.down_proj\.weight$",),  # MEMIT / AlphaEdit
        **_QFORMER_GROUPS,
    }

    def _image_inputs(self, queries: list[Query]) -> tuple[dict[str, torch.Tensor], list[int]]:
        inputs, counts = super()._image_inputs(queries)
        # The instruction the Q-Former reads: the text before the answer. Past the Q-Former's 512
        # positions (long IKE prefixes) the start is kept, as LAVIS's InstructBLIP keeps its first 128.
        qformer = self.processor.qformer_tokenizer([q.prefix + q.prompt for q in queries], return_tensors="pt",
                                                   padding=True, truncation=True, max_length=512)
        inputs["qformer_input_ids"] = qformer["input_ids"].to(self.device)
        inputs["qformer_attention_mask"] = qformer["attention_mask"].to(self.device)
        return inputs, counts
