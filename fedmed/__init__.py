"""fedmed: federated fine-tuning of Segment Anything on private medical images."""

__version__ = "0.1.0"
