"""Builders for the policy tests: a round request and a payload that `strict` accepts, changed per test."""

from __future__ import annotations

from typing import Any

from policies import PayloadSummary, Policy, RoundRequest, load_policy

ADAPTER = "image_encoder.blocks.0.adapter.attn.down.weight"
ENCODER_LORA = "image_encoder.blocks.0.attn.qkv.lora_q_a"
DECODER_LORA = "mask_decoder.transformer.layers.0.self_attn.q_proj.lora_a"
DECODER = "mask_decoder.iou_token.weight"
ENCODER = "image_encoder.patch_embed.proj.weight"
PROMPT = "prompt_encoder.point_embeddings.0.weight"


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def make_request(**changes: Any) -> RoundRequest:
    """A request `strict` accepts; keyword arguments replace fields, nested dicts merge."""
    base = {
        "round": 3,
        "method": "fedmsa",
        "tensor_names": [ADAPTER, ENCODER_LORA, DECODER_LORA, DECODER],
        "secure_aggregation": {"enabled": True, "threshold": 2, "num_clients": 3},
        "dp": {"mode": "sample", "epsilon_target": 8.0, "delta": 1e-5, "max_grad_norm": 1.0},
        "server": {"address": "127.0.0.1:9092", "tls": True},
        "local_samples": 32,
        "expected_bytes": 4096,
    }
    return RoundRequest.model_validate(merged(base, changes))


def make_payload(**changes: Any) -> PayloadSummary:
    """A payload `strict` accepts (for the request above)."""
    base = {
        "round": 3,
        "tensors": [
            {"name": ADAPTER, "shape": [8, 32], "dtype": "float32", "nbytes": 1024},
            {"name": DECODER, "shape": [1, 256], "dtype": "float32", "nbytes": 1024},
        ],
        "dp_mode": "sample",
        "epsilon_after": 2.5,
        "delta": 1e-5,
        "local_samples": 32,
    }
    return PayloadSummary.model_validate(merged(base, changes))


def policy_with(name: str, **changes: Any) -> Policy:
    """A built-in policy with some fields changed (nested dicts merge), validated again."""
    return Policy.model_validate(merged(load_policy(name).model_dump(), changes))
