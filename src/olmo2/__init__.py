"""olmo2: the OLMo 2 language-model system (model, data, pretraining, post-training, evaluation)."""

__version__ = "0.1.0"
