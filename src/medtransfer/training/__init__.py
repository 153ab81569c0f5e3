"""Training: the fine-tuning and pretraining loops, checkpoints, losses and metrics."""
