"""tamer: fine-tune LLMs unattended on GPUs that are too small, recovering from out-of-memory by itself."""

__version__ = "0.1.0"
