"""How a training step runs on the hardware: bf16 autocast and the channels-last layout, as fastai
callbacks that the learner installs (:func:`flowerfast.training.learner.create_learner`).

Why our own: fastai's ``MixedPrecision`` is CUDA-only and turns itself off on a CPU, although a
CPU with native bf16 (AVX512-BF16, AMX) trains about twice as fast in it, and channels-last
batches let oneDNN and cuDNN pick their fastest convolutions.
"""

from __future__ import annotations

from fastai.callback.core import Callback


class Autocast(Callback):
    """Mixed precision through ``torch.autocast`` on any device, CPUs included.

    fastai's own ``MixedPrecision`` is CUDA-only: on a CPU it disables itself, although a CPU with
    native bf16 (AVX512-BF16, AMX) trains about twice as fast in it. bf16 keeps fp32's exponent
    range, so no loss scaling is needed: the forward pass and the loss run under autocast, the
    backward pass follows the recorded dtypes, and the optimiser updates fp32 weights.
    """

    order = 10  # where fastai's MixedPrecision sits: around the forward pass and the loss

    def __init__(self, dtype):
        self.dtype = dtype
        self._context = None

    def before_batch(self):
        import torch

        device_type = next(self.learn.model.parameters()).device.type
        self._context = torch.autocast(device_type=device_type, dtype=self.dtype)
        self._context.__enter__()

    def after_pred(self):
        self.learn.pred = self.learn.pred.float()  # loss and metrics in fp32

    def after_loss(self):
        self._leave()

    def after_cancel_batch(self):
        self._leave()

    def after_fit(self):
        self._leave()

    def _leave(self):
        if self._context is not None:
            self._context.__exit__(None, None, None)
            self._context = None


class BatchLayout(Callback):
    """Feeds the network its image batches in the layout it runs fastest in: channels-last (NHWC)
    where oneDNN and cuDNN convolutions are fastest in it (the model's weights are converted once
    when the learner is built), and as plain tensors for a compiled model (``torch.compile`` does
    not trace fastai's tensor subclasses correctly)."""

    order = 9  # before Autocast, after fastai's batch transforms (which run in the DataLoader)

    def __init__(self, channels_last: bool = True, plain: bool = False):
        self.channels_last, self.plain = channels_last, plain

    def before_batch(self):
        self.learn.xb = tuple(self._prepare(x) for x in self.learn.xb)

    def _prepare(self, x):
        import torch

        if not isinstance(x, torch.Tensor) or x.dim() != 4:
            return x
        if self.plain:
            x = x.as_subclass(torch.Tensor)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
