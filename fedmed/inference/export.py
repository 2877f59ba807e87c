"""`fedmed export`: a trained model as one fedmed model file, or as a plain SAM state dict.

- `fedmed`: the model card and the trained tensors in one file (`save_bundle`); predict and
  evaluate take it like a run directory. Any method.
- `sam`: SAM's own state dict with the base weights, the trained tensors and every LoRA update
  folded in (`fedmed.models.merge`): `segment_anything.sam_model_registry[arch](checkpoint=FILE)`
  loads it without fedmed (ViT presets at 1024 px; other sizes and `tiny` build SAM's classes with
  the sizes in the sidecar `FILE.json`). `fedsam` is SAM as is, `flap-sam` and `samed` merge;
  `fedmsa`'s adapters cannot merge and are refused with a pointer to `fedmed`. The sidecar
  `FILE.json` holds the model card and how to prompt the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from fedmed.inference.bundle import ModelBundle, build_segmenter, save_bundle
from fedmed.io import save_state_dict, write_json
from fedmed.models import arch_spec
from fedmed.models.merge import UnmergeableError, merged_state_dict

ExportFormat = Literal["sam", "fedmed"]


class ExportError(ValueError):
    """A model that cannot be exported in the format asked."""


def sam_usage(bundle: ModelBundle, path: Path) -> dict:
    """How to load and prompt an exported SAM state dict (written beside it as JSON)."""
    card = bundle.card
    spec = arch_spec(card.arch)
    official = card.arch != "tiny" and card.image_size == 1024
    load = (f'segment_anything.sam_model_registry["{card.arch}"](checkpoint="{path.name}")' if official else
            f"segment_anything.modeling.Sam with ImageEncoderViT(img_size={card.image_size}, patch_size="
            f"{spec.patch_size}, embed_dim={spec.embed_dim}, depth={spec.depth}, num_heads={spec.num_heads}, "
            f"window_size={spec.window_size}, global_attn_indexes={list(spec.global_attn_indexes)}, "
            f"out_chans={spec.prompt_embed_dim}), then load_state_dict")
    prompt = ("one box per class: SamPredictor.predict(box=..., multimask_output=False); the class is where "
              "its logit is positive and highest" if card.prompt == "box" else
              "no prompt: class k (1..K-1) is mask token k-1, i.e. multimask_output=False for class 1 and "
              "the three multimask outputs for classes 2-4; the class is where its logit is positive and highest")
    return {"format": "sam-state-dict", "load": load, "prompt": prompt, "card": bundle.card.model_dump(mode="json")}


def export_model(bundle: ModelBundle, out: str | Path, *, format: ExportFormat,
                 checkpoint: str | Path | None = None) -> list[Path]:
    """Write `bundle` as `format` to `out`; the files written (`sam` adds the sidecar `out.json`)."""
    out = Path(out)
    if format == "fedmed":
        return [save_bundle(bundle, out)]
    if format != "sam":
        raise ExportError(f"unknown export format {format!r}; choose sam or fedmed")
    model = build_segmenter(bundle, prompt=bundle.card.prompt, checkpoint=checkpoint)
    try:
        state = merged_state_dict(model.sam)
    except UnmergeableError as error:
        raise ExportError(f"{bundle.source}: {bundle.card.method} cannot be exported as a plain SAM state dict: "
                          f"{error}. Export it with --format fedmed (fedmed predict and evaluate read it)") from None
    sidecar = out.with_name(out.name + ".json")
    return [save_state_dict(out, state), write_json(sidecar, sam_usage(bundle, out))]
