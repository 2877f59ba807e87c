"""Use a trained model: its card and bundle, predict, evaluate, export.

    bundle = load_bundle("runs/fedmsa-tiny")                 # model_card.json + final.pt, or a model file
    predictor = Predictor(bundle, prompt="none")
    predict_files(predictor, "scans/", "predictions/")      # PNG / NIfTI label maps, DICOM SEGs, one per input
    predict_synthetic(predictor, "predictions/")            # the synthetic federation's test pictures
    model_sha256(bundle)                                    # the model's digest, as a DICOM SEG records it
    rows, worst = evaluate_cases(predictor, evaluation_split("synthetic", "val", image_size=128, seed=0))
    export_model(bundle, "sam_merged.pth", format="sam")    # plain SAM state dict, LoRA merged

A run writes its card when it ends: `write_model_card(run_dir, model_config, class_names=...,
normalisation=normalisation_of(site))`.
"""

from fedmed.inference.boxfile import BoxPrompts
from fedmed.inference.bundle import BundleError, ModelBundle, build_segmenter, load_bundle, model_sha256, save_bundle
from fedmed.inference.card import (
    CARD_FILE,
    CardError,
    ModelCard,
    Normalisation,
    make_card,
    normalisation_of,
    read_model_card,
    write_model_card,
)
from fedmed.inference.evaluation import SplitError, evaluate_cases, evaluation_split
from fedmed.inference.export import ExportError, export_model
from fedmed.inference.case import InputError
from fedmed.inference.predict import predict_files, predict_synthetic
from fedmed.inference.predictor import Predictor, PromptMode
from fedmed.inference.report import EvaluationReport, make_report, write_report

__all__ = [
    "CARD_FILE",
    "BoxPrompts",
    "BundleError",
    "CardError",
    "EvaluationReport",
    "ExportError",
    "InputError",
    "ModelBundle",
    "ModelCard",
    "Normalisation",
    "Predictor",
    "PromptMode",
    "SplitError",
    "build_segmenter",
    "evaluate_cases",
    "evaluation_split",
    "export_model",
    "load_bundle",
    "make_card",
    "make_report",
    "model_sha256",
    "normalisation_of",
    "predict_files",
    "predict_synthetic",
    "read_model_card",
    "save_bundle",
    "write_model_card",
    "write_report",
]
