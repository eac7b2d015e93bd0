"""What keeps the knowledge of pretrained weights while a network is fine-tuned.

A callback of its own (fastai's habit: one concern per callback), added to the Learner when it is
built, so every fit of it (the frozen and full phases, lr-find) trains the same way.
"""

from __future__ import annotations

from fastai.callback.core import Callback

from flowerfast.hardware.distributed import unwrapped


class FixedBodyNormStats(Callback):
    """Keep the batch norms of the pretrained body in eval mode while training: they normalise
    with the running statistics of the pretrained weights and never update them.

    Why: those statistics were gathered over ImageNet at the network's own resolution; a batch of
    32 augmented flower photos at 128 px has quite different ones, so in training mode each
    batch renormalises the features the head learnt on, and the running statistics drift towards
    the new data's during the first epochs, exactly when the body's weights barely moved. Measured
    on the shared flowers (EfficientNet-Lite0, 128 px): with the statistics fixed the fine-tune
    went on from the frozen phase's accuracy, in training mode it first fell 10 points below it.
    The batch norms' scale and shift still train with the rest of the body. The head's batch
    norms, new and fitted to this data, train as usual.
    """

    order = 1  # after fastai's TrainEvalCallback (order -10) put the model in training mode

    def before_train(self):
        import torch.nn as nn

        for module in unwrapped(self.learn.model)[0].modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
