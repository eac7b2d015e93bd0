"""Fine-tuning with fastai: the learner, its callbacks, checkpoints, trackers, lr-find and the run itself."""
