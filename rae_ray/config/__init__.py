"""Run configuration: the models (`models`) and loading them from YAML with overrides (`load`)."""

from rae_ray.config.examples import ExamplesConfig
from rae_ray.config.load import config_from_dict, load_config, parse_overrides, redacted
from rae_ray.config.models import (
    DEFAULT_KS, PAPER_SCALE, AnnotateModelConfig, ComputeConfig, ConfigError, EndpointConfig, Grade, GuidelineModelConfig,
    HumanLabelsConfig,
    ImageConfig, InputConfig, LLMConfig, MetricsConfig, OutputConfig, Price, RunConfig, SamplingConfig, ScaleConfig,
    StageComputeConfig, StageModelConfig, StorageConfig, StoreConfig,
)

__all__ = [
    "DEFAULT_KS", "PAPER_SCALE", "AnnotateModelConfig", "ComputeConfig", "ConfigError", "EndpointConfig", "ExamplesConfig", "Grade",
    "GuidelineModelConfig",
    "HumanLabelsConfig", "ImageConfig", "InputConfig", "LLMConfig", "MetricsConfig", "OutputConfig", "Price",
    "RunConfig", "SamplingConfig", "ScaleConfig", "StageComputeConfig", "StageModelConfig", "StorageConfig",
    "StoreConfig", "config_from_dict", "load_config", "parse_overrides", "redacted",
]
