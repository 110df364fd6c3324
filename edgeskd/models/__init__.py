"""Model registry: name → factory (timm-style). Import of this package needs torch."""

from edgeskd.models.registry import create_model, list_models, register_model, count_parameters

__all__ = ["create_model", "list_models", "register_model", "count_parameters"]
