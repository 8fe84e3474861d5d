"""Soft-label DPO: TRL's DPOTrainer with a per-pair target probability instead of hard labels.

    trainer = SoftDPOTrainer(model=..., ref_model=..., args=DPOConfig(remove_unused_columns=False, ...),
                             train_dataset=Dataset with prompt, chosen, rejected, p_chosen, ...)

TRL's DPOTrainer has one global `label_smoothing`, not a per-pair label, so SoftDPOTrainer replaces
only `compute_loss`: TRL still tokenizes, collates, keeps the reference model (or turns the
adapters off), checkpoints and logs; the log-probabilities are computed the way TRL computes them
(its fused LM head), and with p = 1 the loss is TRL's sigmoid loss (tested). The loss is
`cai.losses.soft_dpo_loss`:

    h = beta * [(log pi(y_c|x) - log ref(y_c|x)) - (log pi(y_r|x) - log ref(y_r|x))]
    L = -[ p log sigma(h) + (1 - p) log sigma(-h) ]
"""

from __future__ import annotations

from typing import Any

import torch
from trl import DPOTrainer

from cai.losses import soft_dpo_loss

_NOT_MODEL_INPUTS = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}  # (as in TRL's DPOTrainer)


class SoftDPOTrainer(DPOTrainer):
    """DPOTrainer whose loss is `cai.losses.soft_dpo_loss` against each pair's `p_chosen`.

    The dataset must keep its `p_chosen` column (args.remove_unused_columns=False); the collator
    TRL builds is wrapped to pass it on as a (B,) tensor.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.data_collator = _WithPChosen(self.data_collator)

    def sequence_logps(self, model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probs of the chosen and rejected completions under `model`, (B,) each.
        The batch is [chosen rows; rejected rows]; only completion tokens are labelled."""
        model_kwargs = {k: v for k, v in inputs.items() if k not in _NOT_MODEL_INPUTS}
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)  # (2B, T)
        out = model(**model_kwargs, labels=labels, use_cache=False, fused_lm_head=True)
        T = inputs["completion_mask"].shape[1] - 1
        logps = out.log_probs[:, -T:].sum(dim=1)  # (2B,); unlabelled tokens contribute 0
        return logps.chunk(2)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        p = inputs.pop("p_chosen")  # (B,)
        if "ref_chosen_logps" in inputs:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:  # TRL's reference pass: the frozen copy, or this model with its adapters off
            ref_chosen, ref_rejected = self.compute_ref_log_probs(self.ref_model if self.ref_model is not None else model, inputs)
        chosen, rejected = self.sequence_logps(model, inputs)
        loss = soft_dpo_loss(chosen, rejected, ref_chosen, ref_rejected, p, self.beta)

        mode = "train" if self.model.training else "eval"
        with torch.no_grad():
            r_c, r_r = self.beta * (chosen - ref_chosen), self.beta * (rejected - ref_rejected)  # implicit rewards
            for key, value in {
                "rewards/chosen": r_c.mean(),
                "rewards/rejected": r_r.mean(),
                "rewards/margins": (r_c - r_r).mean(),
                "rewards/accuracies": ((r_c > r_r) == (p > 0.5)).float().mean(),
                "p_chosen": p.mean(),
            }.items():
                self._metrics[mode][key].append(self.accelerator.gather_for_metrics(value).mean().item())
        return (loss, None) if return_outputs else loss


class _WithPChosen:
    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)
        batch["p_chosen"] = torch.tensor([float(e["p_chosen"]) for e in examples])
        return batch
