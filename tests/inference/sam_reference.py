"""Run an exported state dict with segment-anything alone (this script never imports fedmed).

    python sam_reference.py ARGS.json

ARGS: {"checkpoint", "arch", "spec" (the preset's sizes, for a model the registry does not build),
"image" (a saved [1, 3, S, S] tensor in 0..255), "boxes" ([[x0, y0, x1, y1], ...] or null),
"out"}. Writes {"single": logits of multimask_output=False, "multi": logits of True} with SamPredictor.

torchvision has no CPU build for this torch; segment-anything imports it at package import but the
tensor path used here (set_torch_image, predict_torch) calls none of it. Where torchvision is missing,
stand-in modules whose functions raise are registered, so any use of them would fail the test.
"""

import importlib.util
import json
import sys
import types
from functools import partial


def _stand_in_torchvision() -> None:
    def unavailable(*args, **kwargs):
        raise RuntimeError("torchvision is not installed")

    names = {"torchvision": [], "torchvision.transforms": [], "torchvision.transforms.functional": ["resize", "to_pil_image"],
             "torchvision.ops": [], "torchvision.ops.boxes": ["batched_nms", "box_area"]}
    for name, functions in names.items():
        module = types.ModuleType(name)
        for function in functions:
            setattr(module, function, unavailable)
        sys.modules[name] = module


if importlib.util.find_spec("torchvision") is None:
    _stand_in_torchvision()

import torch  # noqa: E402
from segment_anything import SamPredictor, sam_model_registry  # noqa: E402
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer  # noqa: E402


def build(arch: str, spec: dict, checkpoint: str) -> Sam:
    if arch in sam_model_registry and spec["image_size"] == 1024:
        return sam_model_registry[arch](checkpoint=checkpoint)
    size, grid = spec["image_size"], spec["image_size"] // spec["patch_size"]
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=size, patch_size=spec["patch_size"], embed_dim=spec["embed_dim"], depth=spec["depth"],
            num_heads=spec["num_heads"], mlp_ratio=4, out_chans=spec["prompt_embed_dim"], qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            global_attn_indexes=spec["global_attn_indexes"], window_size=spec["window_size"]),
        prompt_encoder=PromptEncoder(embed_dim=spec["prompt_embed_dim"], image_embedding_size=(grid, grid),
                                     input_image_size=(size, size), mask_in_chans=spec["mask_in_chans"]),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=spec["prompt_embed_dim"],
                                          mlp_dim=spec["decoder_mlp_dim"], num_heads=spec["decoder_num_heads"]),
            transformer_dim=spec["prompt_embed_dim"], iou_head_depth=3, iou_head_hidden_dim=spec["iou_head_hidden_dim"]),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    sam.load_state_dict(torch.load(checkpoint, weights_only=True), strict=True)
    return sam.eval()


def main() -> None:
    args = json.loads(open(sys.argv[1]).read())
    sam = build(args["arch"], args["spec"], args["checkpoint"])
    if "fedmed" in sys.modules:
        raise SystemExit("fedmed was imported")
    if args.get("image") is None:
        return
    image = torch.load(args["image"], weights_only=True)
    predictor = SamPredictor(sam)
    with torch.no_grad():
        predictor.set_torch_image(image, tuple(image.shape[-2:]))
        boxes = torch.tensor(args["boxes"], dtype=torch.float32) if args["boxes"] else None
        single = predictor.predict_torch(None, None, boxes=boxes, multimask_output=False, return_logits=True)[0]
        multi = predictor.predict_torch(None, None, boxes=boxes, multimask_output=True, return_logits=True)[0]
    torch.save({"single": single, "multi": multi}, args["out"])


if __name__ == "__main__":
    main()
