"""Clinical operating points for CADx (optical diagnosis of polyps), numpy only: the edge runtime imports these.

- ``calibration``: ECE (15 equal-width bins), NLL, temperature scaling fitted on validation (one
  temperature, or one per subclass for subclass-logit students when that fits better),
  calibrated probabilities from an artifact's logits and metadata.
- ``operating_point``: sensitivity / specificity / PPV / NPV, Wilson intervals, the confidence
  threshold that reaches the PIVI NPV bar with the highest coverage, "low confidence" decisions.
- ``per_polyp``: one decision per polyp visit from its frames' calibrated probabilities.
- ``reliability``: the reliability diagram (PNG; matplotlib imported only there).

Figures computed here describe the user's data set; they are not a clinical validation.
"""

from edgeskd.clinical.calibration import (
    SubclassTemperatureFit,
    TemperatureFit,
    calibrated_probabilities,
    class_logits,
    ece,
    ece_sampling_floor,
    fit_subclass_temperatures,
    fit_temperature,
    nll,
    reliability_bins,
    temperature_interval,
)
from edgeskd.clinical.operating_point import (
    LOW_CONFIDENCE,
    NPV_TARGET,
    PPV_TARGET,
    ThresholdChoice,
    binary_rates,
    decide,
    evaluate_operating_point,
    operating_point,
    paired_difference,
    select_threshold,
    state_names,
    validate_threshold,
    wilson_interval,
)
from edgeskd.clinical.per_polyp import PolypDecision, aggregate_polyps, canonical_polyp_id, polyp_summary

__all__ = [
    "LOW_CONFIDENCE", "NPV_TARGET", "PPV_TARGET", "PolypDecision", "SubclassTemperatureFit", "TemperatureFit",
    "ThresholdChoice", "aggregate_polyps", "binary_rates", "calibrated_probabilities", "canonical_polyp_id", "class_logits", "decide",
    "ece", "ece_sampling_floor", "evaluate_operating_point", "fit_subclass_temperatures", "fit_temperature", "nll",
    "operating_point", "paired_difference", "polyp_summary", "reliability_bins", "select_threshold",
    "state_names", "temperature_interval", "validate_threshold", "wilson_interval",
]
