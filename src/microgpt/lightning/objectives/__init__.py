"""What a training stage optimises: next-token prediction (pretraining), SFT, DPO or GRPO.

A stage's config names one with `objective._target_`; GPTModule delegates its training and
validation steps to it and logs what it reports."""
