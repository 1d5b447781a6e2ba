"""Qwen3-VL through transformers (``Qwen3VLForConditionalGeneration``; lmms-eval's ``qwen3_vl`` backend).

The input layout is Qwen2-VL's (mmke_eval/adapters/qwen2_vl.py, whose adapter this one extends):
an image is ``<|vision_start|>``, one ``<|image_pad|>`` per merged patch group
(``image_grid_thw.prod() // merge_size**2``), ``<|vision_end|>``; the model places them in 3-D
rotary positions from ``mm_token_type_ids``. What differs:

* the chat template (``chat``, the default, EasyEdit's layout): Qwen3-VL's has no default system
  turn, so the input starts at ``<|im_start|>user``; the adapter renders the checkpoint's own
  template, whatever it says;
* the vision tower: 16-pixel patches merged 2x2 (sides in multiples of 32 after the processor),
  learned position embeddings, and DeepStack: features of some vision blocks go through their own
  patch mergers (``visual.deepstack_merger_list``) into the first language-model layers. Those
  mergers carry the image into the language model as the main merger does: both are the
  ``alignment`` group.

Image loading (``image_loading``) is EasyEdit's, the reference whose hyper-parameters target
Qwen3-VL (``hparams/*/qwen3vl-4b.yaml``): its ``Qwen2VLProcessor`` calls
``qwen_vl_utils.fetch_image`` with the package's defaults for every Qwen-VL model, Qwen3-VL
included, i.e. the 28-pixel resize of Qwen2-VL (``reference``, the default), then the processor
resizes again by its own settings (multiples of 32 on the released checkpoints). lmms-eval's own
``qwen3_vl`` backend loads differently for the plain tasks it answers (fetch_image for 16-pixel
patches within its ``min_pixels``/``max_pixels``, then the processor without a resize); the
results record which loading the edit scores used (``mmke.adapter.image_loading``).
"""

from __future__ import annotations

from mmke_eval.adapters.qwen2_vl import _LM_LAYER, QwenVLAdapter

_MERGERS = r"(merger|deepstack_merger_list)\."
SERVED_CLASS = "Qwen3VLForConditionalGeneration"


class Qwen3VLAdapter(QwenVLAdapter):
    """Qwen3-VL (dense); see the module docstring."""

    family = "qwen3_vl"
    parameter_groups = {
        "llm_last_mlp": (_LM_LAYER + r"mlp\.up_proj\.weight$", _LM_LAYER + r"mlp\.down_proj\.weight$"),
        "llm_mlp_out": (_LM_LAYER + r"mlp\.down_proj\.weight$",),  # MEMIT / AlphaEdit
        # The main patch merger and the DeepStack mergers: every module that projects vision features into the LM.
        "alignment": (r"(^|\.)visual\.merger\.", r"(^|\.)visual\.deepstack_merger_list\."),
        "vision": (r"(^|\.)visual\.(?!" + _MERGERS + ")",),
    }

    def __init__(self, model, processor, *args, **kwargs):
        # lmms-eval's qwen3_vl backend also loads Qwen3-VL MoE and Qwen3.5 checkpoints: other
        # models, whose layers this adapter has not been checked on.
        if type(model).__name__ != SERVED_CLASS:
            raise ValueError(f"qwen3_vl adapter: serves {SERVED_CLASS} (dense Qwen3-VL), not {type(model).__name__}; "
                             f"Qwen3-VL MoE and Qwen3.5 checkpoints are not served (docs/models.md)")
        super().__init__(model, processor, *args, **kwargs)

    def describe(self) -> dict:
        loading = {"reference": "EasyEdit's: qwen_vl_utils.fetch_image with its defaults (multiples of 28, 4 to 16384 "
                                "blocks of 28x28 px, PIL bicubic), then the processor's own resize",
                   "processor": "the image straight to the processor"}[self.image_loading]
        return {**super().describe(), "image_loading_layout": loading}
