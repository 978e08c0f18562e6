"""newt: LLM fine-tuning as a declarative pipeline of content-addressed stages.

The core library. It never imports dagster, so training children and users can use it alone.
"""

__version__ = "0.1.0"

STAGES = ("dataset", "prepared", "trained", "merged", "quantized", "evaluation")
# The label value torch's cross-entropy skips (its `ignore_index` default): every masked or padded label.
IGNORE_INDEX = -100
