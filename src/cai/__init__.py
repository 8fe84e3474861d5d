"""cai: Constitutional AI end to end.

Stages (each `cai <stage> CONFIG`): critique -> sft -> sample -> label -> train-pm -> ppo | dpo -> evaluate.
"""

__version__ = "0.1.0"
