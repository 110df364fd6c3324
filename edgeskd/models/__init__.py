"""Model registry: name → factory (timm-style). Import of this package needs torch."""

from edgeskd.models.registry import count_parameters, create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model", "count_parameters"]
